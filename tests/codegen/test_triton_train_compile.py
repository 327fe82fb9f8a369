"""torch.compile(fullgraph=True) of zoo models compiled for a GPU target whose SSM node has a
Triton forward + backward pair as ops (common.library_op: triton_ops on a device, opaque
custom_ops under the interpreter): dense (lcde), PLRNN (convssm), the 2-D SSM (chimera) and
the S4D Vandermonde kernel (s4d_complex).
Training and inference trace without a graph break, run the Triton kernels (through the
interpreter on CPU tensors; on a device in the gpu tier) and match the eager reference model.
Then, with no GPU, what a device's torch.compile sees of every Triton op."""

import pytest
import torch

from ssmc.codegen.triton.common import interpreting, record_launches

from .kernelutil import assert_param_grads_close, compiled_with_reference

TIERS = ["interpreter", pytest.param("device", marks=pytest.mark.gpu)]

CASES = {
    "lcde": (dict(seed=3, seqlen=64, batch=2), (2, 9, 8),
             ("_dense_scan_kernel", "_dense_scan_bwd_kernel")),
    "convssm": (dict(seqlen=64, batch=2), (2, 9, 3), ("_plrnn_kernel", "_plrnn_bwd_kernel")),
    "chimera": (dict(dims={"variates": 3}, seqlen=3, batch=1), (1, 3, 3, 1),
                ("_ssm2d_wavefront_kernel", "_ssm2d_wavefront_bwd_kernel")),
    "s4d_complex": (dict(dims={"d_model": 8, "d_state": 8}, seqlen=64), (2, 7, 1),
                    ("_s4d_vandermonde_kernel", "_s4d_vandermonde_bwd_kernel")),
}


def _names(kernels) -> set:
    return {getattr(k, "fn", k).__name__ for k in kernels}


@pytest.fixture(params=TIERS)
def dev(request):
    if (request.param == "device") == interpreting():
        pytest.skip(f"the {request.param} run")
    if request.param == "device" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA/ROCm device")
    return "cpu" if request.param == "interpreter" else "cuda"


@pytest.fixture(params=list(CASES))
def case(request, dev):
    kw, shape, kernels = CASES[request.param]
    model, ref = compiled_with_reference(request.param, "sm_90", **kw)
    torch._dynamo.reset()
    yield model.to(dev), ref.to(dev), torch.randn(*shape, device=dev), kernels
    torch._dynamo.reset()


def test_trains_under_torch_compile_fullgraph(case, tol):
    """A training step through torch.compile runs the forward and the backward kernel, and
    the output and every gradient (input and parameters) match the eager reference's."""
    model, ref, x, (fwd, bwd) = case
    model.train()
    ref.train()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    with record_launches() as seen:
        y = compiled(xs[0])
        y.square().mean().backward()
    assert {fwd, bwd} <= _names(seen), _names(seen)
    y_ref = ref(xs[1])
    y_ref.square().mean().backward()
    torch.testing.assert_close(y, y_ref, **tol[torch.float32])
    torch.testing.assert_close(xs[0].grad, xs[1].grad, **tol[torch.float32])
    assert_param_grads_close(model, ref, tol)


def test_inference_under_torch_compile_runs_the_forward_kernel(case, tol):
    """No gradients under torch.compile: the forward op alone (no backward launch)."""
    model, ref, x, (fwd, bwd) = case
    model.eval()
    ref.eval()
    with torch.no_grad(), record_launches() as seen:
        y = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    assert fwd in _names(seen) and bwd not in _names(seen), _names(seen)
    with torch.no_grad():
        torch.testing.assert_close(y, ref(x), **tol[torch.float32])


