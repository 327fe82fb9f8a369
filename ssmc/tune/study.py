"""The Optuna side: storages, one study per workload, the objective, the trial loop.

Storages (all Optuna's own):
  * SQLite (RDBStorage) by default: one process.
  * JournalStorage(JournalFileBackend) for several worker processes on one host.
  * Any RDB URL (postgresql://...) for a fleet of hosts sharing one study.
RDB storages get a heartbeat: a worker that dies mid-trial stops beating, and the next trial
any live worker starts marks that trial failed and, through RetryHeartbeatStaleTrialCallback,
queues its parameters again.  Optuna 5.0's JournalStorage has no heartbeat, so for local
journal workers the same retry callback is driven by a process check instead (the worker that
owns a RUNNING trial is a pid on this host; a dead pid means a dead trial).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from ssmc.errors import SsmcError
from ssmc.tune import prune
from ssmc.tune.records import cache_root

RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_RETRY = 3  # a config that kills its worker three times is not tried a fourth time


class WrongResult(Exception):
    """A config whose kernel disagrees with the oracle: a kernel bug, recorded as a failed
    trial (not pruned: it is not a resource limit)."""


class Interrupted(Exception):
    """Ctrl-C during tuning: the running trial was recorded as failed; --resume re-runs it."""


# ---- storages ------------------------------------------------------------------------------

def retry_callback() -> RetryHeartbeatStaleTrialCallback:
    """Optuna's retry of a dead worker's trial: a WAITING copy with the same parameters, which
    the next worker to ask for a trial runs first."""
    with warnings.catch_warnings():  # "experimental" in Optuna 5.0, and stable for years
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


def default_storage_url(workers: int) -> str:
    root = cache_root() / "tune"
    root.mkdir(parents=True, exist_ok=True)
    if workers > 1:
        return f"journal:///{root / 'studies.journal'}"
    return f"sqlite:///{root / 'studies.sqlite3'}"


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if sep and at and ":" in creds:
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def _sqlite_wal(path: Path) -> None:
    """Put the SQLite file in write-ahead-log mode (a property of the file, kept): readers such
    as a dashboard or a second `ssmc tune --resume` polling it then never block the tuner's
    writes ("database is locked")."""
    import sqlite3

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with sqlite3.connect(path, timeout=60) as con:
            con.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as e:
        raise SsmcError(f"storage: cannot open SQLite file {path}: {e}") from None


def _with_installed_driver(url: str) -> str:
    """SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the [fleet] extra installs
    psycopg2: name it when it is the driver that is there."""
    import importlib.util

    scheme, _, rest = url.partition("://")
    if scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    return url


def is_journal(url: str) -> bool:
    return url.startswith("journal://") or url.endswith((".journal", ".log"))


def open_storage(url: str, *, workers: int = 1, heartbeat: int = 10):
    """An Optuna storage for the URL: sqlite:///PATH, postgresql://USER@HOST:PORT/DB (any
    SQLAlchemy RDB URL), or journal:///PATH (a path ending in .journal also works).  Bad URLs
    and unreachable servers are SsmcErrors (one line)."""
    if is_journal(url):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        # journal:///abs/path -> /abs/path; journal://rel/path -> rel/path; or a bare path
        path = Path(url.removeprefix("journal://")).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as e:
            raise SsmcError(f"storage: cannot open journal file {path}: {e.strerror}") from None
    scheme = _scheme(url)
    if scheme not in RDB_SCHEMES:
        raise SsmcError(f"storage: {redacted(url)!r} is not a storage URL; expected "
                        "sqlite:///PATH, postgresql://USER@HOST:PORT/DB or journal:///PATH")
    if scheme == "sqlite" and workers > 1:
        raise SsmcError("storage: SQLite cannot serve several worker processes; leave --storage "
                        "out (a journal file is used) or give a postgresql:// URL")
    shown = redacted(url)
    url = _with_installed_driver(url)
    engine_kwargs = {"pool_pre_ping": True}  # a fleet's connections idle through long trials
    if scheme in ("postgresql", "postgres"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}  # fail, not hang, when unreachable
    if scheme == "sqlite":
        engine_kwargs = {"connect_args": {"timeout": 60}}  # the heartbeat thread writes too
        db = url.split(":///", 1)[-1]
        if db and db != ":memory:":
            _sqlite_wal(Path(db).expanduser())
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5.0
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                heartbeat_stale_trial_callback=retry_callback(),
                engine_kwargs=engine_kwargs)
    except ImportError as e:
        raise SsmcError(f"storage: the driver for {scheme} is not installed ({e}); for "
                        "PostgreSQL: pip install 'ssmc[fleet]'") from None
    except Exception as e:  # sqlalchemy's errors: unreachable host, refused login, bad URL
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SsmcError(f"storage: cannot open {shown}: {first}") from None


# ---- studies -------------------------------------------------------------------------------

def study_name(prefix: str, key) -> str:
    return f"{prefix}/{key.filename().removesuffix('.json')}"


def finished_count(study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def open_study(storage, name: str, *, seed: int | None, n_trials: int, resume: bool,
               ) -> tuple:
    """(study, created): create or load it.  Without resume, a study that already holds trials
    is refused (it would silently mix an old search with a new one); --resume continues it."""
    if not resume and name in optuna.get_all_study_names(storage):
        # trials only queued (the defaults, by a run that died before starting one) are no
        # search yet
        started = [t for t in optuna.load_study(study_name=name, storage=storage).get_trials(
            deepcopy=False) if t.state != TrialState.WAITING]
        if started:
            raise SsmcError(f"study {name!r} already has {len(started)} trials; pass "
                            "--resume to continue it or --study NAME for a new one")
    with warnings.catch_warnings():  # `group` is "experimental" in Optuna 5.0
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            seed=seed, multivariate=True,
            group=True,  # conditional knobs: model each algorithm's knobs as their own group
            n_startup_trials=max(3, min(10, n_trials // 3)))
    # create without load_if_exists first: the database's unique study name makes exactly one
    # of several workers starting together the creator (the one that queues the defaults)
    try:
        return optuna.create_study(storage=storage, study_name=name, direction="minimize",
                                   sampler=sampler), True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(storage=storage, study_name=name, sampler=sampler), False


def retry_interrupted(study) -> int:
    """Queue again the trials a Ctrl-C cut short (recorded as failed), once each."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    queued = 0
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted") and t.number not in retried:
            retry_callback()(study, t)
            queued += 1
    return queued


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_local_trials(study) -> int:
    """For storages without a heartbeat (journal files): RUNNING trials whose worker process on
    this host is gone are failed and retried through Optuna's retry callback."""
    host = socket.gethostname()
    storage = study._storage
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner_host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if owner_host != host or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                retry_callback()(study, storage.get_trial(t._trial_id))
                n += 1
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker got there first
    return n


