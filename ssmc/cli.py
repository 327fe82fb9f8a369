"""The `ssmc` command line.  Exit codes: 0 ok, 2 user error (one line, no traceback), 1 internal
error."""

from __future__ import annotations

import argparse
import sys
import time

from ssmc.errors import SsmcError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors are user errors too: exit 2
        self.print_usage(sys.stderr)
        print(f"ssmc: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _dim_binding(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{k}: expected an integer, got {v!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{k}: must be >= 1, got {n}")
    return k.strip(), n


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def _bindings(args) -> dict:
    b = {"batch": args.batch, "seqlen": args.seqlen}
    b.update(dict(args.dim or []))
    return b


def _count_params(graph) -> int:
    from ssmc.semantics.model import build_reference

    model = build_reference(graph, device="meta")
    return sum(p.numel() for p in model.parameters())


def cmd_check(args) -> int:
    from ssmc.ir.spec import load_spec

    status = 0
    for path in args.specs:
        try:
            g = load_spec(path)
            n = _count_params(g)
        except SsmcError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 2
            continue
        dims = " ".join(f"{k}={v}" for k, v in g.dims.items())
        print(f"{g.name:<14} {path}")
        if g.description:
            print(f"  {g.description}")
        print(f"  kinds:      {', '.join(g.node_kinds())}")
        print(f"  dims:       {dims or '-'}   (at run time: {', '.join(g.symbolic)})")
        print(f"  inputs:     {', '.join(f'{k}: {t}' for k, t in g.inputs.items())}")
        print(f"  outputs:    {', '.join(f'{v}: {g.types[v]}' for v in g.outputs)}")
        print(f"  parameters: {n:,}" + ("   (scaling: mup)" if g.scaling == "mup" else ""))
    return status


def _stats(name, t) -> str:
    import torch

    if not (t.is_floating_point() or t.is_complex()):
        return f"  {name}: {t.dtype} {tuple(t.shape)}"
    f = t.detach().float() if not t.is_complex() else t.detach().abs()
    finite = bool(torch.isfinite(f).all())
    return (f"  {name}: {str(t.dtype).replace('torch.', '')}{list(t.shape)}  mean {f.mean():+.4g}  "
            f"std {f.std(unbiased=False) if f.numel() > 1 else 0.0:.4g}  min {f.min():+.4g}  max {f.max():+.4g}"
            f"  {'finite' if finite else 'NOT FINITE'}")


def cmd_run(args) -> int:
    import torch

    from ssmc.ir.spec import load_spec
    from ssmc.semantics.inputs import random_inputs
    from ssmc.semantics.model import build_reference

    g = load_spec(args.spec)
    torch.manual_seed(args.seed)
    model = build_reference(g).eval()
    inputs = random_inputs(g, _bindings(args), seed=args.seed)
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model(**inputs)
        dt = time.perf_counter() - t0
    outs = out if isinstance(out, tuple) else (out,)
    print(f"{g.name}: reference forward on cpu, " + ", ".join(f"{k}={v}" for k, v in _bindings(args).items()))
    for k, v in inputs.items():
        print(_stats(f"in  {k}", v))
    for name, t in zip(g.outputs, outs):
        print(_stats(f"out {name}", t))
    print(f"  time: {dt * 1e3:.2f} ms")
    if args.backward:
        model.train()
        out = model(**inputs)
        loss = sum(o.float().pow(2).mean() for o in (out if isinstance(out, tuple) else (out,)))
        t0 = time.perf_counter()
        loss.backward()
        dt = time.perf_counter() - t0
        n_grad = sum(p.grad is not None for p in model.parameters())
        n_par = sum(1 for _ in model.parameters())
        print(f"  backward: {dt * 1e3:.2f} ms, gradients reached {n_grad}/{n_par} parameters")
    return 0


def cmd_targets(args) -> int:
    from ssmc.targets import detect_host, list_targets, load_target

    host = detect_host()
    print(f"{'target':<8} {'backend':<12} {'arch':<9} {'units':>5} {'GB/s':>7} {'fp32 TF':>8}  note")
    for name in list_targets():
        t = load_target(name)
        mark = "  <- this host" if name == getattr(host, "name", None) else ""
        print(f"{t.name:<8} {t.backend:<12} {str(t.arch):<9} {t.units:>5} {t.mem_bandwidth_gbs:>7g} "
              f"{t.fp32_tflops:>8g}  {t.description}{mark}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ssmc", description="Compile and tune state-space-model graphs.")
    from ssmc import __version__

    p.add_argument("--version", action="version", version=f"ssmc {__version__}")
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser, metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("check", help="verify specs; print node kinds, dims, parameter count")
    c.add_argument("specs", nargs="+", metavar="SPEC")
    c.set_defaults(fn=cmd_check)

    r = sub.add_parser("run", help="run random input through the reference (eager) model")
    r.add_argument("spec", metavar="SPEC")
    r.add_argument("--batch", type=_positive, default=2)
    r.add_argument("--seqlen", type=_positive, default=64)
    r.add_argument("--dim", type=_dim_binding, action="append", metavar="NAME=VALUE",
                   help="value of another run-time dimension")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--backward", action="store_true", help="also time a backward pass")
    r.set_defaults(fn=cmd_run)

    t = sub.add_parser("targets", help="list the target descriptors in targets/")
    t.set_defaults(fn=cmd_targets)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except SsmcError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an ssmc bug: say so, with the traceback for the report
        import traceback

        traceback.print_exc()
        print(f"internal error: {type(e).__name__}: {e} (please report this)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
