"""Several worker processes on one host: Optuna's JournalFileBackend, and (as its JournalStorage
has no heartbeat in Optuna 5.0) dead local workers found by pid and retried through Optuna's
retry callback."""

import json
import socket
import subprocess

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from ssmc.paths import zoo_dir
from ssmc.tune.study import fail_dead_local_trials, open_storage

from .conftest import ROOT, ssmc_cmd, ssmc_env


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_dead_local_workers_trial_is_failed_and_queued_again(tmp_path):
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "s.journal")))
    study = optuna.create_study(storage=storage)
    host = socket.gethostname()
    dead = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    dead.set_user_attr("worker", f"{host}:{_dead_pid()}")
    alive = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    alive.set_user_attr("worker", f"{host}:{__import__('os').getpid()}")
    remote = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    remote.set_user_attr("worker", "another-host:1")  # not ours to judge: its host may be alive
    assert fail_dead_local_trials(study) == 1
    states = {t.number: t.state for t in study.trials}
    assert states[dead.number] == TrialState.FAIL
    assert states[alive.number] == states[remote.number] == TrialState.RUNNING
    (retry,) = [t for t in study.trials if t.state == TrialState.WAITING]
    assert retry.system_attrs["failed_trial"] == dead.number
    assert retry.params == {"x": dead.params["x"]}
    assert fail_dead_local_trials(study) == 0  # once


def test_journal_urls_open_a_journal_storage(tmp_path):
    assert isinstance(open_storage(f"journal:///{tmp_path}/a.journal"), JournalStorage)
    assert isinstance(open_storage(str(tmp_path / "b.journal")), JournalStorage)


@pytest.mark.slow
def test_two_local_workers_share_one_journal_study(tmp_path, records_dir):
    journal = tmp_path / "studies.journal"
    env = {**ssmc_env(records_dir), "SSMC_CACHE_DIR": str(tmp_path / "cache")}  # worker logs
    # enough trials that the second worker, starting a few seconds later, gets some
    proc = subprocess.run(
        ssmc_cmd("tune", zoo_dir() / "mamba.yaml", "--target", "sm_90", "--trials", 24,
                 "--workers", 2, "--storage", f"journal:///{journal}", "--no-progress"),
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    storage = JournalStorage(JournalFileBackend(str(journal)))
    (name,) = optuna.get_all_study_names(storage)
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert len([t for t in trials if t.state.is_finished()]) >= 24
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both processes took trials
    (path,) = (records_dir / "sm_90").glob("*.json")
    assert json.loads(path.read_text())["source"] == "model"
