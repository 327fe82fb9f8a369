"""torch-facing decode kernels on the CPU (TVM): the causal conv1d (sequence and one-token step
with the conv state updated in place), the selective-scan step (state updated in place) for
Mamba-1 and Mamba-2, and the channels-last sequence scan that reads strided inputs in place
(Mamba-1, and Mamba-2's SSD with per-head dt / A / D).

These are thin: they check what the kernels assume (fp32, CPU, last axis contiguous), look the
kernel up (memory, then the disk cache of build.py, then a build) and call it.  Inputs whose
last axis is contiguous are passed as they are, strided views included (the kernels' outer
strides are symbolic); anything else is copied first.  The functions that take `state` update
it in place, like mamba-ssm's `selective_state_update` and causal-conv1d's
`causal_conv1d_update`.
"""

from __future__ import annotations

import os

import torch

from ssmc.codegen.tvm import causal_conv_tir as convb
from ssmc.codegen.tvm import decode_layer_tir as layerb
from ssmc.codegen.tvm import gemv_tir as gemvb
from ssmc.codegen.tvm import rmsnorm_tir as normb
from ssmc.codegen.tvm import selective_step_tir as stepb
from ssmc.codegen.tvm.build import CACHE_ENV, DEFAULT_CACHE
from ssmc.codegen.tvm.config import Config, default_config, legalize
from ssmc.codegen.tvm.target import host_target

LOG2E = 1.4426950408889634
_kernels: dict = {}


def _config(step: bool):
    cfg = legalize(default_config("llvm"), "llvm")
    return cfg.replace(threads=1) if step else cfg


# the modules each family is built from (the build cache's key hashes them: editing one of them
# rebuilds that family, editing anything else does not)
SOURCES = {
    "selective_step": ("selective_step_tir.py", "selective_scan_tir.py", "tirmath.py", "config.py"),
    "causal_conv1d_window": ("causal_conv_tir.py", "selective_scan_tir.py", "tirmath.py", "config.py"),
    "rmsnorm": ("rmsnorm_tir.py", "tirmath.py"),
    "gemv": ("gemv_tir.py", "tirmath.py"),
    "mamba2_decode_layer": ("decode_layer_tir.py", "rmsnorm_tir.py", "gemv_tir.py",
                            "causal_conv_tir.py", "selective_step_tir.py",
                            "selective_scan_tir.py", "tirmath.py", "config.py"),
    "mamba1_decode_layer": ("decode_layer_tir.py", "rmsnorm_tir.py", "gemv_tir.py",
                            "causal_conv_tir.py", "selective_step_tir.py",
                            "selective_scan_tir.py", "tirmath.py", "config.py"),
}


def _get(family: str, func_name: str, sig, build, config=True):
    """config: True = the defaults (_config), False = the builder takes none, or a Config (a
    tuned one: ssmc.tune's records reach the conv of a compiled model this way)."""
    key = (family, sig, config, DEFAULT_CACHE.root, os.environ.get(CACHE_ENV))
    kernel = _kernels.get(key)
    if kernel is None:
        step = getattr(sig, "step", False)
        cfg = legalize(config, "llvm") if isinstance(config, Config) else _config(step)
        kernel = DEFAULT_CACHE.get(family, func_name, dict(sig.__dict__), "float32", host_target(),
                                   cfg.as_dict() if config else {},
                                   (lambda: build(sig, cfg)) if config else (lambda: build(sig)),
                                   sources=SOURCES[family])
        _kernels[key] = kernel
    return kernel


def norm_kernel(sig: normb.NormSignature):
    return _get("rmsnorm", normb.FUNC_NAME, sig, normb.build, config=False)


_norms: dict = {}  # (D, eps, groups, gated, parallel, vector_width or 0) -> kernel


