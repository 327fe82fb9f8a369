"""Ctrl-C, SIGKILL and --resume: a study survives its tuning process.  Model mode (sm_90 is not
on this machine) keeps the trials short: each is a real Triton AOT build for sm_90 priced by
the cost model."""

import json
import signal
import subprocess
import tempfile

from optuna.trial import TrialState

from ssmc.paths import zoo_dir

from .conftest import ROOT, ssmc_cmd, ssmc_env
from .studyutil import finished, retries_of, running, wait_until

TRIALS = 6


def _tune(url, records_dir, *extra):
    cmd = ssmc_cmd("tune", zoo_dir() / "mamba.yaml", "--target", "sm_90", "--trials", TRIALS,
                   "--storage", url, "--heartbeat", 1, "--no-progress", *extra)
    # A Triton cache of its own, empty: with the builds of earlier tests cached, the trials
    # take milliseconds and the study can end before the signal this test sends reaches it.
    env = dict(ssmc_env(records_dir), TRITON_CACHE_DIR=tempfile.mkdtemp(prefix="ssmc-triton-"))
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_ctrl_c_then_sigkill_then_resume_loses_no_trial(tmp_path, records_dir):
    url = f"sqlite:///{tmp_path / 'studies.sqlite3'}"

    # 1. Ctrl-C mid-trial: a clean stop, the running trial recorded as failed, not left RUNNING
    proc = _tune(url, records_dir)
    wait_until(url, lambda ts: len(finished(ts)) >= 1 and running(ts), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    # 130, or death by SIGINT: both read as 130 to the calling shell.  CPython 3.11 under
    # `python -m` ends by SIGINT, whatever sys.exit said, once a KeyboardInterrupt passed
    # through a nested eval() (Triton's namedtuple() inside the interrupted compile), caught
    # or not.
    assert proc.returncode in (130, -signal.SIGINT), err
    assert "interrupted" in err and "--resume" in err
    ts = wait_until(url, lambda ts: True, None)
    assert not running(ts)
    interrupted = [t for t in ts if t.user_attrs.get("interrupted")]
    assert all(t.state == TrialState.FAIL for t in interrupted)

    # 2. resumed, then killed outright mid-trial: the trial stays RUNNING, its heartbeat stops
    proc = _tune(url, records_dir, "--resume")
    n0 = len(finished(ts))
    ts = wait_until(url, lambda ts: len(finished(ts)) >= n0 + 1 and running(ts), proc)
    proc.kill()
    proc.communicate(timeout=30)
    ts = wait_until(url, lambda ts: True, None)
    done_before = {t.number: t.value for t in ts if t.state == TrialState.COMPLETE}
    (killed,) = running(ts)

    # 3. resumed to the end
    proc = _tune(url, records_dir, "--resume")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    ts = wait_until(url, lambda ts: True, None)
    by_number = {t.number: t for t in ts}
    # no completed trial lost, none re-run
    assert all(by_number[n].state == TrialState.COMPLETE and by_number[n].value == v
               for n, v in done_before.items())
    assert len(finished(ts)) == TRIALS and not running(ts)
    # the killed trial: failed by the heartbeat and run again, once
    assert by_number[killed.number].state == TrialState.FAIL
    (retry,) = retries_of(ts, killed.number)
    assert retry.state.is_finished() and killed.params.items() <= retry.params.items()
    for t in interrupted:  # and a Ctrl-C'd trial is run again by --resume
        (again,) = retries_of(ts, t.number)
        assert t.params.items() <= again.params.items()

    # model mode: the record says so
    (path,) = (records_dir / "sm_90").glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["source"] == "model" and rec["target"] == "sm_90"
    assert "cost model" in out


def test_a_ctrl_c_dropped_by_a_finalizer_still_stops_the_loop():
    """CPython prints and drops a KeyboardInterrupt raised while a finalizer runs (a GC
    callback): the handler has asked the loop to stop before it raised, so the next step
    stops anyway instead of the run going on to exit 0."""
    import pytest

    from ssmc.tune.study import CtrlC

    ctrl_c = CtrlC()
    with ctrl_c.work():  # a trial's kernel work: Ctrl-C interrupts at once
        try:
            ctrl_c._handle(signal.SIGINT, None)
        except KeyboardInterrupt:
            pass  # what a finalizer does with it
    assert ctrl_c.requested
    with pytest.raises(KeyboardInterrupt), ctrl_c.work():  # the next trial does not start
        pass
