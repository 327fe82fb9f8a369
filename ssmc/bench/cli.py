"""`ssmc bench SPEC_OR_OP`: time ssmc against PyTorch eager, torch.compile and peers.

Registered into the main parser by `register(subparsers)` (ssmc/cli.py), so that everything
about the subcommand lives here.  Bad input is a user error: exit 2 with one line.
"""

from __future__ import annotations

import argparse
import sys

from ssmc.bench.subject import BASELINES, DEFAULT_BASELINES, OPS

DEFAULT_SEQLENS = (256, 1024, 4096, 16384)


def _seqlens(text: str) -> tuple:
    try:
        out = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {text!r}") from None
    if not out or any(n < 1 for n in out):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {text!r}")
    return tuple(sorted(set(out)))


def _baselines(text: str) -> tuple:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    for n in names:
        if n not in BASELINES:
            raise argparse.ArgumentTypeError(
                f"unknown baseline {n!r}; known: {', '.join(BASELINES)}")
    return tuple(dict.fromkeys(n for n in names if n != "ssmc"))


def _positive(kind):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return v
    return parse


def _dim(text: str):
    from ssmc.cli import _dim_binding

    return _dim_binding(text)


def register(subparsers) -> None:
    b = subparsers.add_parser(
        "bench", help="time ssmc against PyTorch eager, torch.compile and peers",
        description="Time ssmc against PyTorch eager (the reference) and torch.compile, per "
                    "sequence length, with warm-up and medians; print ratios and the fraction "
                    "of the roofline reached.")
    b.add_argument("subject", metavar="SPEC_OR_OP",
                   help=f"a spec file (whole model) or an op: {', '.join(OPS)}")
    b.add_argument("--target", default="cpu", help="a name from `ssmc targets` (default cpu)")
    b.add_argument("--baselines", type=_baselines, default=DEFAULT_BASELINES,
                   help=f"comma-separated, from: {', '.join(BASELINES)} (default "
                        f"{','.join(DEFAULT_BASELINES)})")
    b.add_argument("--seqlens", type=_seqlens, default=DEFAULT_SEQLENS,
                   help="comma-separated sequence lengths (default 256,1024,4096,16384)")
    b.add_argument("--batch", type=_positive(int), default=2)
    b.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    b.add_argument("--dim", type=_dim, action="append", metavar="NAME=VALUE",
                   help="an op size (selective_scan: d, N; ssd: heads, head_dim, d_state, "
                        "groups, chunk) or a spec's run-time dim")
    b.add_argument("--backward", action="store_true", help="time forward + backward")
    b.add_argument("--repeats", type=_positive(int), default=10,
                   help="timed calls per case (fewer for slow calls, at least 3; default 10)")
    b.add_argument("--warmup", type=int, default=1, help="untimed calls first (default 1)")
    b.add_argument("--budget", type=_positive(float), default=20.0, metavar="SECONDS",
                   help="time the repeats of one case may take (default 20)")
    b.add_argument("--compile-timeout", type=_positive(float), default=300.0, metavar="SECONDS",
                   help="cap on torch.compile's first call per length (default 300)")
    b.add_argument("--max-call", type=_positive(float), default=60.0, metavar="SECONDS",
                   help="an implementation slower than this per call is not run at longer "
                        "lengths (default 60)")
    b.add_argument("--torch-threads", type=_positive(int), default=None,
                   help="torch intra-op threads (default: torch's own choice)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", metavar="FILE", help="write the record (schema: ssmc/bench/report.py)")
    b.add_argument("--plot", metavar="FILE", help="write a PNG of time against L")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(fn=cmd_bench)


def _check_writable(path, flag: str) -> None:
    """A bad output path fails before a run of many minutes, not after it."""
    from pathlib import Path

    from ssmc.errors import SsmcError

    if path and not Path(path).resolve().parent.is_dir():
        raise SsmcError(f"{flag}: directory {Path(path).parent} does not exist")


def cmd_bench(args) -> int:
    from ssmc.bench import harness, report
    from ssmc.bench.subject import Recipe
    from ssmc.bench.timing import Policy
    from ssmc.errors import SsmcError

    if args.warmup < 0:
        raise SsmcError(f"--warmup: expected a count >= 0, got {args.warmup}")
    recipe = Recipe(subject=args.subject, target=args.target, batch=args.batch, dtype=args.dtype,
                    backward=args.backward, dims=dict(args.dim or []), seed=args.seed)
    settings = harness.Settings(
        seqlens=args.seqlens, baselines=args.baselines,
        policy=Policy(warmup=args.warmup, repeats=args.repeats,
                      min_repeats=min(3, args.repeats), budget_s=args.budget),
        compile_timeout_s=args.compile_timeout, max_call_s=args.max_call,
        torch_threads=args.torch_threads, progress=not args.no_progress)
    _check_writable(args.json, "--json")
    _check_writable(args.plot, "--plot")
    if args.plot:
        from ssmc.bench.plot import require_matplotlib

        require_matplotlib()  # before the run, not after it
    doc = harness.run(recipe, settings,
                      argv=["ssmc", *sys.argv[1:]] if "bench" in sys.argv[1:] else None)
    print(report.format_table(doc))
    if args.json:
        report.write_json(doc, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        from ssmc.bench.plot import plot

        plot(doc, args.plot)
        print(f"wrote {args.plot}")
    return 0