# ---- Ctrl-C --------------------------------------------------------------------------------

class CtrlC:
    """Ctrl-C that never lands inside a storage write.  A KeyboardInterrupt raised while the
    main thread is mid-transaction leaves the database locked (SQLite) or the session dirty,
    and the heartbeat thread then waits on it.  So: during a trial's kernel work a Ctrl-C
    interrupts at once (Optuna records the trial failed); anywhere else it only asks the loop
    to stop after the current step.  A second Ctrl-C always interrupts."""

    def __init__(self):
        self.requested = False
        self.interruptible = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame):
        # requested first, always: a KeyboardInterrupt raised while a finalizer runs (a GC
        # callback of SQLAlchemy's, say) is printed and dropped by CPython, and the loop must
        # still stop after the current step (seen in CI: the run went on and exited 0)
        interrupt = self.interruptible or self.requested
        self.requested = True
        if interrupt:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def work(self):
        if self.requested:  # asked to stop while this trial was being set up
            raise KeyboardInterrupt
        self.interruptible = True
        try:
            yield
        finally:
            self.interruptible = False


# ---- the objective -------------------------------------------------------------------------

@dataclass
class Objective:
    """One trial: suggest, prune from the descriptor, compile, prune from the compiled code,
    then time it here (mode 'measured') or price it with the cost model (mode 'model')."""

    workload: object
    space: object  # NodeSpace
    target: object
    mode: str  # measured | model
    device: str = "cpu"
    repeats: int = 15
    statistic: str = "median"  # of the repeats: median | iq_mean | min (see measure.Timing)
    ctrl_c: object = None  # CtrlC while run_trials runs
    _inputs: dict | None = field(default=None, repr=False)
    _reference: object = field(default=None, repr=False)

    @property
    def backend(self) -> str:
        return self.space.backend

    def __call__(self, trial) -> float:
        trial.set_user_attr("worker", worker_id())
        alg, config = self.space.suggest(trial)
        trial.set_user_attr("algorithm", alg)
        trial.set_user_attr("config", config)
        trial.set_user_attr("source", self.mode)
        notes: dict = {}
        try:
            with self.ctrl_c.work() if self.ctrl_c is not None else contextlib.nullcontext():
                return self.evaluate(alg, config, notes)
        except KeyboardInterrupt:
            notes["interrupted"] = True
            raise
        finally:  # storage writes happen here, outside the window a Ctrl-C may land in
            for key, value in notes.items():
                trial.set_user_attr(key, value)

    def evaluate(self, alg: str, config: dict, notes: dict | None = None) -> float:
        """Microseconds of (alg, config); raises TrialPruned when infeasible.  `notes` gets
        what the compiler and the timer said (AOT resources, timing statistics)."""
        notes = notes if notes is not None else {}
        prune.before_compile(alg, config, self.target, self.workload)
        plan = kernels = None
        if self.target.is_gpu:
            plan, kernels = self.aot(alg, config)
            notes["aot"] = [{"kernel": k.kernel, "regs": k.n_regs, "spills": k.n_spills,
                             "shared": k.shared} for k in kernels]
            prune.after_compile(kernels)
        if self.mode == "model":
            from ssmc.tune.model import estimate_us

            return estimate_us(self.workload, alg, config, self.target, plan, kernels)
        timing = self.measure(alg, config)
        notes["timing_us"] = {"median": timing.median * 1e6, "iq_mean": timing.iq_mean * 1e6,
                              "min": timing.best * 1e6, "n": len(timing.samples)}
        return timing.statistic(self.statistic) * 1e6

    def aot(self, alg: str, config: dict):
        """The Triton AOT build of the config for the target: (launch plan, AotKernels)."""
        from ssmc.codegen.triton import aot
        from ssmc.codegen.triton.common import interpreting
        from ssmc.codegen.triton.families import get_family
        from ssmc.tune.workload import launch_example

        fam = get_family(self.space.kernels[alg].family)
        cfg = fam.config.from_dict(config)
        example = launch_example(self.workload)
        plan = fam.plan(example, cfg)
        dtype = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(
            self.workload.key.dtype, "fp32")
        with tempfile.TemporaryDirectory(prefix="ssmc-tune-aot-") as out:
            # Under the interpreter the build runs in a subprocess that only knows the family's
            # own example problem; the kernels are specialised on block sizes and N, not on
            # the problem's extent, so their resource use is the same.
            # compile_families: a family with fp32 parameters only (s4d.vandermonde) builds
            # in fp32 whatever the activations' dtype
            kernels = aot.compile_families([fam.name], [self.target], dtype=dtype, config=cfg,
                                           out_dir=out,
                                           example=None if interpreting() else example)
        return plan, kernels

    def inputs(self) -> dict:
        if self._inputs is None:
            from ssmc.tune.workload import kernel_inputs, reference_output

            self._inputs = kernel_inputs(self.workload, self.backend, device=self.device)
            self._reference = reference_output(self.workload, self._inputs, self.backend)
        return self._inputs

    def call(self, alg: str, config: dict):
        from ssmc.tune.workload import kernel_call

        return kernel_call(self.workload, alg, config, self.backend, self.inputs())

    def check(self, out) -> None:
        import torch

        got = out if isinstance(out, tuple) else (out,)
        want = self._reference if isinstance(self._reference, tuple) else (self._reference,)
        for g, w in zip(got, want):
            g = g.detach().cpu()
            if g.is_complex() or w.is_complex():
                g, w = torch.view_as_real(g.to(torch.complex64)), torch.view_as_real(w.to(torch.complex64))
            if not torch.allclose(g.float(), w.float(), rtol=6e-4, atol=2e-3):  # mamba-ssm's fp32
                err = (g.float() - w.float()).abs().max().item()
                raise WrongResult(f"output differs from the oracle by {err:.3g}")

    def measure(self, alg: str, config: dict):
        from ssmc.tune.measure import time_fn

        fn = self.call(alg, config)
        self.check(fn())  # the first call also builds the kernel (or loads it from the cache)
        return time_fn(fn, self.device, repeats=self.repeats)


