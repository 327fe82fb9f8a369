"""`ssmc.accelerate(model)`: run a transformers Mamba / Mamba-2 model on ssmc's kernels, in place.

Each `MambaMixer` / `Mamba2Mixer` found in the model gets an instance-level `forward` that does
what transformers' own forward does, with the same cache protocol (so `generate()` works
unchanged), but:

* prefill: causal conv1d + SiLU on ssmc's conv kernel, the selective scan on ssmc's sequence
  kernel (TVM on the CPU, Triton on a GPU), softplus(dt + dt_bias), the D skip and the SiLU(z)
  gate fused into the scan; the cache is filled as transformers fills it (the conv state through
  the cache's own `update_conv_state`, the final SSM state through `update_recurrent_state`);
* decode (one token with a cache): the one-token step kernels update the cache's conv state and
  SSM state in place;
* projections (in_proj, x_proj, dt_proj, out_proj) are GEMMs on the CPU's faster library
  (ssmc.runtime.gemm: oneDNN where MKL is slow) over a sequence and the TVM gemv kernel for a
  decode step's single row; the mixer's own parameters are used as they are: nothing is
  copied, so training or editing the weights afterwards is seen by the next call.  Tensors derived from weights (A = -exp(A_log) in the
  kernels' layout) are recomputed whenever the parameter's version changes.

Whenever the fast path does not apply (gradients needed, an unsupported dtype), the mixer runs
transformers' original forward.  Extra keyword arguments (seq_idx, ...) are ignored, as
transformers' own torch path ignores them.
`ssmc.restore(model)` removes the instance forwards.
"""

from __future__ import annotations

import os
import types

import torch
import torch.nn.functional as F

from ssmc.errors import SsmcError
from ssmc.hf.kernels import BACKENDS, mixer_shapes
from ssmc.runtime import gemm

TARGETS = ("auto", "tvm", "triton", "reference")
MIXER_CLASSES = {"MambaMixer": "mamba1", "Mamba2Mixer": "mamba2"}
# the norms around the mixers (block norms, the final norm, Mamba-2's gated norm): glue that the
# TVM backend also runs on a kernel
NORM_CLASSES = {"MambaRMSNorm": "rmsnorm", "Mamba2RMSNorm": "rmsnorm", "MambaRMSNormGated": "gated"}
_ATTR = "_ssmc_accel"


class _State:
    """What an accelerated mixer keeps: its backend and weight-derived tensors (a plain object,
    so nn.Module neither registers nor copies it as a submodule)."""

    def __init__(self, kind: str, kernels, target: str):
        self.kind, self.kernels, self.target = kind, kernels, target
        self.a_key = None
        self.A = self.Ak = None
        self.calls = {"fast": 0, "fallback": 0, "fused": 0}  # fused: one-call layer steps
        self.raw = None  # the decode step's compiled kernels, resolved at the first step
        self._fp32_key, self._fp32 = None, False

    def __deepcopy__(self, memo):
        """copy.deepcopy(model): the copy gets its own state (the backend is stateless and
        shared; kernels and derived tensors are looked up again for the copy's weights)."""
        new = _State(self.kind, self.kernels, self.target)
        memo[id(self)] = new
        return new

    def params_fp32(self, mixer, block) -> bool:
        """Every parameter of the block is fp32 (what the raw decode kernels take); checked
        again whenever in_proj's weight changes storage or dtype (model.to(...))."""
        w = mixer._modules["in_proj"]._parameters["weight"]
        key = (w.dtype, w.data_ptr())
        if key != self._fp32_key:
            self._fp32 = all(p.dtype is torch.float32 for p in block.parameters())
            self._fp32_key = key
        return self._fp32

    def a(self, A_log: torch.Tensor):
        """(A, kernels' A) for the current weights (recomputed when A_log changes)."""
        key = (A_log._version, A_log.data_ptr(), A_log.device)
        if key != self.a_key:
            A = -torch.exp(A_log.detach().float())
            self.A, self.Ak, self.a_key = A, self.kernels.a_param(A), key
        return self.A, self.Ak


