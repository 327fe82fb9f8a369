"""A tuning fleet for real: a PostgreSQL server from the distribution's binaries on loopback,
two `ssmc tune` workers on one study, one killed mid-trial.  The survivor's heartbeat check
fails the dead worker's trial and Optuna's RetryHeartbeatStaleTrialCallback runs it again: no
trial lost, none run twice, one record.  Model mode (sm_90) keeps the trials short."""

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from optuna.trial import TrialState

from ssmc.paths import zoo_dir

from .conftest import ROOT, ssmc_cmd, ssmc_env
from .studyutil import finished, retries_of, running, wait_until

pytestmark = pytest.mark.fleet
TRIALS = 6


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    path = found[-1] if found else shutil.which("pg_ctl")
    if path and Path(path).with_name("initdb").exists():
        return Path(path).parent
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; install the "
                    "distribution's postgresql package (.ci/run does) to run the fleet test")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is not installed (pip install 'ssmc[fleet]')")
    # initdb refuses to run as root: run the server as nobody, in a directory it owns
    as_user = []
    home = Path(tempfile.mkdtemp(prefix="ssmc-pg-"))
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        as_user = [runuser, "-u", "nobody", "--"]
    data, port = home / "data", _free_port()
    run = lambda *cmd: subprocess.run([*as_user, *map(str, cmd)], capture_output=True, text=True,  # noqa: E731
                                      timeout=60, cwd=home)
    init = run(bin_dir / "initdb", "-D", data, "-U", "ssmc", "--auth=trust", "--no-sync", "-E", "UTF8")
    assert init.returncode == 0, init.stderr
    start = run(bin_dir / "pg_ctl", "-D", data, "-l", home / "server.log", "-w", "-o",
                f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    assert start.returncode == 0, start.stderr + (home / "server.log").read_text()
    try:
        yield f"postgresql://ssmc@127.0.0.1:{port}/postgres"
    finally:
        run(bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(home, ignore_errors=True)


def _worker(url, records_dir, seed):
    cmd = ssmc_cmd("tune", zoo_dir() / "mamba.yaml", "--target", "sm_90", "--trials", TRIALS,
                   "--storage", url, "--study", "fleet", "--resume", "--seed", seed,
                   "--heartbeat", 1, "--no-progress")
    # A Triton cache of its own, empty (as test_resume's workers): with the builds of earlier
    # tests cached, a trial takes milliseconds and the one seen running can finish before the
    # kill lands (seen in CI: no orphan left to check)
    env = dict(ssmc_env(records_dir), TRITON_CACHE_DIR=tempfile.mkdtemp(prefix="ssmc-triton-"))
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_workers_one_killed_mid_trial(postgres, records_dir):
    a, b = _worker(postgres, records_dir, 1), _worker(postgres, records_dir, 2)
    try:
        # both at work, then a dies in the middle of one of its trials
        ts = wait_until(postgres, lambda ts: running(ts, b.pid) and running(ts, a.pid), a)
        a.kill()
        a.communicate(timeout=30)
        ts = wait_until(postgres, lambda ts: True, None)
        # a's trial cut short: still RUNNING, or already failed by b, which reaps a dead local
        # worker's trials between two of its own (in CI it did so before this read)
        (orphan,) = [t for t in ts if t.state in (TrialState.RUNNING, TrialState.FAIL)
                     and str(t.user_attrs.get("worker", "")).endswith(f":{a.pid}")]
        done_at_kill = {t.number for t in finished(ts)}
        out, err = b.communicate(timeout=180)
        assert b.returncode == 0, err[-3000:]
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
    ts = wait_until(postgres, lambda ts: True, None)
    by_number = {t.number: t for t in ts}
    assert len({t.number for t in ts}) == len(ts)
    # the compiler's default was queued by the worker that created the study, once at most
    # (not at all when the other worker's first sample happened to be the default already)
    queued = [t for t in ts if "fixed_params" in t.system_attrs and "failed_trial" not in t.system_attrs]
    assert len(queued) <= 1
    assert done_at_kill <= {t.number for t in finished(ts)}  # nothing finished was lost
    assert not running(ts)
    # the orphan: failed (reaped by the survivor or by the heartbeat), retried exactly once,
    # by the survivor
    assert by_number[orphan.number].state == TrialState.FAIL
    (retry,) = retries_of(ts, orphan.number)
    assert retry.state.is_finished() and orphan.params.items() <= retry.params.items()
    assert retry.user_attrs["worker"].endswith(f":{b.pid}")
    assert len(finished(ts)) == TRIALS
    # one record for the study's key, written whole
    (path,) = (records_dir / "sm_90").glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["study"].startswith("fleet/") and rec["source"] == "model"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