# ---- the loop ------------------------------------------------------------------------------

def _best_text(study) -> str:
    try:
        best = study.best_trial
    except ValueError:
        return "-"
    return f"{best.value / 1e3:.3f} ms" if best.value >= 100 else f"{best.value:.1f} us"


def run_trials(study, objective, *, n_trials: int, deadline: float | None, progress: bool,
               journal: bool, label: str = "") -> None:
    """Run trials until the study holds n_trials finished (complete or pruned) ones, counting
    every worker's; Ctrl-C leaves the running trial failed (consistent) and raises
    Interrupted."""
    from tqdm import tqdm

    bar = tqdm(total=n_trials, initial=min(finished_count(study), n_trials), unit="trial",
               desc=label, disable=not progress, dynamic_ncols=True, leave=True)
    ctrl_c = CtrlC()
    objective.ctrl_c = ctrl_c
    try:
        with ctrl_c:
            _trial_loop(study, objective, ctrl_c, bar, n_trials, deadline, journal)
    except KeyboardInterrupt:
        raise Interrupted() from None
    finally:
        objective.ctrl_c = None
        bar.close()


def _trial_loop(study, objective, ctrl_c, bar, n_trials, deadline, journal) -> None:
    while finished_count(study) < n_trials:
        if deadline is not None and time.monotonic() >= deadline:
            break
        # A worker of this host that died (SIGKILL) is reaped at once on every storage; the
        # heartbeat only catches it after its grace period, which a resumed run may outlive.
        fail_dead_local_trials(study)
        # one trial per call: between trials this loop recounts the whole study (other
        # workers' trials too), checks the deadline and reaps dead local workers.  A Ctrl-C
        # inside the trial leaves it FAIL (Optuna's own handling), never RUNNING.
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False)
        if ctrl_c.requested:
            raise KeyboardInterrupt
        done = finished_count(study)
        pruned = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
        bar.set_postfix_str(f"best {_best_text(study)}, pruned {pruned}", refresh=False)
        bar.update(min(done, n_trials) - bar.n)