# What torch.compile sees on a device, checked without one: in a process without the
# interpreter the ops are triton_ops, and AOT autograd's functionalisation (what inductor is
# handed) traces into them.  Fake meta tensors stand in for CUDA ones (views of fake CUDA
# tensors need a CUDA build); the graph is not run, only looked at: each op must become its
# Triton kernels (an opaque op would show none).
_DEVICE_TRACE = r"""
import logging, os
os.environ.pop("TRITON_INTERPRET", None)
logging.disable(logging.WARNING)  # mutation analysis needs a GPU driver: it warns, then assumes
import torch
from functorch.compile import aot_function, make_boxed_func
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
from torch._subclasses.fake_tensor import FakeTensorMode
from ssmc.codegen.triton.dense import backward as dense
from ssmc.codegen.triton.plrnn import backward as plrnn
from ssmc.codegen.triton.selective_scan import backward as sbw
from ssmc.codegen.triton.ssd import backward as dbw
from ssmc.codegen.triton.ssm2d import backward as ssm2d
from ssmc.runtime import library, vandermonde  # noqa: F401  (defines the s4d ops)

mode = FakeTensorMode()
with mode:
    e = lambda *s, dtype=torch.float32: torch.empty(*s, device="meta", dtype=dtype)
    ssm2d_in = (e(1, 3, 4, 2), *[e(2, 2)] * 8, e(2), e(2), e(2))
    cases = {
        "plrnn_triton": (plrnn.triton_op(), (e(2, 7, 3), e(4), e(4, 4), e(4), e(4, 3), None, "")),
        "plrnn_bwd_triton": (plrnn.triton_bwd_op(), (e(2, 7, 4), e(2, 7, 4), e(2, 7, 3), e(4),
                                                     e(4, 4), e(4, 3), None, 0, 0)),
        "dense_scan_triton": (dense.triton_op(), (e(2, 7, 8), e(2, 7, 3), e(3, 2, 4, 4),
                                                  e(2, 4, 4), None, e(2, 8), "")),
        "dense_scan_bwd_triton": (dense.triton_bwd_op(), (e(2, 7, 8), e(2, 7, 8), e(2, 7, 3),
                                                          e(3, 2, 4, 4), e(2, 4, 4), None,
                                                          e(2, 8), 1, 0)),
        "ssm2d_wavefront_triton": (ssm2d.triton_op(), (*ssm2d_in, True, False, "", "")),
        "ssm2d_wavefront_bwd_triton": (ssm2d.triton_bwd_op(), (e(1, 3, 4, 2), *ssm2d_in, True,
                                                               False, "")),
        "selective_scan_triton": (library.register_triton_ops()["selective_scan"],
                                  (e(2, 9, 4), e(2, 9, 4), e(4, 3), e(2, 9, 1, 3), e(2, 9, 1, 3),
                                   e(4), e(2, 9, 4), e(4), e(2, 4, 3), True, False, "bld", True,
                                   0, "triton", "", "")),
        "ssd_triton": (library.register_triton_ops()["ssd"],
                       (e(2, 10, 2, 3), e(2, 10, 2), e(2), e(2, 10, 1, 4), e(2, 10, 1, 4), e(2),
                        e(2, 10, 2, 3), e(2), e(2, 2, 3, 4), None, 16, True, 0.0, float("inf"),
                        True, 0, "triton", "")),
        "selective_scan_bwd_triton": (
            sbw.triton_bwd_op(),
            (e(2, 9, 4), e(2, 4, 3), e(2, 9, 4), e(2, 9, 4), e(4, 3), e(2, 9, 1, 3),
             e(2, 9, 1, 3), e(4), e(2, 9, 4), e(4), e(2, 4, 3), None, True, "bld", 0, "")),
        "ssd_bwd_triton": (
            dbw.triton_bwd_op(),
            (e(2, 10, 2, 3), e(2, 2, 3, 4), e(2, 10, 2, 3), e(2, 10, 2), e(2), e(2, 10, 1, 4),
             e(2, 10, 1, 4), e(2), e(2, 10, 2, 3), e(2), e(2, 2, 3, 4), None, None, True, 0.0,
             float("inf"), 0, "")),
        "s4d_vandermonde_triton": (
            torch.ops.ssmc.s4d_vandermonde_triton,
            (e(4, 3, dtype=torch.complex64), e(4, 3, dtype=torch.complex64),
             e(4, 3, dtype=torch.complex64), 10, True)),
        "s4d_vandermonde_bwd_triton": (
            torch.ops.ssmc.s4d_vandermonde_bwd_triton, (e(4, 3, dtype=torch.complex64), e(4, 10))),
    }


def traced_kernels(op, args):
    graphs = []

    def capture(gm, _):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    try:
        with mode:
            aot_function(lambda *a: op(*a), fw_compiler=capture)(*args)
    except RuntimeError:
        if not graphs:  # else running it failed (meta tensors), after the trace
            raise
    kernels = [kernel_side_table.get_kernel(n.kwargs["kernel_idx"])
               for n in graphs[0].graph.nodes if "triton_kernel_wrapper" in str(n.target)]
    return sorted({getattr(k, "fn", k).__name__ for k in kernels})


for name, (op, args) in cases.items():
    print(name, ",".join(traced_kernels(op, args)))
"""


def test_device_ops_are_triton_ops_that_trace_to_their_kernels(tmp_path):
    """Off the interpreter (a GPU host) every Triton op is a triton_op: functionalisation
    (what torch.compile hands inductor) sees its kernels, traced here with no GPU."""
    import os
    import subprocess
    import sys

    script = tmp_path / "trace.py"
    script.write_text(_DEVICE_TRACE)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = {ln.split()[0]: ln.split()[1:] for ln in run.stdout.splitlines() if ln.strip()}
    want = {"plrnn_triton": "_plrnn_kernel", "plrnn_bwd_triton": "_plrnn_bwd_kernel",
            "dense_scan_triton": "_dense_scan_kernel",
            "dense_scan_bwd_triton": "_dense_scan_bwd_kernel",
            "ssm2d_wavefront_triton": "_ssm2d_wavefront_kernel",
            "ssm2d_wavefront_bwd_triton": "_ssm2d_wavefront_bwd_kernel",
            "selective_scan_triton": "_selective_scan_recurrent_kernel",
            "ssd_triton": "_ssd_chunk_scan_kernel,_ssd_chunk_state_kernel,_ssd_dt_kernel,"
                          "_ssd_state_passing_kernel",
            # SSD's backward is the selective scan's kernel in its per-head mode
            "selective_scan_bwd_triton": "_selective_scan_bwd_kernel",
            "ssd_bwd_triton": "_selective_scan_bwd_kernel",
            "s4d_vandermonde_triton": "_s4d_vandermonde_kernel",
            "s4d_vandermonde_bwd_triton": "_s4d_vandermonde_bwd_kernel"}
    assert got == {name: [kernels] for name, kernels in want.items()}, run.stdout
