"""The Triton 2-D SSM wavefront kernel (ssmc.codegen.triton.ssm2d) against the oracle
ssm2d_ref, through the interpreter (TRITON_INTERPRET=1, set by conftest) on tiny grids: the
interpreter runs each diagonal's tile ops in numpy, ~0.1 s a diagonal.  Its ahead-of-time
compile for sm_90 / gfx942 is in test_triton_aot.py (every registered family)."""

import pytest
import torch

from ssmc.codegen.triton.common import interpreting
from ssmc.codegen.triton.ssm2d import (Ssm2dWavefrontConfig, plan_ssm2d_wavefront,
                                       ssm2d_wavefront)
from ssmc.semantics.ssm2d import ssm2d_ref

from .kernelutil import compiled_with_reference, ssm2d_operands

pytestmark = pytest.mark.skipif(not interpreting() and not torch.cuda.is_available(),
                                reason="needs a GPU or TRITON_INTERPRET=1")
DEV = "cuda" if not interpreting() else "cpu"
SMALL = Ssm2dWavefrontConfig(block_c=4, block_d=2)


def make(b, T, V, d, N, bc="d", dt="d", seed=0, dtype=torch.float32):
    """kernelutil.ssm2d_operands without D, on DEV: one form for B1..C2, one for the steps."""
    args = ssm2d_operands(b, T, V, d, N, (bc,) * 4, (dt, dt), seed, dtype=dtype)[:11]
    return tuple(a.to(DEV) for a in args)


@pytest.mark.parametrize("b,T,V,d,N,bc,dt,bidirectional", [
    (1, 3, 5, 3, 2, "d", "d", True),        # T < V, a 2-channel block and a 1-channel tail
    (2, 5, 2, 2, 3, "cell", "cell", True),  # Chimera's selective form, T > V
    (1, 1, 4, 2, 2, "cell", "cell", False),  # T = 1
    (1, 4, 1, 2, 2, "full", "d", True),     # V = 1, B/C per channel and cell
])
def test_matches_oracle(tol, b, T, V, d, N, bc, dt, bidirectional):
    args = make(b, T, V, d, N, bc, dt, seed=T + V)
    D = torch.randn(d, device=DEV)
    y = ssm2d_wavefront(*args, D=D, bidirectional=bidirectional, config=SMALL)
    ref = ssm2d_ref(*(a.cpu() for a in args), D=D.cpu(), bidirectional=bidirectional)
    assert y.dtype == ref.dtype and y.shape == ref.shape
    torch.testing.assert_close(y.cpu(), ref, **tol[torch.float32])


def test_dt_softplus(tol):
    import torch.nn.functional as F

    x, A1, A2, A3, A4, B1, B2, C1, C2, dtt, dtv = make(1, 3, 3, 2, 2, "cell", "cell")
    raw_t, raw_v = 4 * dtt - 3, 4 * dtv - 3
    y = ssm2d_wavefront(x, A1, A2, A3, A4, B1, B2, C1, C2, raw_t, raw_v, dt_softplus=True,
                        config=SMALL)
    ref = ssm2d_ref(*(a.cpu() for a in (x, A1, A2, A3, A4, B1, B2, C1, C2)),
                    F.softplus(raw_t).cpu(), F.softplus(raw_v).cpu())
    torch.testing.assert_close(y.cpu(), ref, **tol[torch.float32])


def test_half_input(tol):
    args = make(1, 3, 3, 2, 2, "cell", "cell", dtype=torch.float16)
    y = ssm2d_wavefront(*args, bidirectional=True, config=SMALL)
    ref = ssm2d_ref(*(a.cpu() for a in args), bidirectional=True)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.cpu().float(), ref.float(), **tol[torch.float16])


def test_plan_on_meta_tensors():
    """The plan AOT compiles: one launch, (channel blocks, batch, directions) programs, and a
    zeroed slot workspace of V + 1 slots per program."""
    kw = dict(dtype=torch.float16, device="meta")
    b, T, V, d, N = 2, 64, 16, 16, 16
    x = torch.empty(b, T, V, d, **kw)
    p = torch.empty(d, N, device="meta")
    bc = torch.empty(b, T, V, N, **kw)
    dt = torch.empty(b, T, V, d, **kw)
    plan = plan_ssm2d_wavefront(x, p, p, p, p, bc, bc, bc, bc, dt, dt, bidirectional=True,
                                config=Ssm2dWavefrontConfig(block_d=8))
    (launch,) = plan.launches
    assert launch.grid == (2, b, 2)
    assert launch.constexprs == {"BLOCK_C": 16, "BLOCK_D": 8, "BLOCK_N": 16,
                                 "DT_SOFTPLUS": False}
    assert tuple(launch.args["ws_ptr"].shape) == (2 * b * 2, 2, 2, V + 1, 8, 16)
    assert plan.outputs[0].shape == (2, b, T, V, d)


@pytest.mark.parametrize("change,name", [
    (dict(x=torch.randn(2, 3, 4)), "x"),
    (dict(A1=torch.randn(3)), "A1"),
    (dict(A2=torch.randn(4, 2)), "A2"),
    (dict(B1=torch.randn(1, 3, 4, 3)), "B1"),
    (dict(C1=torch.randn(1, 3, 4, 2, 2)), "C1"),
    (dict(dt_t=torch.rand(4)), "dt_t"),
    (dict(dt_v=torch.rand(1, 3, 4, 2)), "dt_v"),
    (dict(D=torch.randn(2)), "D"),
    (dict(bidirectional="yes"), "bidirectional"),
])
def test_bad_arguments_name_the_argument(change, name):
    x, A1, A2, A3, A4, B1, B2, C1, C2, dtt, dtv = make(1, 3, 4, 3, 2)
    kw = dict(x=x, A1=A1, A2=A2, A3=A3, A4=A4, B1=B1, B2=B2, C1=C1, C2=C2, dt_t=dtt, dt_v=dtv)
    kw.update({k: (v.to(DEV) if isinstance(v, torch.Tensor) else v) for k, v in change.items()})
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        plan_ssm2d_wavefront(**kw)


def test_config_knobs_are_powers_of_two():
    with pytest.raises(ValueError, match="block_c"):
        Ssm2dWavefrontConfig(block_c=12)


@pytest.mark.skipif(not interpreting(), reason="the interpreter runs CPU tensors")
def test_compiled_chimera_for_sm90_runs_the_triton_kernel(tol):
    """ssmc.compile for a GPU target picks the wavefront and its executor drives the Triton
    kernel (here through the interpreter, on CPU tensors)."""
    model, ref = compiled_with_reference("chimera", "sm_90", dims={"variates": 3}, seqlen=3,
                                         batch=1)
    model.eval()
    ref.eval()
    assert model.kernels == {"ssm2d": "triton:ssm2d/wavefront"}
    x = torch.randn(1, 3, 3, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), **tol[torch.float32])
