"""The TVM 2-D SSM kernels (Chimera; ssmc.codegen.tvm.ssm2d) against the oracle
ssmc.semantics.ssm2d.ssm2d_ref, and `ssmc.compile` of ir/chimera.yaml running them.

Kernels are specialised on (d, N, the forms of B/C and dt, D, direction, loop order) and
symbolic in b, T and V: each distinct signature below is one build (about two seconds, then
the on-disk cache), and the grid sizes vary freely within a build.
"""

import pytest
import torch

pytest.importorskip("tvm")

import ssmc  # noqa: E402
from ssmc.codegen.tvm.ssm2d import ssm2d  # noqa: E402
from ssmc.codegen.tvm.ssm2d_tir import Ssm2dConfig  # noqa: E402
from ssmc.paths import zoo_dir  # noqa: E402
from ssmc.semantics.model import build_reference  # noqa: E402
from ssmc.semantics.ssm2d import ssm2d_ref  # noqa: E402

from .kernelutil import ssm2d_operands  # noqa: E402

WAVEFRONT, ROWS = Ssm2dConfig(order="wavefront"), Ssm2dConfig(order="rows")


def make(b, T, V, d, N, bc=("d",) * 4, dt=("d", "d"), seed=0, dtype=torch.float32):
    """Random operands without D (kernelutil.ssm2d_operands: bc / dt give each one's form)."""
    return tuple(ssm2d_operands(b, T, V, d, N, bc, dt, seed=seed, dtype=dtype)[:11])


def check(args, tol, D=None, bidirectional=False, config=WAVEFRONT, dtype=torch.float32):
    y = ssm2d(*args, D=D, bidirectional=bidirectional, config=config)
    ref = ssm2d_ref(*args, D=D, bidirectional=bidirectional)
    assert y.dtype == ref.dtype == args[0].dtype and y.shape == ref.shape
    torch.testing.assert_close(y.float(), ref.float(), **tol[dtype])


@pytest.mark.parametrize("config", [WAVEFRONT, ROWS], ids=["wavefront", "rows"])
@pytest.mark.parametrize("T,V", [(7, 5), (1, 7), (7, 1), (1, 1), (3, 9)])
def test_time_invariant_bidirectional(tol, config, T, V):
    # d = 12: one 8-channel block and a 4-channel tail task
    args = make(2, T, V, 12, 4, seed=T * 10 + V)
    check(args, tol, D=torch.randn(12), bidirectional=True, config=config)