def rmsnorm(x, weight, eps: float, z=None, groups: int = 1,
            config: normb.NormConfig | None = None):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last axis (in `groups` slices each
    normalised alone); with z, x * silu(z) is normalised (Mamba-2's gated norm).  fp32; x and
    z may be strided views whose last axis is contiguous.  config: the kernel's schedule (a
    tuned record's; None = the defaults: the host's lanes, rows in parallel).  Returns a new
    fp32 tensor."""
    D = x.shape[-1]
    rows = x.numel() // D if D else 0
    par = rows > 1 and (config is None or config.parallel)
    vw = config.vector_width if config is not None else 0  # 0: the host's lanes
    key = (D, float(eps), groups, z is not None, par, vw)
    kernel = _norms.get(key)
    if kernel is None:
        vw = vw or _config(False).vector_width  # (~10 us: not on every call)
        kernel = norm_kernel(normb.NormSignature(D=D, eps=float(eps), groups=groups,
                                                 gated=z is not None, parallel=par,
                                                 vector_width=vw))
        _norms[key] = kernel
    out = torch.empty(x.shape, dtype=torch.float32)
    if rows == 0:
        return out
    x2 = _f32_view("x", x, x.dim()).reshape(rows, D)
    args = [x2] + ([_f32_view("z", z, z.dim()).reshape(rows, D)] if z is not None else [])
    kernel(*args, _opt(weight), out.view(rows, D))
    return out


def gemv_kernel(sig: gemvb.GemvSignature):
    """The compiled matrix-vector product for `sig` (args: gemvb.arg_names(sig))."""
    return _get("gemv", gemvb.FUNC_NAME, sig, gemvb.build, config=False)


def gemv_signature(weight: torch.Tensor, bias: torch.Tensor | None = None):
    N, K = weight.shape
    return gemvb.GemvSignature(K=K, N=N, has_bias=bias is not None,
                               vector_width=_config(False).vector_width)


def gemv(x, weight, bias=None):
    """nn.Linear of one row on the CPU: x (K,) or (1, K) -> weight @ x (+ bias), (N,) or (1, N)
    fp32; weight (N, K) and bias (N,) as the Linear holds them (contiguous fp32)."""
    if weight.dim() != 2:
        raise ValueError(f"gemv: weight must be 2-D (N, K), got shape {tuple(weight.shape)}")
    N, K = weight.shape
    if x.numel() != K or (x.dim() == 2 and x.shape[0] != 1) or x.dim() > 2:
        raise ValueError(f"gemv: x must be ({K},) or (1, {K}) for weight {tuple(weight.shape)}, "
                         f"got shape {tuple(x.shape)}")
    if bias is not None and tuple(bias.shape) != (N,):
        raise ValueError(f"gemv: bias must be ({N},), got shape {tuple(bias.shape)}")
    out = torch.empty(x.shape[:-1] + (N,), dtype=torch.float32)
    kernel = gemv_kernel(gemv_signature(weight, bias))
    kernel(_compact("x", x).view(K), _compact("weight", weight),
           *([_compact("bias", bias)] if bias is not None else []), out.view(N))
    return out


def mamba1_layer_kernel(sig: layerb.Mamba1LayerSignature):
    """One whole Mamba-1 layer of a one-token decode step (args: layerb.arg_names(sig)): the
    norm, the projections, the conv and state updates (both states in place) and the
    residual, in one call."""
    return _get("mamba1_decode_layer", layerb.FUNC_NAME, sig, layerb.build)


def mamba2_layer_kernel(sig: layerb.Mamba2LayerSignature):
    """The same for a Mamba-2 layer (args: layerb.arg_names2(sig))."""
    return _get("mamba2_decode_layer", layerb.FUNC_NAME2, sig, layerb.build2)


def conv_kernel(sig: convb.ConvSignature, config: Config | None = None):
    """The compiled causal-conv kernel for `sig` (args: convb.arg_names(sig)); config: a tuned
    Config (channel_block, vector_width, threads, exp_degree), None = the defaults."""
    return _get("causal_conv1d_window", convb.FUNC_NAME, sig, convb.build,
                config if config is not None else True)


def step_kernel(sig: stepb.StepSignature):
    """The compiled selective step / per-head scan for `sig` (args: stepb.arg_names(sig))."""
    return _get("selective_step", sig.func_name(), sig, stepb.build)


def _f32_view(name: str, t: torch.Tensor | None, dims: int):
    """t as fp32 with a contiguous last axis (a view when it already is)."""
    if t is None:
        return None
    if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
        raise ValueError(f"{name}: expected a CPU tensor, got "
                         f"{type(t).__name__ if not isinstance(t, torch.Tensor) else t.device}")
    if t.dim() != dims:
        raise ValueError(f"{name}: expected {dims} dimensions, got shape {tuple(t.shape)}")
    t = t.detach()
    if t.dtype != torch.float32:
        t = t.float()
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        t = t.contiguous()
    return t


def _opt(t):
    """An optional (d,) / (h,) parameter: detached fp32 contiguous."""
    return None if t is None else t.detach().float().contiguous()


def _compact(name, t):
    t = _f32_view(name, t, t.dim())
    return t if t.is_contiguous() else t.contiguous()


# ----------------------------------------------------------------------------------- conv1d
def causal_conv1d(x, weight, bias=None, activation: str | None = "silu", initial_state=None,
                  config: Config | None = None):
    """Depthwise causal conv over channels-last x (b, L, c): weight (c, k) or (c, 1, k), bias
    (c,), initial_state (b, c, k): the last k inputs before x (the decoder's conv state), read
    only.  config: the kernel's schedule (a tuned record's; None = the defaults).  Returns
    (b, L, c) fp32."""
    x = _f32_view("x", x, 3)
    b, L, c = x.shape
    w = _weight(weight, c)
    k = w.shape[-1]
    sig = convb.ConvSignature(c=c, k=k, has_bias=bias is not None,
                              activation=activation or "identity", step=False,
                              has_initial_state=initial_state is not None)
    out = torch.empty(b, L, c, dtype=torch.float32)
    if b == 0 or L == 0:
        return out
    args = [x, w]
    if bias is not None:
        args.append(_compact("bias", bias))
    if initial_state is not None:
        if tuple(initial_state.shape) != (b, c, k):
            raise ValueError(f"initial_state: expected ({b}, {c}, {k}), got {tuple(initial_state.shape)}")
        args.append(_compact("initial_state", initial_state))
    args.append(out)
    conv_kernel(sig, config)(*args)
    return out


def _weight(weight, c):
    """nn.Conv1d's depthwise weight (c, 1, k) (or (c, k)) as the kernels take it."""
    if weight.dim() == 2:
        weight = weight[:, None]
    if weight.dim() != 3 or weight.shape[0] != c or weight.shape[1] != 1:
        raise ValueError(f"weight: expected ({c}, 1, k) or ({c}, k), got {tuple(weight.shape)}")
    return _compact("weight", weight)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation: str | None = "silu"):
    """One token: x (b, c) (or (b, 1, c)); conv_state (b, c, k) fp32 contiguous, shifted and
    appended in place; returns act(bias + <w, new state>) as (b, c) fp32."""
    if x.dim() == 3:
        x = x[:, 0]
    b, c = x.shape
    k = conv_state.shape[-1]
    fast = _conv_steps.get((c, k, bias is not None, activation))
    if (fast is not None and x.dtype is torch.float32 and x.stride(-1) == 1
            and conv_state.dtype is torch.float32 and conv_state.is_contiguous()
            and weight.dtype is torch.float32 and weight.dim() == 3 and weight.is_contiguous()
            and (bias is None or bias.dtype is torch.float32)):
        out = torch.empty(b, c, dtype=torch.float32)  # the hot path of decoding: no copies
        if bias is None:
            fast(x, weight, conv_state, out)
        else:
            fast(x, weight, bias, conv_state, out)
        return out
    x = _f32_view("x", x, 2)
    w = _weight(weight, c)
    _check_state("conv_state", conv_state, (b, c, k))
    if w.shape[-1] != k:
        raise ValueError(f"weight: kernel width {w.shape[-1]} does not match conv_state's {k}")
    sig = convb.ConvSignature(c=c, k=k, has_bias=bias is not None,
                              activation=activation or "identity", step=True)
    kernel = conv_kernel(sig)
    _conv_steps[(c, k, bias is not None, activation)] = kernel
    out = torch.empty(b, c, dtype=torch.float32)
    args = [x, w] + ([_opt(bias)] if bias is not None else []) + [conv_state, out]
    kernel(*args)
    return out


