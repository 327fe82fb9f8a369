"""ssmc sets TVM's thread-pool spin count to 0 unless the user chose one (see ssmc/__init__)."""

import os
import subprocess
import sys


def _spin_after_import(env_value):
    env = dict(os.environ)
    env.pop("TVM_THREAD_POOL_SPIN_COUNT", None)
    if env_value is not None:
        env["TVM_THREAD_POOL_SPIN_COUNT"] = env_value
    code = "import ssmc, os; print(os.environ['TVM_THREAD_POOL_SPIN_COUNT'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def test_spin_count_defaults_to_zero():
    assert _spin_after_import(None) == "0"


def test_a_user_spin_count_wins():
    assert _spin_after_import("12345") == "12345"
