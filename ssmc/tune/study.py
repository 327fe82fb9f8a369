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

import os
import socket
import tempfile
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

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class WrongResult(Exception):
    """A config whose kernel disagrees with the oracle: a kernel bug, recorded as a failed
    trial (not pruned: it is not a resource limit)."""


class Interrupted(Exception):
    """Ctrl-C during tuning: the running trial was recorded as failed; --resume re-runs it."""


# ---- storages ------------------------------------------------------------------------------

def default_storage_url(workers: int) -> str:
    root = cache_root() / "tune"
    root.mkdir(parents=True, exist_ok=True)
    if workers > 1:
        return f"journal:///{root / 'studies.journal'}"
    return f"sqlite:///{root / 'studies.sqlite3'}"


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
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

        path = Path(url[len("journal://"):] if url.startswith("journal://") else url)
        if url.startswith("journal:///"):
            path = Path("/" + url[len("journal:///"):].lstrip("/"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as e:
            raise SsmcError(f"storage: cannot open journal file {path}: {e.strerror}") from None
    scheme = _scheme(url)
    if scheme not in RDB_SCHEMES:
        raise SsmcError(f"storage: {_redacted(url)!r} is not a storage URL; expected "
                        "sqlite:///PATH, postgresql://USER@HOST:PORT/DB or journal:///PATH")
    if scheme == "sqlite" and workers > 1:
        raise SsmcError("storage: SQLite cannot serve several worker processes; leave --storage "
                        "out (a journal file is used) or give a postgresql:// URL")
    if scheme == "sqlite":
        db = url.split(":///", 1)[-1]
        if db and db != ":memory:":
            Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
            engine_kwargs={"pool_pre_ping": True} if scheme != "sqlite" else None)
    except ImportError as e:
        raise SsmcError(f"storage: the driver for {scheme} is not installed ({e}); for "
                        "PostgreSQL: pip install 'ssmc[fleet]'") from None
    except Exception as e:  # sqlalchemy's errors: unreachable host, refused login, bad URL
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SsmcError(f"storage: cannot open {_redacted(url)}: {first}") from None


# ---- studies -------------------------------------------------------------------------------

def study_name(prefix: str, key) -> str:
    return f"{prefix}/{key.filename().removesuffix('.json')}"


def finished_count(study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def open_study(storage, name: str, *, seed: int | None, n_trials: int, resume: bool,
               create_only: bool = False):
    """Create or load the study.  Without resume, a study that already holds trials is refused
    (it would silently mix an old search with a new one); --resume continues it."""
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if name in existing and existing[name].n_trials > 0 and not resume:
        raise SsmcError(f"study {name!r} already has {existing[name].n_trials} trials; pass "
                        "--resume to continue it or --study NAME for a new one")
    sampler = optuna.samplers.TPESampler(
        seed=seed, multivariate=True, group=True,  # group: conditional knobs per algorithm
        n_startup_trials=max(3, min(10, n_trials // 3)))
    return optuna.create_study(storage=storage, study_name=name, direction="minimize",
                               sampler=sampler, load_if_exists=True)


def retry_interrupted(study) -> int:
    """Queue again the trials a Ctrl-C cut short (recorded as failed), once each."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    queued = 0
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted") and t.number not in retried:
            RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, t)
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
                RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, storage.get_trial(t._trial_id))
                n += 1
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker got there first
    return n


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
        try:
            return self.evaluate(alg, config, trial)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise

    def evaluate(self, alg: str, config: dict, trial=None) -> float:
        """Microseconds of (alg, config); raises TrialPruned when infeasible."""
        prune.before_compile(alg, config, self.target, self.workload)
        plan = kernels = None
        if self.target.is_gpu:
            plan, kernels = self.aot(alg, config)
            prune.after_compile(kernels)
            if trial is not None:
                trial.set_user_attr("aot", [{"kernel": k.kernel, "regs": k.n_regs,
                                             "spills": k.n_spills, "shared": k.shared}
                                            for k in kernels])
        if self.mode == "model":
            from ssmc.tune.model import estimate_us

            return estimate_us(self.workload, alg, config, self.target, plan, kernels)
        timing = self.measure(alg, config)
        if trial is not None:
            trial.set_user_attr("timing_us", {"median": timing.median * 1e6,
                                              "iq_mean": timing.iq_mean * 1e6,
                                              "min": timing.best * 1e6, "n": len(timing.samples)})
        return timing.statistic(self.statistic) * 1e6

    def aot(self, alg: str, config: dict):
        """The Triton AOT build of the config for the target: (launch plan, AotKernels)."""
        from ssmc.codegen.triton import aot
        from ssmc.codegen.triton.common import interpreting
        from ssmc.codegen.triton.families import get_family
        from ssmc.tune.workload import kernel_inputs

        fam = get_family(self.space.kernels[alg].family)
        cfg = fam.config.from_dict(config)
        example = kernel_inputs(self.workload, "triton", device="meta")
        plan = fam.plan(example, cfg)
        dtype = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(
            self.workload.key.dtype, "fp32")
        with tempfile.TemporaryDirectory(prefix="ssmc-tune-aot-") as out:
            # Under the interpreter the build runs in a subprocess that only knows the family's
            # own example problem; the kernels are specialised on block sizes and N, not on
            # the problem's extent, so their resource use is the same.
            kernels = aot.compile_family(fam.name, self.target, dtype=dtype, config=cfg,
                                         out_dir=out, example=None if interpreting() else example)
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
    try:
        while finished_count(study) < n_trials:
            if deadline is not None and time.monotonic() >= deadline:
                break
            if journal:
                fail_dead_local_trials(study)
            try:
                # one trial per call: between trials this loop recounts the whole study (other
                # workers' trials too), checks the deadline and reaps dead local workers
                study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False)
            except KeyboardInterrupt:
                raise Interrupted() from None
            done = finished_count(study)
            pruned = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
            bar.set_postfix_str(f"best {_best_text(study)}, pruned {pruned}", refresh=False)
            bar.update(min(done, n_trials) - bar.n)
    finally:
        bar.close()