_conv_steps: dict = {}  # (c, k, has_bias, activation) -> kernel: the decode hot path
_steps: dict = {}       # StepSignature fields -> kernel


def _check_state(name, s, shape):
    if not isinstance(s, torch.Tensor) or s.dtype != torch.float32 or not s.is_contiguous() \
            or s.device.type != "cpu" or tuple(s.shape) != tuple(shape):
        got = (f"shape {tuple(s.shape)} {s.dtype} {'contiguous' if s.is_contiguous() else 'strided'}"
               if isinstance(s, torch.Tensor) else type(s).__name__)
        raise ValueError(f"{name}: expected a contiguous float32 CPU tensor of shape {tuple(shape)} "
                         f"(updated in place), got {got}")


# ------------------------------------------------------------------------- selective step
def A2_of(A: torch.Tensor) -> torch.Tensor:
    """What the kernels take for A: A * log2(e), (N, d) for a per-channel A (d, N), (h,) for a
    per-head A (h,)."""
    A = A.detach().float()
    return ((A.t() if A.dim() == 2 else A) * LOG2E).contiguous()


def selective_state_update(state, x, dt, A2, B, C, D=None, z=None, dt_bias=None,
                           dt_softplus=True, head_dim: int = 1):
    """One decode step of the selective SSM, the state updated in place.

    state (b, d, N) fp32 contiguous (Mamba-2's (b, h, p, N) reshaped: same memory);
    x, z (b, d); dt (b, d), or (b, h) with head_dim > 1; A2 = A2_of(A); B, C (b, N) or
    (b, g, N); D, dt_bias (d,) or (h,).  Returns y (b, d) fp32:
    dt = softplus(dt + dt_bias); state = exp(dt A) state + dt B x; y = <C, state> + D x;
    y *= silu(z)."""
    b, d = x.shape[0], x.shape[-1]
    N = state.shape[-1]
    if B.dim() == 2:
        B, C = B[:, None], C[:, None]
    g = B.shape[1]
    key = (d, N, g, head_dim, D is not None, z is not None, dt_bias is not None, bool(dt_softplus))
    fast = _steps.get(key)
    args = [x, dt, A2, B, C, D, z, dt_bias, state]
    if fast is not None and state.dtype is torch.float32 and state.is_contiguous() and all(
            t is None or (t.dtype is torch.float32 and t.stride(-1) == 1) for t in args):
        out = torch.empty(b, d, dtype=torch.float32)  # the hot path of decoding: no copies
        fast(*[t for t in args if t is not None], out)
        return out
    _check_state("state", state, (b, d, N))
    sig = stepb.StepSignature(d=d, N=N, groups=g, head_dim=head_dim, has_D=D is not None,
                              has_z=z is not None, has_delta_bias=dt_bias is not None,
                              delta_softplus=bool(dt_softplus), step=True)
    named = {"u": _f32_view("x", x.reshape(b, d), 2),
             "delta": _f32_view("dt", dt.reshape(b, dt.shape[-1]), 2),
             "A2": _compact("A2", A2), "B": _f32_view("B", B, 3), "C": _f32_view("C", C, 3),
             "D": _opt(D), "z": None if z is None else _f32_view("z", z.reshape(b, d), 2),
             "delta_bias": _opt(dt_bias), "state": state,
             "out": torch.empty(b, d, dtype=torch.float32)}
    kernel = step_kernel(sig)
    _steps[key] = kernel
    kernel(*[named[n] for n in stepb.arg_names(sig)])
    return named["out"]