def _kind(module, classes=MIXER_CLASSES) -> str | None:
    for cls in type(module).__mro__:
        kind = classes.get(cls.__name__)
        if kind is not None and cls.__module__.startswith("transformers."):
            return kind
    return None


_mixer_kind = _kind


def _resolve_target(target: str, device: torch.device) -> str:
    if target not in TARGETS:
        raise SsmcError(f"accelerate: target must be one of {', '.join(TARGETS)}, got {target!r}")
    if target == "auto":
        return "tvm" if device.type == "cpu" else "triton" if device.type == "cuda" else "reference"
    if target == "tvm" and device.type != "cpu":
        raise SsmcError(f"accelerate: target 'tvm' runs CPU models; this mixer is on {device}")
    if target == "triton" and device.type != "cuda" and not (
            device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"):
        raise SsmcError(f"accelerate: target 'triton' runs CUDA/ROCm models (or CPU ones under "
                        f"TRITON_INTERPRET=1); this mixer is on {device}")
    return target


def accelerate(model, target: str = "auto", *, warmup: bool = True):
    """Replace the forward of every transformers Mamba / Mamba-2 mixer in `model` (in place)
    with one that runs ssmc's kernels; returns `model`.

    target: 'auto' (TVM kernels on the CPU, Triton on a GPU), 'tvm', 'triton' or 'reference'
    (ssmc's plain-torch implementation of the same kernels).  warmup: build / load the TVM
    kernels of the model's shapes now rather than at the first call.  Calling it again
    re-targets the model."""
    if not isinstance(model, torch.nn.Module):
        raise SsmcError(f"accelerate: expected a torch.nn.Module (a transformers Mamba model), "
                        f"got {type(model).__name__}")
    mixers = [(name, m, _mixer_kind(m)) for name, m in model.named_modules()]
    mixers = [(name, m, kind) for name, m, kind in mixers if kind is not None]
    if not mixers:
        raise SsmcError(f"accelerate: no transformers MambaMixer or Mamba2Mixer in "
                        f"{type(model).__name__}; ssmc.accelerate supports MambaForCausalLM, "
                        "Mamba2ForCausalLM, their base models and modules containing their mixers")
    plan = []  # check everything before touching any mixer
    for name, mixer, kind in mixers:
        act = getattr(mixer, "activation", "silu")
        if act not in ("silu", "swish"):
            raise SsmcError(f"accelerate: {name} uses activation {act!r}; ssmc's conv kernel "
                            "implements silu (Mamba's) only")
        plan.append((name, mixer, kind, _resolve_target(target, mixer.in_proj.weight.device)))
    backends: dict = {}
    for name, mixer, kind, tgt in plan:
        if tgt not in backends:
            backends[tgt] = BACKENDS[tgt]()
        state = _State(kind, backends[tgt], tgt)
        if warmup:
            backends[tgt].prepare(mixer)
        _patch(mixer, state, _mamba1_forward if kind == "mamba1" else _mamba2_forward)
    for name, mixer, kind, tgt in plan:  # the block around each mixer: decode glue (TVM)
        block = _parent_block(model, name)
        if block is not None and tgt == "tvm":
            _patch(block, mixer.__dict__[_ATTR], _block_forward)
        elif block is not None and _ATTR in block.__dict__:
            del block.__dict__[_ATTR]
            block.__dict__.pop("forward", None)
    norm_target = {t for *_, t in plan}
    _patch_head(model, backends.get("tvm") if norm_target == {"tvm"} else None)
    for name, m in model.named_modules():
        kind = _kind(m, NORM_CLASSES)
        if kind is None:
            continue
        if norm_target == {"tvm"} and m.weight.device.type == "cpu":
            _patch(m, _State(kind, backends["tvm"], "tvm"), _norm_forward)
        elif _ATTR in m.__dict__:  # re-targeted away from tvm: transformers' norm again
            del m.__dict__[_ATTR]
            m.__dict__.pop("forward", None)
    return model


def _patch_head(model, tvm_backend) -> None:
    """The output head (lm_head) of a decode step is one more matrix-vector product (vocab x
    hidden, the largest of the step): on the TVM backend a one-row call takes the gemv kernel."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, torch.nn.Linear):
        return
    if tvm_backend is not None and head.weight.device.type == "cpu":
        _patch(head, _State("linear", tvm_backend, "tvm"), _head_forward)
    elif _ATTR in head.__dict__:
        del head.__dict__[_ATTR]
        head.__dict__.pop("forward", None)


def _head_forward(self, x):
    st = self.__dict__[_ATTR]
    w, bias = self.weight, self.bias
    if x.numel() != x.shape[-1]:  # several rows: a GEMM, torch's
        return F.linear(x, w, bias)
    if x.dtype is not torch.float32 or w.dtype is not torch.float32 or (
            torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)):
        st.calls["fallback"] += 1
        return F.linear(x, w, bias)
    st.calls["fast"] += 1
    if st.raw is None or st.raw[0] != (w.shape, bias is not None):
        st.raw = ((w.shape, bias is not None),
                  st.kernels.dk.gemv_kernel(st.kernels.dk.gemv_signature(w, bias)))
    return _linear(x.reshape(1, -1), self, st.raw[1]).view(*x.shape[:-1], w.shape[0])


def _parent_block(model, mixer_name: str):
    """The module holding `mixer_name` as its `.mixer` (transformers' MambaBlock /
    Mamba2Block), if it is one of those."""
    if not mixer_name.endswith("mixer"):
        return None
    parent = model.get_submodule(mixer_name.rpartition(".")[0]) if "." in mixer_name else model
    if type(parent).__name__ in ("MambaBlock", "Mamba2Block") and \
            type(parent).__module__.startswith("transformers."):
        return parent
    return None


def _patch(module, state, fwd) -> None:
    module.__dict__.pop("forward", None)
    object.__setattr__(module, _ATTR, state)
    object.__setattr__(module, "forward", types.MethodType(fwd, module))


def restore(model):
    """Undo `accelerate`: every mixer runs transformers' own forward again.  Returns `model`."""
    for m in model.modules():
        if _ATTR in m.__dict__:
            del m.__dict__[_ATTR]
            m.__dict__.pop("forward", None)
    return model


def accelerated_mixers(model) -> dict:
    """{module name: target} of the mixers `accelerate` replaced."""
    return {name: m.__dict__[_ATTR].target for name, m in model.named_modules()
            if _ATTR in m.__dict__ and _kind(m) is not None}


def call_counts(model) -> dict:
    """{module name: {'fast': n, 'fallback': n, 'fused': n}}: how often each replaced module
    (mixers, and on the TVM backend the norms) took ssmc's path; 'fused' counts the decode steps
    a whole layer ran as one kernel (one sequence on the TVM backend)."""
    return {name: dict(m.__dict__[_ATTR].calls) for name, m in model.named_modules()
            if _ATTR in m.__dict__ and m.__dict__[_ATTR].kind != "linear"}


def head_calls(model) -> dict | None:
    """{'fast': n, 'fallback': n} of the output head's one-row gemv path (None when the head is
    not patched); a call of several rows is a plain F.linear and counts as neither."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    st = getattr(head, "__dict__", {}).get(_ATTR)
    return dict(st.calls) if st is not None else None


# ----------------------------------------------------------------------------- helpers
def _needs_fallback(mixer, hidden_states, kwargs) -> bool:
    # Extra keyword arguments (seq_idx, ...) are ignored, as transformers' torch path does.
    if hidden_states.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return True
    if torch.is_grad_enabled() and (hidden_states.requires_grad or mixer.in_proj.weight.requires_grad):
        return True  # the kernels here have no backward: transformers' path keeps autograd
    return False


def _original(mixer, hidden_states, cache_params, attention_mask, kwargs):
    mixer.__dict__[_ATTR].calls["fallback"] += 1
    return type(mixer).forward(mixer, hidden_states, cache_params=cache_params,
                               attention_mask=attention_mask, **kwargs)


def _mask(x, attention_mask):
    """transformers' apply_mask_to_padding_states.  generate() passes a mask of ones for an
    unpadded batch: on the CPU that is checked (a pass over b x L flags) instead of multiplying
    two (b, L, d) tensors by one (the same numbers: x * 1 == x)."""
    if attention_mask is None:
        return x
    if x.device.type == "cpu" and bool(attention_mask.all()):
        return x
    return (x * attention_mask[:, :, None]).to(x.dtype)


def _caches(mixer, cache_params):
    if cache_params is None:
        return None, None, False
    li = mixer.layer_idx
    return (cache_params.get_conv_state(li, state_idx=0),
            cache_params.get_recurrent_state(li, state_idx=0),
            bool(cache_params.is_recording_past(li)))


def _prev_conv(conv_state, k):
    """The last k inputs of a conv state (recording-past caches keep more)."""
    if conv_state is None:
        return None
    s = conv_state[..., -k:]
    return s if s.shape[-1] == k else F.pad(s, (k - s.shape[-1], 0))


# ----------------------------------------------------------------------------- norms
def _norm_forward(self, hidden_states, gate=None):
    """transformers' (gated) RMSNorm on ssmc's rmsnorm kernel (fp32 CPU tensors)."""
    st = self.__dict__[_ATTR]
    if (hidden_states.dtype is not torch.float32 or self.weight.dtype is not torch.float32
            or (gate is not None and gate.dtype is not torch.float32)
            or (torch.is_grad_enabled() and (hidden_states.requires_grad or self.weight.requires_grad))):
        st.calls["fallback"] += 1
        return type(self).forward(self, hidden_states) if st.kind == "rmsnorm" else \
            type(self).forward(self, hidden_states, gate)
    st.calls["fast"] += 1
    groups = 1 if st.kind == "rmsnorm" else hidden_states.shape[-1] // self.group_size
    return st.kernels.dk.rmsnorm(hidden_states, self.weight, self.variance_epsilon, gate, groups)


# ----------------------------------------------------------------------------- decode
def _block_forward(self, hidden_states, cache_params=None, attention_mask=None, **kwargs):
    """transformers' MambaBlock / Mamba2Block (residual + mixer(norm(h))); a decode step (one
    token, cache filled, fp32) runs as one straight sequence of kernels and 2-D matmuls, without
    the module calls in between (each costs microseconds, which is what a decode step of a small
    model is made of)."""
    mixer = self._modules["mixer"]
    st = mixer.__dict__.get(_ATTR)
    fast = (st is not None and st.target == "tvm" and cache_params is not None
            and hidden_states.shape[1] == 1 and hidden_states.dtype is torch.float32
            and st.params_fp32(mixer, self) and not _needs_fallback(mixer, hidden_states, {}))
    if fast:
        conv_state, rec_state, recording = _caches(mixer, cache_params)
        fast = (conv_state is not None and rec_state is not None and not recording
                and conv_state.dtype is torch.float32 and rec_state.dtype is torch.float32
                and conv_state.is_contiguous() and rec_state.is_contiguous())
    if not fast:
        return type(self).forward(self, hidden_states, cache_params=cache_params,
                                  attention_mask=attention_mask, **kwargs)
    st.calls["fast"] += 1
    b, _, Dm = hidden_states.shape
    norm = self._modules["norm"]
    if st.raw is None:
        st.raw = _raw_kernels(self, mixer, st)
    layer = st.raw.get("layer")
    if layer is not None and b == 1 and hidden_states.is_contiguous():
        st.calls["fused"] += 1
        out = torch.empty(1, 1, Dm)
        args = _m1_layer_args if st.kind == "mamba1" else _m2_layer_args
        layer(*args(self, mixer, st, hidden_states.view(1, Dm), conv_state, rec_state,
                    out.view(1, Dm)))
        return out
    hn = torch.empty(b, Dm)
    st.raw["norm"](hidden_states.view(b, Dm), norm._parameters["weight"], hn)
    step = _m1_decode if st.kind == "mamba1" else _m2_decode
    out = step(mixer, st, hn, conv_state, rec_state)
    return hidden_states + out.view(b, 1, Dm)


def _raw_kernels(block, mixer, st) -> dict:
    """The compiled TVM kernels of this layer's decode step, called directly on the hot path
    (the checks of the torch wrappers were done once here and by _block_forward's conditions:
    fp32, contiguous states; the parameters' dtypes are checked below)."""
    from ssmc.codegen.tvm import causal_conv_tir as convb
    from ssmc.codegen.tvm import rmsnorm_tir as normb
    from ssmc.codegen.tvm import selective_step_tir as stepb

    dk = st.kernels.dk
    info = mixer_shapes(mixer)
    norm = block._modules["norm"]
    vw = dk._config(False).vector_width
    raw = {"norm": dk.norm_kernel(normb.NormSignature(D=norm.weight.shape[0],
                                                      eps=float(norm.variance_epsilon),
                                                      parallel=False, vector_width=vw))}
    conv = mixer._modules["conv1d"]
    raw["conv"] = dk.conv_kernel(convb.ConvSignature(c=info["conv_dim"], k=info["d_conv"],
                                                     has_bias=conv.bias is not None, step=True))
    if st.kind == "mamba1":
        raw.update(_gemv_kernels(dk, mixer, ("in_proj", "x_proj", "out_proj")))
        dtp = mixer._modules["dt_proj"]
        raw["dt_proj"] = dk.gemv_kernel(dk.gemv_signature(dtp.weight))  # bias: in the step
        raw["step"] = dk.step_kernel(stepb.StepSignature(d=info["d_inner"], N=info["d_state"]))
        raw["layer"] = _m1_layer_kernel(dk, block, mixer, info, vw)
    else:
        mnorm = mixer._modules["norm"]
        raw.update(_gemv_kernels(dk, mixer, ("in_proj", "out_proj")))
        raw["step"] = dk.step_kernel(stepb.StepSignature(
            d=info["d_inner"], N=info["d_state"], groups=info["n_groups"],
            head_dim=info["head_dim"], has_z=False))
        raw["gnorm"] = dk.norm_kernel(normb.NormSignature(
            D=info["d_inner"], eps=float(mnorm.variance_epsilon),
            groups=info["d_inner"] // mnorm.group_size, gated=True, parallel=False, vector_width=vw))
        raw["layer"] = _m2_layer_kernel(dk, block, mixer, info, vw)
    return raw


def _m1_layer_kernel(dk, block, mixer, info, vw):
    """The one-call kernel of a whole Mamba-1 layer's decode step (decode_layer_tir), or None
    when a weight it reads directly is not a contiguous tensor (then the step runs kernel by
    kernel)."""
    from ssmc.codegen.tvm import decode_layer_tir as layerb

    mods = mixer._modules
    weights = [block._modules["norm"].weight, mods["conv1d"].weight, mixer.A_log, mixer.D]
    weights += [p for nm in ("in_proj", "x_proj", "dt_proj", "out_proj")
                for p in mods[nm].parameters()]
    if not all(w.is_contiguous() for w in weights) or mods["dt_proj"].bias is None:
        return None
    sig = layerb.Mamba1LayerSignature(
        Dm=block._modules["norm"].weight.shape[0], d=info["d_inner"], N=info["d_state"],
        R=info["dt_rank"], k=info["d_conv"], eps=float(block._modules["norm"].variance_epsilon),
        in_bias=mods["in_proj"].bias is not None, conv_bias=mods["conv1d"].bias is not None,
        x_bias=mods["x_proj"].bias is not None, out_bias=mods["out_proj"].bias is not None,
        vector_width=vw)
    return dk.mamba1_layer_kernel(sig)


def _m2_layer_kernel(dk, block, mixer, info, vw):
    """The one-call kernel of a whole Mamba-2 layer's decode step, or None (as above)."""
    from ssmc.codegen.tvm import decode_layer_tir as layerb

    mods = mixer._modules
    weights = [block._modules["norm"].weight, mods["conv1d"].weight, mixer.A_log, mixer.D,
               mixer.dt_bias, mods["norm"].weight]
    weights += [p for nm in ("in_proj", "out_proj") for p in mods[nm].parameters()]
    if (not all(w.is_contiguous() for w in weights) or mixer.D.shape != mixer.dt_bias.shape
            or info["head_dim"] < 2):
        return None
    sig = layerb.Mamba2LayerSignature(
        Dm=block._modules["norm"].weight.shape[0], d=info["d_inner"], N=info["d_state"],
        head_dim=info["head_dim"], groups=info["n_groups"], k=info["d_conv"],
        eps=float(block._modules["norm"].variance_epsilon),
        norm_eps=float(mods["norm"].variance_epsilon),
        norm_groups=info["d_inner"] // mods["norm"].group_size,
        in_bias=mods["in_proj"].bias is not None, conv_bias=mods["conv1d"].bias is not None,
        out_bias=mods["out_proj"].bias is not None, vector_width=vw)
    return dk.mamba2_layer_kernel(sig)


def _m2_layer_args(block, mixer, st, h, conv_state, rec_state, out) -> list:
    """The fused Mamba-2 layer kernel's arguments in decode_layer_tir.arg_names2 order."""
    mods, P = mixer._modules, mixer._parameters
    _, Ak = st.a(P["A_log"])
    conv, inp, outp = mods["conv1d"]._parameters, mods["in_proj"]._parameters, mods["out_proj"]._parameters
    b, d, N = 1, mixer.intermediate_size, mixer.ssm_state_size
    return _args(h, block._modules["norm"]._parameters["weight"], inp["weight"], inp["bias"],
                 conv["weight"], conv["bias"], conv_state, Ak, P["D"], P["dt_bias"],
                 rec_state.view(b, d, N), mods["norm"]._parameters["weight"], outp["weight"],
                 outp["bias"], out)


def _m1_layer_args(block, mixer, st, h, conv_state, rec_state, out) -> list:
    """The fused layer kernel's arguments in decode_layer_tir.arg_names order."""
    mods, P = mixer._modules, mixer._parameters
    _, Ak = st.a(P["A_log"])
    conv, inp, xp = mods["conv1d"]._parameters, mods["in_proj"]._parameters, mods["x_proj"]._parameters
    dtp, outp = mods["dt_proj"]._parameters, mods["out_proj"]._parameters
    return _args(h, block._modules["norm"]._parameters["weight"], inp["weight"], inp["bias"],
                 conv["weight"], conv["bias"], conv_state, xp["weight"], xp["bias"],
                 dtp["weight"], Ak, P["D"], dtp["bias"], rec_state, outp["weight"], outp["bias"],
                 out)


def _linear(x, lin, gemv=None):
    """x (b, in) -> (b, out).  One row (a decode step of one sequence) goes through the TVM
    matrix-vector kernel `gemv` (gemv_tir.py: 1.5-3.5x faster than torch.mv, measured) when the
    weight is contiguous, else torch.mv (10-40% faster than F.linear's gemm for one row)."""
    w, bias = lin._parameters["weight"], lin._parameters["bias"]
    if x.shape[0] == 1:
        if gemv is not None and w.is_contiguous() and (bias is None or bias.is_contiguous()):
            y = torch.empty(1, w.shape[0])
            gemv(*_args(x.view(-1), w, bias, y.view(-1)))
            return y
        y = torch.mv(w, x.view(-1)) if bias is None else torch.addmv(bias, w, x.view(-1))
        return y.view(1, -1)
    return F.linear(x, w, bias)


def _gemv_kernels(dk, mixer, names) -> dict:
    """{name: the one-row TVM kernel of mixer.<name>} for the decode step's projections."""
    out = {}
    for name in names:
        lin = mixer._modules[name]
        out[name] = dk.gemv_kernel(dk.gemv_signature(lin.weight, lin.bias))
    return out


def _proj(lin, x):
    """lin(x) over a sequence: a plain nn.Linear through ssmc's choice of CPU GEMM
    (runtime/gemm.py); a wrapped or hooked projection (an adapter, say) is called as it is."""
    if type(lin) is torch.nn.Linear and not lin._forward_hooks and not lin._forward_pre_hooks:
        return gemm.linear(x, lin.weight, lin.bias)
    return lin(x)


def _args(*ts):
    return [t for t in ts if t is not None]


def _m1_decode(mixer, st, h, conv_state, rec_state):
    """One Mamba-1 token on the TVM kernels: h (b, d_model) normalised -> (b, d_model)."""
    mods, P, raw = mixer._modules, mixer._parameters, st.raw
    d, N, R = mixer.intermediate_size, mixer.ssm_state_size, mixer.time_step_rank
    b = h.shape[0]
    _, Ak = st.a(P["A_log"])
    conv = mods["conv1d"]._parameters
    dtp = mods["dt_proj"]._parameters
    xz = _linear(h, mods["in_proj"], raw["in_proj"])                   # (b, 2d)
    xc = torch.empty(b, d)
    raw["conv"](*_args(xz[:, :d], conv["weight"], conv["bias"], conv_state, xc))
    x_dbl = _linear(xc, mods["x_proj"], raw["x_proj"])                 # (b, R + 2N)
    if b == 1 and dtp["weight"].is_contiguous():  # the dt bias is added in the step kernel
        dt = torch.empty(1, d)
        raw["dt_proj"](x_dbl[0, :R], dtp["weight"], dt.view(-1))
    else:
        dt = F.linear(x_dbl[:, :R], dtp["weight"])
    y = torch.empty(b, d)
    raw["step"](*_args(xc, dt, Ak, x_dbl[:, None, R:R + N], x_dbl[:, None, R + N:], P["D"],
                       xz[:, d:], dtp["bias"], rec_state, y))
    return _linear(y, mods["out_proj"], raw["out_proj"])


def _m2_decode(mixer, st, h, conv_state, rec_state):
    """One Mamba-2 token on the TVM kernels: h (b, d_model) normalised -> (b, d_model)."""
    mods, P, raw = mixer._modules, mixer._parameters, st.raw
    d, N = mixer.intermediate_size, mixer.ssm_state_size
    g, cd = mixer.n_groups, mixer.conv_dim
    b = h.shape[0]
    _, Ak = st.a(P["A_log"])
    conv = mods["conv1d"]._parameters
    proj = _linear(h, mods["in_proj"], raw["in_proj"])                 # (b, d + cd + H)
    xc = torch.empty(b, cd)
    raw["conv"](*_args(proj[:, d:d + cd], conv["weight"], conv["bias"], conv_state, xc))
    y = torch.empty(b, d)
    raw["step"](*_args(xc[:, :d], proj[:, d + cd:], Ak, xc[:, d:d + g * N].view(b, g, N),
                       xc[:, d + g * N:].view(b, g, N), P["D"], P["dt_bias"],
                       rec_state.view(b, d, N), y))
    yn = torch.empty(b, d)
    raw["gnorm"](y, proj[:, :d], mods["norm"]._parameters["weight"], yn)
    return _linear(yn, mods["out_proj"], raw["out_proj"])


# ----------------------------------------------------------------------------- Mamba-1
def _mamba1_forward(self, hidden_states, cache_params=None, attention_mask=None, **kwargs):
    st = self.__dict__[_ATTR]
    if _needs_fallback(self, hidden_states, kwargs):
        return _original(self, hidden_states, cache_params, attention_mask, kwargs)
    st.calls["fast"] += 1
    kern = st.kernels
    b, L, _ = hidden_states.shape
    dtype = hidden_states.dtype
    d, N, R, k = self.intermediate_size, self.ssm_state_size, self.time_step_rank, self.conv_kernel_size
    conv_state, rec_state, recording = _caches(self, cache_params)
    A, Ak = st.a(self.A_log)
    dt_bias = self.dt_proj.bias

    xz = _proj(self.in_proj, _mask(hidden_states, attention_mask))    # (b, L, 2d)
    if conv_state is not None and rec_state is not None and L == 1 and not recording:
        # decode: one token, both states updated in place (few torch ops: each costs ~us)
        xc = kern.conv_step(xz[:, 0, :d], conv_state, self.conv1d.weight, self.conv1d.bias)
        if dtype is not torch.float32:
            xc = xc.to(dtype)
        x_dbl = F.linear(xc, self.x_proj.weight, self.x_proj.bias)    # (b, R + 2N)
        dt = F.linear(x_dbl[:, :R], self.dt_proj.weight)
        y = kern.step(rec_state, xc, dt, Ak, x_dbl[:, None, R:R + N], x_dbl[:, None, R + N:],
                      self.D, xz[:, 0, d:], dt_bias)
        y = y.view(b, 1, d)
        return self.out_proj(y if dtype is torch.float32 else y.to(dtype))

    x, z = xz[..., :d], xz[..., d:]
    prev = _prev_conv(conv_state, k)
    xc = kern.conv(x, self.conv1d.weight, self.conv1d.bias, prev)    # (b, L, d) fp32
    if cache_params is not None:  # transformers' own bookkeeping of the conv state
        cache_params.update_conv_state(x.transpose(1, 2), self.layer_idx, conv_kernel_size=k)
    xc = _mask(xc, attention_mask).to(dtype)
    x_dbl = gemm.linear(xc, self.x_proj.weight, self.x_proj.bias)     # (b, L, R + 2N)
    dt = gemm.linear(x_dbl[..., :R], self.dt_proj.weight)              # bias: in the scan
    B = x_dbl[..., R:R + N].unsqueeze(2)
    C = x_dbl[..., R + N:].unsqueeze(2)
    final = cache_params is not None
    out = kern.scan(xc, dt, Ak, B, C, self.D, z, dt_bias, initial_state=rec_state, final=final)
    if final:
        y, last = out
        cache_params.update_recurrent_state(last, self.layer_idx)
    else:
        y = out
    return _proj(self.out_proj, y.to(dtype))


# ----------------------------------------------------------------------------- Mamba-2
def _mamba2_forward(self, hidden_states, cache_params=None, attention_mask=None, **kwargs):
    st = self.__dict__[_ATTR]
    if _needs_fallback(self, hidden_states, kwargs):
        return _original(self, hidden_states, cache_params, attention_mask, kwargs)
    st.calls["fast"] += 1
    kern = st.kernels
    b, L, _ = hidden_states.shape
    dtype = hidden_states.dtype
    d, N, H, P = self.intermediate_size, self.ssm_state_size, self.num_heads, self.head_dim
    g, cd, k = self.n_groups, self.conv_dim, self.conv_kernel_size
    conv_state, rec_state, recording = _caches(self, cache_params)
    A, Ak = st.a(self.A_log)

    proj = _proj(self.in_proj, _mask(hidden_states, attention_mask))   # (b, L, d + cd + H)
    gate, xBC, dt = proj[..., :d], proj[..., d:d + cd], proj[..., d + cd:]
    if conv_state is not None and rec_state is not None and L == 1 and not recording:
        # as transformers' recurrent form: its one-token step does not clamp dt by
        # time_step_limit (only the chunked form does), and neither does this one
        xc = kern.conv_step(xBC[:, 0], conv_state, self.conv1d.weight, self.conv1d.bias)
        xc = xc.to(dtype)
        state = rec_state.view(b, d, N) if rec_state.is_contiguous() else rec_state.reshape(b, d, N)
        y = kern.ssd_step(state, xc[:, :d], dt[:, 0], Ak, xc[:, d:d + g * N].view(b, g, N),
                          xc[:, d + g * N:].view(b, g, N), self.D, self.dt_bias, P)
        if state.data_ptr() != rec_state.data_ptr():
            rec_state.copy_(state.view_as(rec_state))
        y = self.norm(y[:, None].to(dtype), gate)
        return self.out_proj(y.to(dtype))

    prev = _prev_conv(conv_state, k)
    xc = kern.conv(xBC, self.conv1d.weight, self.conv1d.bias, prev)  # (b, L, cd) fp32
    if cache_params is not None:
        cache_params.update_conv_state(xBC.transpose(1, 2), self.layer_idx, conv_kernel_size=k)
    xc = _mask(xc, attention_mask).to(dtype)
    x = xc[..., :d]
    B = xc[..., d:d + g * N].unflatten(-1, (g, N))
    C = xc[..., d + g * N:].unflatten(-1, (g, N))
    final = cache_params is not None
    h0 = None if rec_state is None else rec_state.reshape(b, d, N)
    out = kern.ssd(x, dt, Ak, B, C, self.D, self.dt_bias, self.time_step_limit, P,
                   initial_state=h0, final=final)
    if final:
        y, last = out
        cache_params.update_recurrent_state(last.view(b, H, P, N), layer_idx=self.layer_idx)
    else:
        y = out
    y = self.norm(y.to(dtype), gate)
    return _proj(self.out_proj, y.to(dtype))


__all__ = ["accelerate", "restore", "accelerated_mixers", "call_counts", "head_calls",
           "mixer_shapes"]
