"""transformers Mamba / Mamba-2 on the CPU: `ssmc.accelerate(model)` against the same model in
transformers' eager path (no mamba-ssm / causal-conv1d kernels: what a CPU user gets).

Run:  python benchmarks/bench_hf.py                       (the issue-9 case: a table + JSON)
      python benchmarks/bench_hf.py --sizes 4x256,8x512 --prompt 2048 --new 64 --threads 1
      pytest benchmarks/bench_hf.py --benchmark-only      (pytest-benchmark, a small case)

For each model size (layers x hidden; state 16, vocab 1024, random weights, seed 0):
  prefill  time to first token: generate(prompt, max_new_tokens=1), median of --repeats
  decode   per generated token inside generate(): (time of --new greedy tokens - time of one)
           / (--new - 1), median of 3 pairs of runs; the tokens of both runs must be identical.
           (Until 2026-12-03 this stamped each step with a logits processor and forced the
           length with min_new_tokens; both processors run at every step, costing both sides
           the same ~0.3 ms per token of transformers' bookkeeping, so they are gone.)
Eager and accelerated runs alternate (eager, accel, eager, accel, ...) so that both see the same
machine load; torch and TVM get the same number of threads (--threads; 1 by default: on a
loaded 2-core machine OpenMP's spin-waits make 2-thread torch erratic).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

MODEL_DEFAULT = "4x256"


def _setup_threads(n: int) -> None:
    os.environ["TVM_NUM_THREADS"] = str(n)
    import torch

    torch.set_num_threads(n)


def build(kind: str, layers: int, hidden: int, state: int = 16, vocab: int = 1024, seed: int = 0):
    import torch
    import transformers
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(seed)
    if kind == "mamba":
        cfg = transformers.MambaConfig(vocab_size=vocab, hidden_size=hidden,
                                       num_hidden_layers=layers, state_size=state)
        return transformers.MambaForCausalLM(cfg).eval()
    head_dim = 64 if hidden * 2 % 64 == 0 else 16
    cfg = transformers.Mamba2Config(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                    state_size=state, head_dim=head_dim,
                                    num_heads=2 * hidden // head_dim, n_groups=1, chunk_size=256)
    return transformers.Mamba2ForCausalLM(cfg).eval()


def _generate(model, prompt, new: int):
    """Greedy generate() of exactly `new` tokens, as a user calls it: no logits processor of
    ours in the loop (transformers inspects each processor's signature at every step) and no
    min_new_tokens (its processor runs every step too); the end-of-sequence token is switched
    off instead so that every run makes `new` tokens."""
    import torch

    with torch.no_grad():  # an explicit mask: else generate() masks every prompt token that
        # equals the pad id (random prompts contain it)
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                              do_sample=False, eos_token_id=None, pad_token_id=0)


def prefill_time(model, ids) -> tuple[float, float]:
    """(wall seconds, CPU seconds) to the first token."""
    t0, c0 = time.perf_counter(), time.process_time()
    _generate(model, ids, 1)
    return time.perf_counter() - t0, time.process_time() - c0


def decode_run(model, prompt, new: int, pairs: int = 3):
    """(tokens, wall s per generated token, CPU s per token, total wall s of one run).

    Per token = (generate(new tokens) - generate(1 token)) / (new - 1): the decode steps with
    generate()'s own per-token bookkeeping, without the prefill.  Median over `pairs` pairs of
    runs (a shared machine's spikes)."""
    walls, cpus, total, out = [], [], 0.0, None
    for _ in range(pairs):
        w1, c1 = prefill_time(model, prompt)
        t0, c0 = time.perf_counter(), time.process_time()
        out = _generate(model, prompt, new)
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
        if out.shape[1] != prompt.shape[1] + new:
            raise AssertionError(f"generate made {out.shape[1] - prompt.shape[1]} tokens, not {new}")
        walls.append((total - w1) / (new - 1))
        cpus.append((cpu - c1) / (new - 1))
    return out, statistics.median(walls), statistics.median(cpus), total


def forward_step_time(model, prompt, steps: int = 64):
    """(median wall s, median CPU s) of one model forward through the cache: a decode step
    without generate()'s own per-token bookkeeping (the same on both sides)."""
    import torch

    with torch.no_grad():
        cache = model(prompt, use_cache=True).cache_params
        tok = prompt[:, -1:]
        walls, cpus = [], []
        for _ in range(steps):
            t0, c0 = time.perf_counter(), time.process_time()
            model(tok, cache_params=cache, use_cache=True, logits_to_keep=1)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def run_case(kind: str, layers: int, hidden: int, prompt_len: int, new: int, repeats: int,
             decode_prompt: int = 64, log=print) -> dict:
    import torch

    import ssmc

    model = build(kind, layers, hidden)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (1, prompt_len), generator=g)
    dprompt = ids[:, :decode_prompt]
    t0 = time.perf_counter()
    ssmc.accelerate(model)  # builds or loads the kernels of these shapes
    setup = time.perf_counter() - t0
    with torch.no_grad():  # one warm call each way (first-call allocations, lazy imports)
        model(ids[:, :16])
        ssmc.restore(model)
        model(ids[:, :16])
    res = {"model": kind, "layers": layers, "hidden": hidden, "state": 16, "vocab": vocab,
           "prompt": prompt_len, "new_tokens": new, "threads": torch.get_num_threads(),
           "accelerate_setup_s": round(setup, 2)}
    keys = ("prefill_s", "prefill_cpu_s", "decode_step_ms", "decode_step_cpu_ms", "decode_total_s",
            "forward_step_ms", "forward_step_cpu_ms")
    for k in keys:
        res[k] = {"eager": [], "ssmc": []}
    tokens = {}
    for r in range(repeats):
        for side in ("eager", "ssmc"):
            if side == "ssmc":
                ssmc.accelerate(model, warmup=False)
            else:
                ssmc.restore(model)
            wall, cpu = prefill_time(model, ids)
            res["prefill_s"][side].append(wall)
            res["prefill_cpu_s"][side].append(cpu)
            toks, step, step_cpu, total = decode_run(model, dprompt, new)
            res["decode_step_ms"][side].append(step * 1e3)
            res["decode_step_cpu_ms"][side].append(step_cpu * 1e3)
            res["decode_total_s"][side].append(total)
            fw, fc = forward_step_time(model, dprompt)
            res["forward_step_ms"][side].append(fw * 1e3)
            res["forward_step_cpu_ms"][side].append(fc * 1e3)
            tokens.setdefault(side, toks)
            if not torch.equal(tokens[side], toks):
                raise AssertionError(f"{side}: greedy tokens changed between repeats")
            log(f"  {kind} {layers}x{hidden} repeat {r}: {side:5s} prefill {wall * 1e3:8.1f} ms "
                f"(cpu {cpu * 1e3:8.1f})   decode {step * 1e3:6.2f} ms/token (cpu {step_cpu * 1e3:6.2f})"
                f"   forward step {fw * 1e3:6.2f} ms (cpu {fc * 1e3:6.2f})")
    ssmc.restore(model)
    res["same_tokens"] = bool(torch.equal(tokens["eager"], tokens["ssmc"]))
    med = {k: {s: statistics.median(v) for s, v in res[k].items()} for k in keys}
    res["median"] = med

    def ratio(k):
        return med[k]["eager"] / med[k]["ssmc"]

    res["prefill_speedup"], res["prefill_speedup_cpu"] = ratio("prefill_s"), ratio("prefill_cpu_s")
    res["decode_speedup"], res["decode_speedup_cpu"] = ratio("decode_step_ms"), ratio("decode_step_cpu_ms")
    res["forward_step_speedup"] = ratio("forward_step_ms")
    res["forward_step_speedup_cpu"] = ratio("forward_step_cpu_ms")
    res["prefill_tok_s"] = {s: prompt_len / v for s, v in med["prefill_s"].items()}
    res["decode_tok_s"] = {s: 1e3 / v for s, v in med["decode_step_ms"].items()}
    return res


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default=MODEL_DEFAULT, help="LAYERSxHIDDEN,... (default 4x256)")
    p.add_argument("--model", choices=("mamba", "mamba2"), default="mamba")
    p.add_argument("--prompt", type=int, default=2048)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    _setup_threads(args.threads)
    import platform

    import torch
    import transformers

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {_load()}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"threads {args.threads}")
    results = []
    for size in args.sizes.split(","):
        layers, hidden = (int(v) for v in size.lower().split("x"))
        results.append(run_case(args.model, layers, hidden, args.prompt, args.new, args.repeats))
    print(f"# load after: {_load()}")
    print("medians; 'cpu' = this process's CPU time (what the work costs, without the waits for a "
          "core that a shared machine adds to the wall clock)")
    print("decode: per token inside generate(); step: one model forward through the cache")
    print(f"{'model':8s} {'size':>7s} {'prompt':>6s} | {'clock':5s} | {'prefill eager':>13s} "
          f"{'ssmc':>9s} {'x':>6s} | {'decode eager':>12s} {'ssmc':>9s} {'x':>5s} | "
          f"{'step eager':>10s} {'ssmc':>9s} {'x':>5s} | same tokens")
    for r in results:
        m = r["median"]
        for clock, sfx in (("wall", ""), ("cpu", "_cpu")):
            pk, dk, fk = f"prefill{sfx}_s", f"decode_step{sfx}_ms", f"forward_step{sfx}_ms"
            print(f"{r['model']:8s} {r['layers']}x{r['hidden']:<5d} {r['prompt']:6d} | {clock:5s} | "
                  f"{m[pk]['eager'] * 1e3:10.0f} ms {m[pk]['ssmc'] * 1e3:6.0f} ms "
                  f"{r['prefill_speedup' + sfx]:5.1f}x | {m[dk]['eager']:9.2f} ms "
                  f"{m[dk]['ssmc']:6.2f} ms {r['decode_speedup' + sfx]:4.1f}x | "
                  f"{m[fk]['eager']:7.2f} ms {m[fk]['ssmc']:6.2f} ms "
                  f"{r['forward_step_speedup' + sfx]:4.1f}x | {r['same_tokens']} ({r['new_tokens']} tokens)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"load": _load(), "results": results}, fh, indent=1)
    return 0 if all(r["same_tokens"] for r in results) else 1


# ------------------------------------------------------------------------ pytest-benchmark
def test_hf_decode_step(benchmark):  # pragma: no cover - `make bench`
    """One accelerated decode forward of the issue-9 model (4x256), through the cache."""
    import pytest

    pytest.importorskip("transformers")
    import torch

    import ssmc

    model = ssmc.accelerate(build("mamba", 4, 256))
    ids = torch.randint(0, 1024, (1, 64))
    with torch.no_grad():
        cache = model(ids, use_cache=True).cache_params
        tok = ids[:, -1:]
        benchmark(lambda: model(tok, cache_params=cache, use_cache=True))


if __name__ == "__main__":
    sys.exit(main())
