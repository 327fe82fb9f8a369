"""Running one implementation in a child process, so that its compile time can be capped.

torch.compile cannot be interrupted from inside the process that runs it, and compiling some
graphs takes minutes (a reference model's Python loop over L unrolls into L graph nodes).  The
child rebuilds the subject from its Recipe and answers one request per sequence length; the
parent waits for the first call (the compilation) at most `compile_timeout_s` and kills the child
when it is over.  The child stays alive between lengths, so torch.compile's caches carry over
(its automatic dynamic shapes then compile one graph for the later lengths).

Protocol, one JSON object per line: the parent writes the job, then {"seqlen": L} per length;
the child answers {"event": "compiled", "first_call_s": ...} after the first call and
{"event": "timed", "timing": {...}} after the timed calls, or {"event": "unavailable" | "error",
"message": ...}.  Only protocol lines go to the real stdout: the child points fd 1 at its stderr
so that compiler chatter cannot corrupt them; stderr goes to a log file the parent reads back on
errors.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict

from ssmc.bench.subject import Recipe, Unavailable
from ssmc.bench.timing import Policy, measure

TIMED_STAGE_MIN_S = 120.0


class Timeout(Exception):
    pass


class IsolatedRunner:
    """The parent side: one child process per (subject, implementation), started on first use."""

    def __init__(self, recipe: Recipe, impl: str, policy: Policy, compile_timeout_s: float,
                 torch_threads: int | None = None):
        self.job = {"recipe": recipe.as_dict(), "impl": impl, "policy": asdict(policy),
                    "torch_threads": torch_threads}
        self.compile_timeout_s = compile_timeout_s
        self.timed_timeout_s = max(TIMED_STAGE_MIN_S, 6 * policy.budget_s)
        self.proc = None
        self.log = None
        self.lines: queue.Queue = queue.Queue()

    def _start(self):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="ssmc-bench-", suffix=".log",
                                               delete=False)
        self.proc = subprocess.Popen([sys.executable, "-m", "ssmc.bench.isolate"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, bufsize=1)
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()
        self._send(self.job)

    def _pump(self, stream):
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)  # the child exited

    def _send(self, obj):
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def _receive(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout()
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                raise Timeout() from None
            if line is None:
                return {"event": "error", "message": f"the child process exited "
                                                     f"({self.proc.wait()}): {self.log_tail()}"}
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue  # not a protocol line

    def log_tail(self, n: int = 300) -> str:
        if self.log is None:
            return ""
        self.log.flush()
        with open(self.log.name) as f:
            text = f.read()
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        return (lines[-1] if lines else "")[-n:]

    def run(self, seqlen: int) -> dict:
        """{"status": "ok", "timing": {...}, "first_call_s": ...} or a status of timeout /
        unavailable / failed with a message."""
        if self.proc is None:
            self._start()
        self._send({"seqlen": seqlen})
        stage, limit = "compile (first call)", self.compile_timeout_s
        try:
            msg = self._receive(limit)
            if msg["event"] != "compiled":
                return self._not_ok(msg)
            first = msg["first_call_s"]
            stage, limit = "timed calls", self.timed_timeout_s
            msg = self._receive(limit)
            if msg["event"] != "timed":
                return self._not_ok(msg)
            return {"status": "ok", "timing": msg["timing"], "first_call_s": first}
        except Timeout:
            self.close()
            return {"status": "timeout",
                    "message": f"{stage} did not finish within {limit:.0f} s (killed)"}

    def _not_ok(self, msg: dict) -> dict:
        status = "skipped" if msg["event"] == "unavailable" else "failed"
        return {"status": status, "message": msg.get("message", str(msg))}

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # only the child this runner started
            self.proc.wait()
        self.proc = None
        if self.log is not None:
            self.log.close()
            try:
                os.unlink(self.log.name)
            except OSError:
                pass
            self.log = None


# ---- the child -------------------------------------------------------------------------------

def _child() -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed to stdout lands in the log

    def say(**obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    job = json.loads(sys.stdin.readline())
    import torch

    if job.get("torch_threads"):
        torch.set_num_threads(job["torch_threads"])
    from ssmc.bench.subject import make_subject

    recipe = Recipe(**job["recipe"])
    policy = Policy(**job["policy"])
    subject = make_subject(recipe)
    impl = next(i for i in subject.impls([job["impl"]]) if i.name == job["impl"])
    for line in sys.stdin:
        seqlen = json.loads(line)["seqlen"]
        call = None
        try:
            call = impl.build(seqlen)
            t0 = time.perf_counter()
            call()
            if subject.sync:
                subject.sync()
            say(event="compiled", first_call_s=time.perf_counter() - t0)
            timing = measure(call, policy, sync=subject.sync)
            say(event="timed", timing=timing.as_dict())
        except Unavailable as e:
            say(event="unavailable", message=str(e))
        except Exception as e:  # reported to the parent as this length's failure
            say(event="error", message=f"{type(e).__name__}: {e}".splitlines()[0][:300])
        del call  # frees this length's inputs before the next
    return 0


if __name__ == "__main__":
    sys.exit(_child())
