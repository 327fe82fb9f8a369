"""The `ssmc` command line.  Exit codes: 0 ok, 2 user error (one line, no traceback), 1 internal
error."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ssmc.errors import SsmcError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors are user errors too: exit 2
        self.print_usage(sys.stderr)
        print(f"ssmc: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def spec_path(arg: str) -> Path:
    """A SPEC argument: a file, or the name of a zoo model (`mamba`, `ir/mamba.yaml` from any
    directory, since the zoo ships inside the package)."""
    from ssmc.paths import zoo_dir

    p = Path(arg)
    if p.exists():
        return p
    for cand in (zoo_dir() / p.name, zoo_dir() / f"{p.name}.yaml"):
        if p.parent in (Path("."), Path("ir")) and cand.exists():
            return cand
    return p  # the reader reports "no such file" with the name as given


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
            g = load_spec(spec_path(path))  # a SPEC argument is a file, never YAML text
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

    g = load_spec(spec_path(args.spec))
    torch.manual_seed(args.seed)
    bindings = _bindings(args)
    if args.target == "reference":
        model, how = build_reference(g).eval(), "reference (eager PyTorch)"
    else:  # compiled: kernels from the build cache, configs from the target's tuned records
        import ssmc

        extra = {k: v for k, v in bindings.items() if k not in ("batch", "seqlen")}
        model = ssmc.compile(g, target=_target(args.target), seqlen=args.seqlen, batch=args.batch,
                             dims=extra).eval()
        how = f"compiled for {model.target.name}"
    inputs = random_inputs(g, bindings, seed=args.seed)
    with torch.no_grad():
        if args.target != "reference":  # the first call builds the kernels or loads them from the cache
            t0 = time.perf_counter()
            model(**inputs)
            print(f"  first call (kernel build or cache load): {time.perf_counter() - t0:.2f} s")
        t0 = time.perf_counter()
        out = model(**inputs)
        dt = time.perf_counter() - t0
    outs = out if isinstance(out, tuple) else (out,)
    print(f"{g.name}: {how} forward, " + ", ".join(f"{k}={v}" for k, v in bindings.items()))
    if args.target != "reference":
        print(model.summary())
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
        # Frozen parameters (e.g. convssm's fixed HRF, `learnable: false`) get no gradient by
        # design: count them apart, so that n/n means every trainable parameter was reached.
        trainable = [p for p in model.parameters() if p.requires_grad]
        n_grad = sum(p.grad is not None for p in trainable)
        frozen = sum(1 for p in model.parameters() if not p.requires_grad)
        print(f"  backward: {dt * 1e3:.2f} ms, gradients reached {n_grad}/{len(trainable)} "
              f"trainable parameters" + (f" ({frozen} frozen)" if frozen else ""))
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


def _target(name: str):
    from ssmc.targets import detect_host, load_target

    return detect_host() if name in ("auto", "host") else load_target(name)


def cmd_explain(args) -> int:
    from ssmc.ir.printer import format_graph
    from ssmc.ir.spec import load_spec
    from ssmc.passes import PassContext, run_pipeline
    from ssmc.tune.records import default_records

    g = load_spec(spec_path(args.spec))
    target = _target(args.target)
    ctx = PassContext(target=target, bindings=_bindings(args), dtype=g.dtype,
                      records=default_records(target))  # as ssmc.compile sees them
    print(f"# {g.name} for {target.name} ({target.backend}), " + ", ".join(f"{k}={v}" for k, v in ctx.bindings.items()))
    print("\n== parsed ==")
    print(format_graph(g, costs=False))

    def trace(name, graph):
        if args.all_passes or name == "schedule":
            print(f"\n== after {name} ==")
            print(format_graph(graph, costs=name in ("select_algorithm", "schedule")))

    out = run_pipeline(g, ctx, trace=trace)
    print("\n== decisions ==")
    for qname, node, _ in out.walk():
        if "algorithm" in node.meta:
            fused = node.meta.get("fused_nodes")
            print(f"  {qname:<26} {node.meta['algorithm']:<12} {node.meta['why']}"
                  + (f"; fused into it: {', '.join(fused)}" if fused else ""))
    return 0


def cmd_compile(args) -> int:
    from ssmc.codegen.emit import emit
    from ssmc.ir.spec import load_spec
    from ssmc.passes import PassContext, run_pipeline
    from ssmc.tune.records import default_records

    g = load_spec(spec_path(args.spec))
    target = _target(args.target)
    ctx = PassContext(target=target, bindings=_bindings(args), dtype=g.dtype,
                      records=default_records(target))  # as ssmc.compile sees them
    lowered = run_pipeline(g, ctx)
    t0 = time.perf_counter()
    manifest = emit(lowered, target, args.output, dtype=g.dtype)
    print(f"{g.name} for {target.name}: {len(manifest['nodes'])} SSM node(s) -> {args.output} "
          f"({time.perf_counter() - t0:.1f} s)")
    for e in manifest["nodes"]:
        what = []
        for k in e.get("triton", {}).get("kernels", []):
            what.append(f"{k['kernel']}: {k['n_regs']} regs, {k['n_spills']} spill bytes, {k['shared']} B shared")
        for k in e.get("triton_backward", {}).get("kernels", []):
            what.append(f"{k['kernel']} (backward): {k['n_regs']} regs, {k['n_spills']} spill "
                        f"bytes, {k['shared']} B shared")
        for key in ("tvm", "tvm_cuda"):
            what += [f"{k} {v}" for k, v in e.get(key, {}).get("files", {}).items()]
        if "runs" in e:
            what.append(e["runs"])
        print(f"  {e['node']:<24} {e['algorithm']:<12}")
        for w in what:
            print(f"      {w}")
    print(f"  manifest: {args.output}/manifest.json")
    return 0


def _median_time(fn, repeats: int) -> float:
    import statistics

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cmd_demo(args) -> int:
    import torch

    import ssmc
    from ssmc.semantics.inputs import random_inputs
    from ssmc.semantics.model import build_reference

    target = _target(args.target)
    t0 = time.perf_counter()
    model = ssmc.compile(spec_path(args.spec), target=target, seqlen=args.seqlen, batch=args.batch,
                         dims=dict(args.dim or [])).eval()
    print(model.summary())
    torch.manual_seed(0)
    ref = build_reference(model.source_graph).eval()
    model.load_state_dict(ref.state_dict())
    inputs = random_inputs(model.source_graph, _bindings(args))
    with torch.no_grad():
        out = model(**inputs)  # first call builds (or loads from the cache) the kernels
        print(f"compile + first run: {time.perf_counter() - t0:.1f} s")
        want = ref(**inputs)
        err = (out.float() - want.float()).abs().max().item()
        scale = want.float().abs().max().item()
        ok = err <= 2e-3 + 6e-4 * scale
        print(f"check vs eager reference: max |diff| {err:.3g} (output max {scale:.3g}) -> {'OK' if ok else 'MISMATCH'}")
        t_ref = _median_time(lambda: ref(**inputs), args.repeats)
        t_cmp = _median_time(lambda: model(**inputs), args.repeats)
    print(f"forward, batch {args.batch}, seqlen {args.seqlen}, median of {args.repeats}:")
    print(f"  eager PyTorch reference {t_ref * 1e3:9.1f} ms")
    ratio = t_ref / t_cmp
    verdict = f"{ratio:6.1f}x faster" if ratio >= 1 else f"{1 / ratio:6.1f}x slower"
    print(f"  ssmc ({target.name})       {t_cmp * 1e3:9.1f} ms   {verdict} than eager")
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ssmc", description="Compile and tune state-space-model graphs.")
    from ssmc import __version__

    p.add_argument("--version", action="version", version=f"ssmc {__version__}")
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser, metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("check", help="verify specs; print node kinds, dims, parameter count")
    c.add_argument("specs", nargs="+", metavar="SPEC")
    c.set_defaults(fn=cmd_check)

    r = sub.add_parser("run", help="run random input through the reference model, or the compiled one with --target")
    r.add_argument("spec", metavar="SPEC")
    r.add_argument("--batch", type=_positive, default=2)
    r.add_argument("--seqlen", type=_positive, default=64)
    r.add_argument("--dim", type=_dim_binding, action="append", metavar="NAME=VALUE",
                   help="value of another run-time dimension")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--backward", action="store_true", help="also time a backward pass")
    r.add_argument("--target", default="reference",
                   help="reference (eager, default), auto (this host) or a name from `ssmc targets`")
    r.set_defaults(fn=cmd_run)

    e = sub.add_parser("explain", help="print the graph after each pass and the algorithm choices")
    e.add_argument("spec", metavar="SPEC")
    e.add_argument("--target", default="auto", help="a name from `ssmc targets`, or auto (this host)")
    e.add_argument("--batch", type=_positive, default=2)
    e.add_argument("--seqlen", type=_positive, default=1024)
    e.add_argument("--dim", type=_dim_binding, action="append", metavar="NAME=VALUE")
    e.add_argument("--all-passes", action="store_true", help="print the graph after every pass")
    e.set_defaults(fn=cmd_explain)

    co = sub.add_parser("compile", help="write each kernel's source (and GPU AOT artifacts) to a directory")
    co.add_argument("spec", metavar="SPEC")
    co.add_argument("--target", default="auto")
    co.add_argument("-o", "--output", required=True, metavar="DIR")
    co.add_argument("--batch", type=_positive, default=2)
    co.add_argument("--seqlen", type=_positive, default=1024)
    co.add_argument("--dim", type=_dim_binding, action="append", metavar="NAME=VALUE")
    co.set_defaults(fn=cmd_compile)

    d = sub.add_parser("demo", help="compile a model for this host, check it, time it against eager")
    d.add_argument("spec", metavar="SPEC", nargs="?", default="ir/mamba.yaml")
    d.add_argument("--target", default="auto")
    d.add_argument("--batch", type=_positive, default=2)
    d.add_argument("--seqlen", type=_positive, default=2048)
    d.add_argument("--dim", type=_dim_binding, action="append", metavar="NAME=VALUE")
    d.add_argument("--repeats", type=_positive, default=3)
    d.set_defaults(fn=cmd_demo)

    t = sub.add_parser("targets", help="list the target descriptors in targets/")
    t.set_defaults(fn=cmd_targets)
    __import__("ssmc.bench.cli", fromlist=["register"]).register(sub)  # ssmc bench: ssmc/bench/cli.py
    __import__("ssmc.tune.cli", fromlist=["register"]).register(sub)  # ssmc tune: ssmc/tune/cli.py
    __import__("ssmc.hf.cli", fromlist=["register"]).register(sub)  # ssmc import/export hf: ssmc/hf/cli.py
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """ssmc's own warnings on the command line: one line, no source excerpt (they speak to a
    user about their files and records, not about ssmc's code)."""
    text = str(message)
    text = text[len("ssmc: "):] if text.startswith("ssmc: ") else text
    print(f"warning: {text}", file=file or sys.stderr)


def main(argv=None) -> int:
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    shown = warnings.showwarning
    warnings.showwarning = _show_warning
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
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
