"""Test tiers: the default tier runs on a CPU (Triton through its interpreter); `-m gpu` needs a
device.  The interpreter must be chosen before triton is imported, hence here."""

import os

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
# Tuned records a user made on this machine must not change what the tests see: start empty.
os.environ.setdefault("SSMC_RECORDS_DIR", __import__("tempfile").mkdtemp(prefix="ssmc-test-records-"))
if os.environ.get("SSMC_GPU_TESTS") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tests check values, not speed: one intra-op thread avoids OpenMP spin-wait contention with TVM's
# thread pool and with other processes (fp32 gelu/layer_norm were seen 1000x slower under it).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Tolerances per dtype (DESIGN.md: mamba-ssm's own test tolerances).
TOL = {
    torch.float32: dict(rtol=6e-4, atol=2e-3),
    torch.float16: dict(rtol=3e-3, atol=5e-3),
    torch.bfloat16: dict(rtol=3e-2, atol=5e-2),
    torch.complex64: dict(rtol=6e-4, atol=2e-3),
    torch.float64: dict(rtol=1e-7, atol=1e-9),
}


@pytest.fixture
def tol():
    return TOL
