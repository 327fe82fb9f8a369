"""Train a tiny byte-level Mamba language model twice, eager and compiled, and compare.

    python examples/train_tiny_mamba.py                 # a few hundred steps, ~2 min on 2 cores
    python examples/train_tiny_mamba.py --steps 20      # a smoke run

The model is ir/mamba.yaml (embedding, Mamba blocks, RMSNorm, tied head) at smaller widths. Both
runs start from the same weights (the compiled model loads the reference's state dict) and see
the same batches in the same order.  The eager run is the reference model (the semantics oracle:
sequential loops differentiated by autograd); the compiled run is `ssmc.compile(...)`: the
selective scans run the TVM kernel on the CPU (Triton on a GPU) and train through the
``ssmc::selective_scan`` op's chunked reverse scan.  The script prints both loss curves side by
side and the speed ratio, and exits with status 1 if the curves disagree beyond --tol.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a fresh clone without installing

import ssmc  # noqa: E402
from ssmc.ir.spec import load_spec  # noqa: E402
from ssmc.paths import zoo_dir  # noqa: E402
from ssmc.semantics.model import build_reference  # noqa: E402


def load_bytes(path: Path) -> torch.Tensor:
    return torch.tensor(list(path.read_bytes()), dtype=torch.int64)


def batches(data: torch.Tensor, steps: int, batch: int, seqlen: int, seed: int):
    """The same windows, in the same order, for both runs."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, data.numel() - seqlen - 1, (batch,), generator=g)
        idx = starts[:, None] + torch.arange(seqlen + 1)
        w = data[idx]
        yield w[:, :-1], w[:, 1:]


def train(model, data, args, label: str):
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    model.train()
    losses, t_start = {}, None
    for step, (x, y) in enumerate(batches(data, args.steps, args.batch, args.seqlen, args.seed)):
        if step == 1:  # step 0 warms up (kernel build / cache load, allocator): not timed
            t_start = time.perf_counter()
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.every == 0 or step == args.steps - 1:
            losses[step] = loss.item()
        if args.verbose and step % args.every == 0:
            print(f"  [{label}] step {step:4d} loss {loss.item():.4f}", flush=True)
    elapsed = time.perf_counter() - t_start if t_start is not None else float("nan")
    return losses, elapsed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=25, help="log the loss every N steps")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=64)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--d-state", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=0.05,
                    help="largest allowed |eager - compiled| loss at a logged step")
    ap.add_argument("--target", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--data", type=Path, default=HERE / "data" / "tiny.txt")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    data = load_bytes(args.data)
    dims = {"d_model": args.d_model, "n_layers": args.layers, "d_state": args.d_state}
    graph = load_spec(zoo_dir() / "mamba.yaml", dims=dims)
    torch.manual_seed(args.seed)
    eager = build_reference(graph)
    with torch.no_grad():  # small embeddings (mamba-ssm's init): the tied head starts near uniform
        eager.embedding.weight.normal_(0.0, 0.02)
    compiled = ssmc.compile(graph, args.target, seqlen=args.seqlen, batch=args.batch)
    compiled.load_state_dict(eager.state_dict())  # same init
    n_params = sum(p.numel() for p in eager.parameters())
    print(f"tiny Mamba LM: {args.layers} layers, d_model {args.d_model}, d_state {args.d_state}, "
          f"{n_params / 1e3:.0f}k parameters; {data.numel()} bytes of text; "
          f"{args.steps} steps of batch {args.batch} x {args.seqlen}")
    print(compiled.summary())

    eager_losses, t_eager = train(eager, data, args, "eager")
    comp_losses, t_comp = train(compiled, data, args, "compiled")

    print(f"\n{'step':>6} {'eager':>10} {'compiled':>10} {'|diff|':>9}")
    worst = 0.0
    for step in sorted(eager_losses):
        a, b = eager_losses[step], comp_losses[step]
        worst = max(worst, abs(a - b))
        print(f"{step:>6} {a:>10.4f} {b:>10.4f} {abs(a - b):>9.2e}")
    timed = max(args.steps - 1, 1)
    print(f"\neager    {t_eager:7.2f} s  ({1e3 * t_eager / timed:6.1f} ms/step)")
    print(f"compiled {t_comp:7.2f} s  ({1e3 * t_comp / timed:6.1f} ms/step)")
    print(f"speed ratio (eager / compiled): {t_eager / t_comp:.2f}x")
    ok = worst <= args.tol
    print(f"loss curves agree within {args.tol}: {'yes' if ok else 'NO'} "
          f"(largest |diff| {worst:.2e})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
