"""`ssmc tune SPEC --target T`: one Optuna study per kernel family the compiled spec runs on the
target (its SSM nodes', and on the CPU its conv1d / rmsnorm glue kernels') at the shape bucket;
the best config becomes a record the compiler picks up."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ssmc.errors import SsmcError


def _positive_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return x


def register(subparsers) -> None:
    from ssmc.cli import _dim_binding, _positive

    t = subparsers.add_parser(
        "tune", help="tune the kernels of a spec's nodes with Optuna; write records",
        description="Search each SSM node family's algorithm and kernel knobs for the target at "
                    "the shape bucket, and the knobs of the glue kernels (conv1d, rmsnorm) a CPU "
                    "target runs.  Targets on this machine are timed; others are ranked by "
                    "the cost model (records say 'model').  Studies persist: --resume continues "
                    "one, several workers (--workers, or hosts sharing --storage) share one.")
    t.add_argument("spec", metavar="SPEC")
    t.add_argument("--target", default="cpu",
                   help="a name from `ssmc targets`, or auto (this host's GPU, else cpu)")
    t.add_argument("--trials", type=_positive, default=20,
                   help="finished (complete or pruned) trials each study should hold (default 20)")
    t.add_argument("--timeout", type=_positive_float, default=None, metavar="S",
                   help="stop starting trials after S seconds (the best so far is recorded)")
    t.add_argument("--storage", default=None, metavar="URL",
                   help="sqlite:///PATH (default, under the cache dir), journal:///PATH (default "
                        "with --workers > 1), or postgresql://USER@HOST:PORT/DB for a fleet")
    t.add_argument("--study", default=None, metavar="NAME",
                   help="study name prefix (default ssmc-<spec>-<target>); each node family "
                        "and shape bucket gets NAME/<key>")
    t.add_argument("--workers", type=_positive, default=1, metavar="K",
                   help="worker processes on this host sharing the study (CPU timings of "
                        "concurrent workers disturb each other: best for model mode and GPUs)")
    t.add_argument("--resume", action="store_true",
                   help="continue existing studies (workers joining a shared study pass it too)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--family", action="append", metavar="NAME",
                   help="tune only this node family (e.g. selective_ssm/mamba1, conv1d, "
                        "rmsnorm); repeat for several (default: every tunable one)")
    t.add_argument("--batch", type=_positive, default=2)
    t.add_argument("--seqlen", type=_positive, default=1024)
    t.add_argument("--dim", type=_dim_binding, action="append", metavar="NAME=VALUE",
                   help="value of another run-time dimension")
    t.add_argument("--repeats", type=_positive, default=15, help="timed repeats per trial")
    t.add_argument("--rounds", type=_positive, default=30,
                   help="interleaved runs of each config in the final side-by-side comparison")
    t.add_argument("--statistic", choices=("median", "iq_mean", "min"), default="median",
                   help="what of the repeats a trial scores: median (default), iq_mean (mean of "
                        "the middle half) or min (steadiest on a machine busy with other work)")
    t.add_argument("--heartbeat", type=_positive, default=10, metavar="S",
                   help="RDB storages: a worker silent for 2*S seconds is presumed dead and "
                        "its trial retried (default 10)")
    t.add_argument("--export", default=None, metavar="DIR",
                   help="also write the records to DIR/<target>/ (DIR=schedules ships them)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a spawned worker
    t.set_defaults(fn=cmd_tune)


def _tunable(workloads, backend: str):
    from ssmc.tune.space import node_space

    out, skipped = [], []
    for w in workloads:
        space = node_space(w.family, w.algorithms(backend), backend)
        (out if space is not None else skipped).append((w, space))
    return out, skipped


def _worker_argv(args, index: int, storage: str, prefix: str) -> list:
    argv = [sys.executable, "-m", "ssmc.cli", "tune", str(args.spec), "--target", args.target,
            "--trials", str(args.trials), "--storage", storage, "--study", prefix,
            "--seed", str(args.seed + index), "--batch", str(args.batch),
            "--seqlen", str(args.seqlen), "--repeats", str(args.repeats),
            "--statistic", args.statistic,
            "--heartbeat", str(args.heartbeat), "--resume", "--worker", "--no-progress"]
    for fam in args.family or []:
        argv += ["--family", fam]
    if args.timeout:
        argv += ["--timeout", str(args.timeout)]
    for k, v in args.dim or []:
        argv += ["--dim", f"{k}={v}"]
    return argv


def _spawn_workers(args, storage: str, prefix: str) -> list:
    from ssmc.tune.records import cache_root

    logs = cache_root() / "tune" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(1, args.workers):
        log = open(logs / f"worker-{os.getpid()}-{i}.log", "w")
        procs.append((subprocess.Popen(_worker_argv(args, i, storage, prefix), stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL), log))
    return procs


def _wait_workers(procs) -> None:
    for proc, log in procs:
        rc = proc.wait()
        log.close()
        if rc not in (0, 130, -2):
            print(f"  worker {proc.pid} exited with {rc}; log: {log.name}", file=sys.stderr)


def cmd_tune(args) -> int:
    import optuna

    from ssmc.cli import _target
    from ssmc.ir.spec import load_spec
    from ssmc.tune import gain, study as st
    from ssmc.tune.measure import host_has
    from ssmc.tune.workload import kernel_knobs, workloads

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    target = _target(args.target)
    graph = load_spec(Path(args.spec))
    bindings = {"batch": args.batch, "seqlen": args.seqlen, **dict(args.dim or [])}
    mode = "measured" if host_has(target) else "model"
    device = "cuda" if target.is_gpu and mode == "measured" else "cpu"
    backend = "tvm" if target.backend.startswith("tvm") else "triton"
    found = workloads(graph, target, bindings)
    if args.family:
        unknown = sorted(set(args.family) - {w.family for w in found})
        if unknown:
            raise SsmcError(f"--family {unknown[0]}: {args.spec} has no such node family on "
                            f"{target.name}; it has {', '.join(sorted({w.family for w in found}))}")
        found = [w for w in found if w.family in args.family]
    todo, skipped = _tunable(found, backend)
    say = (lambda *a, **k: None) if args.worker else print
    for w, _ in skipped:
        say(f"{w.family}: no tunable {backend} kernel; the compiler's choice stands")
    if not todo:
        raise SsmcError(f"nothing to tune: no node of {args.spec} has a tunable {backend} "
                        f"kernel for target {target.name}")
    url = args.storage or st.default_storage_url(args.workers)
    storage = st.open_storage(url, workers=args.workers, heartbeat=args.heartbeat)
    journal = st.is_journal(url)
    prefix = args.study or f"ssmc-{graph.name}-{target.name}"

    # Every study exists before any worker starts, so a worker never creates one that this
    # process would then refuse as "already has trials".
    studies = []
    for w, space in todo:
        name = st.study_name(prefix, w.key)
        study, created = st.open_study(storage, name, seed=args.seed, n_trials=args.trials,
                                       resume=args.resume or args.worker)
        if created:
            _enqueue_defaults(study, w, space, backend, kernel_knobs)
        elif args.resume and not args.worker and st.retry_interrupted(study):
            say(f"{name}: re-running the trial a Ctrl-C cut short")
        studies.append((w, space, study))

    procs = _spawn_workers(args, url, prefix) if args.workers > 1 and not args.worker else []
    deadline = time.monotonic() + args.timeout if args.timeout else None
    status = 0
    try:
        for w, space, study in studies:
            say(f"{w.describe()} on {target.name}: {mode}; study {study.study_name} "
                f"({st.redacted(url)})")
            say(f"  nodes: {', '.join(w.nodes)}; algorithms: {', '.join(space.algorithms)}")
            objective = st.Objective(w, space, target, mode, device=device, repeats=args.repeats,
                                     statistic=args.statistic)
            st.run_trials(study, objective, n_trials=args.trials, deadline=deadline,
                          progress=not (args.no_progress or args.worker), journal=journal,
                          label=w.family)
            done = st.finished_count(study)
            if done < args.trials:
                say(f"  timeout: {done} of {args.trials} trials finished (--resume continues)")
            if not args.worker:
                if procs:  # the other workers' last trials belong to this result
                    _wait_workers(procs)
                    procs = []
                gain.finish(study, objective, export_dir=args.export, rounds=args.rounds, out=say)
    except st.Interrupted:
        for proc, _ in procs:  # a terminal's Ctrl-C reaches them anyway; a `kill -INT` does not
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for w, space, study in studies:
            print(f"interrupted: {st.finished_count(study)} of {args.trials} trials finished in "
                  f"{study.study_name}; run the same command with --resume to continue",
                  file=sys.stderr)
        status = 130
    finally:
        _wait_workers(procs)
    return status


def _enqueue_defaults(study, w, space, backend, kernel_knobs) -> None:
    """The compiler's default (and the TVM kernel's own) as the first trials: the search then
    starts from a known point and the tuned result can only beat or equal it."""
    choices = [(w.default_algorithm, w.default_config)]
    if backend == "tvm":
        choices.append((w.default_algorithm, {}))  # {} = the kernel's own defaults
    for alg, cfg in choices:
        if alg not in space.kernels:
            continue
        params = space.params_of(alg, kernel_knobs(w, backend, alg, cfg))
        if params is not None:
            study.enqueue_trial(params, skip_if_exists=True)