@pytest.mark.parametrize("config", [WAVEFRONT, ROWS], ids=["wavefront", "rows"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("T,V", [(7, 7), (1, 6), (5, 1)])
def test_selective(tol, config, bidirectional, T, V):
    """Chimera's selective form: B/C (b, T, V, N) shared by the channels, dt per cell."""
    args = make(3, T, V, 5, 3, bc=("cell",) * 4, dt=("cell", "cell"), seed=T + V)
    check(args, tol, D=torch.randn(5), bidirectional=bidirectional, config=config)


def test_mixed_operand_forms(tol):
    """Every form at once: B1 per channel and cell, B2/C2 (d, N), C1 shared; dt_t per cell,
    dt_v per channel; no D."""
    args = make(2, 6, 4, 8, 2, bc=("full", "d", "cell", "d"), dt=("cell", "d"))
    check(args, tol)
    check(args, tol, bidirectional=True, config=ROWS)


def test_strided_views_of_projection_outputs(tol):
    """B1..C2 as views into one (b, T, V, 4N) projection and dt_t/dt_v into one (b, T, V, 2d)
    (what the executor passes): read in place, same values as contiguous copies."""
    b, T, V, d, N = 2, 5, 3, 8, 4
    x, A1, A2, A3, A4, *_ = make(b, T, V, d, N)
    bc = torch.randn(b, T, V, 4 * N)
    dt = torch.rand(b, T, V, 2 * d) + 0.01
    views = (*bc.split(N, dim=-1), *dt.chunk(2, dim=-1))
    assert not views[1].is_contiguous() and not views[5].is_contiguous()
    args = (x, A1, A2, A3, A4, *views)
    check(args, tol, D=torch.randn(d), bidirectional=True)
    y = ssm2d(*args)
    torch.testing.assert_close(y, ssm2d(*(a.contiguous() for a in args)), rtol=0, atol=0)


@pytest.mark.parametrize("dt", [("cell", "cell"), ("cell", "d"), ("d", "d")])
def test_dt_softplus(tol, dt):
    """dt_softplus=True: the steps are softplus of the arguments (in the kernel per cell)."""
    import torch.nn.functional as F

    x, A1, A2, A3, A4, B1, B2, C1, C2, dtt, dtv = make(2, 5, 4, 8, 3, bc=("cell",) * 4, dt=dt)
    raw_t, raw_v = 4 * dtt - 3, 4 * dtv - 3  # both signs
    y = ssm2d(x, A1, A2, A3, A4, B1, B2, C1, C2, raw_t, raw_v, bidirectional=True,
              dt_softplus=True)
    ref = ssm2d_ref(x, A1, A2, A3, A4, B1, B2, C1, C2, F.softplus(raw_t), F.softplus(raw_v),
                    bidirectional=True)
    torch.testing.assert_close(y, ref, **tol[torch.float32])


def test_zero_coupling_is_two_1d_scans(tol):
    """A2 = A3 = 0: h1 only sees t, h2 only v (the 'axis' decomposition's premise)."""
    x, A1, A2, A3, A4, B1, B2, C1, C2, dtt, dtv = make(1, 5, 4, 8, 2)
    z = torch.zeros_like(A2)
    y = ssm2d(x, A1, z, z, A4, B1, B2, C1, z, dtt, dtv)  # C2 = 0: h1 alone
    ref = ssm2d_ref(x, A1, z, z, A4, B1, B2, C1, z, dtt, dtv)
    torch.testing.assert_close(y, ref, **tol[torch.float32])
    # column v is then an independent 1-D scan along t
    y0 = ssm2d(x[:, :, :1], A1, z, z, A4, B1, B2, C1, z, dtt, dtv)
    torch.testing.assert_close(y[:, :, :1], y0, **tol[torch.float32])


def test_chimera_size_state16(tol):
    args = make(1, 9, 6, 16, 16, bc=("cell",) * 4, dt=("cell", "cell"))
    check(args, tol, D=torch.ones(16), bidirectional=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_computed_in_fp32(tol, dtype):
    args = make(2, 4, 3, 5, 3, bc=("cell",) * 4, dt=("cell", "cell"), dtype=dtype)
    check(args, tol, D=torch.randn(5), bidirectional=True, dtype=dtype)


def test_empty_grid():
    args = make(2, 0, 3, 4, 2)
    assert ssm2d(*args).shape == (2, 0, 3, 4)


@pytest.mark.parametrize("change,name", [
    (dict(x=torch.randn(2, 3, 4)), "x"),
    (dict(x=torch.randn(1, 3, 4, 5, dtype=torch.float64)), "x"),
    (dict(A1=torch.randn(5)), "A1"),
    (dict(A3=-torch.rand(5, 3)), "A3"),
    (dict(A4=torch.zeros(5, 2)), "A4"),
    (dict(B1=torch.randn(1, 3, 4, 3)), "B1"),
    (dict(C2=torch.randn(5, 2, 1)), "C2"),
    (dict(dt_t=torch.rand(4)), "dt_t"),
    (dict(dt_v=torch.rand(1, 3, 4, 4)), "dt_v"),
    (dict(D=torch.randn(4)), "D"),
    (dict(bidirectional=1), "bidirectional"),
    (dict(dt_softplus=None), "dt_softplus"),
    (dict(config={"order": "rows"}), "config"),
])
def test_bad_arguments_name_the_argument(change, name):
    x, A1, A2, A3, A4, B1, B2, C1, C2, dtt, dtv = make(1, 3, 4, 5, 2)
    kw = dict(x=x, A1=A1, A2=A2, A3=A3, A4=A4, B1=B1, B2=B2, C1=C1, C2=C2, dt_t=dtt,
              dt_v=dtv, D=torch.randn(5), bidirectional=False)
    kw.update(change)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        ssm2d(**kw)


def test_config_rejects_unknown_order():
    with pytest.raises(ValueError, match="order"):
        Ssm2dConfig(order="diagonal")


# ------------------------------------------------------------------- ssmc.compile(chimera)
@pytest.fixture(scope="module")
def chimera():
    torch.manual_seed(3)
    model = ssmc.compile(zoo_dir() / "chimera.yaml", "cpu", dims={"variates": 8},
                         seqlen=16).eval()
    ref = build_reference(model.source_graph).eval()
    ref.load_state_dict(model.state_dict())
    return model, ref


def test_chimera_summary_names_the_kernel(chimera):
    """On the CPU the cost model picks the rows order ('sequential'): the TVM kernels vectorise
    over channels in either order, and the wavefront's diagonal states outgrow the caches
    (costmodel.ssm2d's measurements)."""
    model, _ = chimera
    assert model.kernels == {"ssm2d": "tvm:ssm2d/sequential"}
    assert "tvm:ssm2d/sequential" in model.summary()


@pytest.mark.parametrize("T,V", [(16, 8), (7, 1), (1, 7)])
def test_chimera_matches_reference(chimera, tol, T, V):
    model, ref = chimera
    calls = []
    node = next(n for _, n, _ in model.graph.walk() if n.OP == "ssm2d")
    executor, fn, config = node.meta["run"]
    node.meta["run"] = (executor, lambda *a, **k: calls.append(1) or fn(*a, **k), config)
    try:
        x = torch.randn(2, T, V, 1)
        with torch.no_grad():
            y, r = model(x), ref(x)
    finally:
        node.meta["run"] = (executor, fn, config)
    assert calls == [1]  # the kernel ran, not the reference
    torch.testing.assert_close(y, r, **tol[torch.float32])


def test_chimera_rows_order_for_the_sequential_algorithm(chimera, tol):
    """algorithm 'sequential' runs the same kernel in row order."""
    from ssmc.codegen.ssm2d_recurrence import ssm2d_config, ssm2d_operands

    model, ref = chimera
    assert ssm2d_config("tvm", "sequential", {}).order == "rows"
    assert ssm2d_config("tvm", "wavefront", {"channel_block": 16}).order == "wavefront"
    mod = model.ssm2d
    x = torch.randn(1, 5, 3, 16)
    with torch.no_grad():
        args, softplus = ssm2d_operands(mod, x)
        assert softplus  # selective: the kernel applies softplus to the dt_proj output
        y = ssm2d(*args, D=mod.D, bidirectional=True, dt_softplus=softplus, config=ROWS)
        r = mod(x)
    torch.testing.assert_close(y, r, **tol[torch.float32])


def test_chimera_gradients(chimera):
    """Training runs the adjoint kernel (test_tvm_ssm2d_bwd checks its values)."""
    model, _ = chimera
    x = torch.randn(1, 4, 3, 1)
    model(x).sum().backward()
    assert model.ssm2d.A2.grad is not None and model.ssm2d.x_proj.weight.grad is not None
    model.zero_grad(set_to_none=True)