def selective_scan_seq(x, dt, A2, B, C, D=None, z=None, dt_bias=None, dt_softplus=True,
                         head_dim: int = 1, initial_state=None, return_last_state=False):
    """The selective scan over a sequence, channels-last, inputs read in place (strided views
    of projection outputs are fine).

    head_dim = 1 (Mamba-1): x, z, dt (b, L, d); A2 = A2_of(A) (N, d); D, dt_bias (d,).
    head_dim = p > 1 (Mamba-2's SSD, channels are (head, p)): dt (b, L, h); A2 (h,); D,
    dt_bias (h,).  B, C (b, L, g, N); initial_state (b, d, N) (Mamba-2's (b, h, p, N)
    reshaped).  Returns y (b, L, d) fp32 [, final state (b, d, N)]."""
    x = _f32_view("x", x, 3)
    b, L, d = x.shape
    N = B.shape[-1]
    sig = stepb.StepSignature(d=d, N=N, groups=B.shape[2], head_dim=head_dim,
                              has_D=D is not None, has_z=z is not None,
                              has_delta_bias=dt_bias is not None,
                              delta_softplus=bool(dt_softplus), step=False,
                              has_initial_state=initial_state is not None,
                              return_last_state=bool(return_last_state))
    last = torch.empty(b, d, N, dtype=torch.float32) if return_last_state else None
    out = torch.empty(b, L, d, dtype=torch.float32)
    if b == 0 or L == 0:
        out.zero_()
        if last is not None:
            last.zero_()
            if initial_state is not None:
                last.copy_(initial_state.reshape(b, d, N))
        return (out, last) if return_last_state else out
    args = {"u": x, "delta": _f32_view("dt", dt, 3), "A2": A2,
            "B": _f32_view("B", B, 4), "C": _f32_view("C", C, 4), "D": _opt(D),
            "z": None if z is None else _f32_view("z", z, 3), "delta_bias": _opt(dt_bias),
            "h0": None if initial_state is None else _compact("initial_state",
                                                               initial_state.reshape(b, d, N)),
            "out": out, "h_last": last}
    step_kernel(sig)(*[args[n] for n in stepb.arg_names(sig)])
    return (out, last) if return_last_state else out
