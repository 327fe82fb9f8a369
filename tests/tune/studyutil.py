"""Watching a study that `ssmc tune` subprocesses are filling, from the test."""

import time

import optuna
from optuna.trial import TrialState

optuna.logging.set_verbosity(optuna.logging.WARNING)


_storages: dict = {}


def trials(url: str) -> list:
    """Every trial of the (single) study at url, [] before it exists."""
    from ssmc.tune.study import _with_installed_driver

    if url not in _storages:
        _storages[url] = optuna.storages.RDBStorage(_with_installed_driver(url))
    storage = _storages[url]
    try:
        names = optuna.get_all_study_names(storage)
        if not names:
            return []
        return optuna.load_study(study_name=names[0], storage=storage).get_trials(deepcopy=True)
    except Exception:  # the writer holds a lock for a moment: ask again
        return None


def wait_until(url: str, predicate, proc, timeout: float = 120.0):
    """Poll the study until predicate(trials) holds; the trials then.  Fails when the tuning
    process ends first or the time runs out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ts = trials(url)
        if ts is not None and predicate(ts):
            return ts
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"ssmc tune exited ({proc.returncode}) before the study reached "
                                 f"the state waited for: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the study")


def finished(ts) -> list:
    return [t for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def running(ts, pid=None) -> list:
    return [t for t in ts if t.state == TrialState.RUNNING
            and (pid is None or str(t.user_attrs.get("worker", "")).endswith(f":{pid}"))]


def retries_of(ts, number: int) -> list:
    return [t for t in ts if t.system_attrs.get("failed_trial") == number]
