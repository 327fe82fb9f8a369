"""Running an SSM node with a compiled kernel: read the node's parameters from its module, put
the activations in the layout the kernel takes, call it.  One function per node family.

When gradients are needed, under torch.compile, or when the module moved to a device its
compiled backend does not run on, a node goes through the ``ssmc::`` torch.library ops
(ssmc.runtime.library: differentiable by the chunked reverse scan, traceable, dispatching on the
device); eager inference calls the kernel function directly.  START in training mode (a random
perturbation of the inputs) runs as a prologue in front of the kernel (`start_prologue`).
"""

from __future__ import annotations

import torch

from ssmc.runtime import dispatch


def _grad_needed(mod, args) -> bool:
    if not torch.is_grad_enabled():
        return False
    return any(p.requires_grad for p in mod.parameters()) or any(
        isinstance(a, torch.Tensor) and a.requires_grad for a in args)


# The Triton kernel family (ssmc.codegen.triton.families) of a node family, by prefix.
TRITON_FAMILY_PREFIX = {"selective_ssm/mamba1": "selective_scan", "selective_ssm/ssd": "ssd"}
# ... or by name, where the kernel is named for what it computes rather than the algorithm.
TRITON_FAMILY_NAMED = {("diagonal_ssm", "sequential"): "s4d.recurrent",
                       ("diagonal_ssm", "fft"): "s4d.vandermonde",
                       ("recurrence", "sequential"): "plrnn.sequential",
                       ("selective_ssm/dense", "sequential"): "dense.sequential",
                       ("ssm2d", "wavefront"): "ssm2d.wavefront"}


def tvm_config(config: dict | None):
    """A schedule dict (node.meta['config'], a tuned record's config) -> the TVM kernel's Config;
    the kernel's own defaults where the dict says nothing, None (= all defaults) when empty."""
    if not config:
        return None
    import dataclasses

    from ssmc.codegen.tvm.config import Config, default_config

    known = {f.name for f in dataclasses.fields(Config)}
    return default_config("llvm").replace(**{k: v for k, v in config.items() if k in known})


def tvm_glue_config(op: str, config: dict | None):
    """The config dict of a glue node's TVM CPU kernel (the schedule pass's, a record's) -> what
    ssmc.codegen.tvm.decode takes: conv1d a Config (as tvm_config), rmsnorm a NormConfig; None
    (= the kernel's defaults) when empty."""
    if op != "rmsnorm":
        return tvm_config(config)
    if not config:
        return None
    from ssmc.codegen.tvm.rmsnorm_tir import NormConfig

    return NormConfig(**{k: v for k, v in config.items() if k in ("vector_width", "parallel")})


def _own_knobs(config: dict, default):
    """`default` (a kernel's Config) with the knobs `config` names.  Only a record made for the
    kernel is applied (the callers check that it names one of the kernel's own knobs): the
    schedule pass's generic CPU defaults are the selective scan's knobs."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(default)}
    return dataclasses.replace(default, **{k: v for k, v in config.items() if k in known})


def tvm_plrnn_config(config: dict | None):
    """The PLRNN TVM kernel's PlrnnConfig from a record's dict (it names `traj_block`)."""
    if not config or "traj_block" not in config:
        return None
    from ssmc.codegen.tvm.plrnn import default_config

    return _own_knobs(config, default_config())


def tvm_diagonal_config(config: dict | None):
    """The TVM diagonal recurrence's DiagonalScanConfig from a record's dict (it names
    `mode_unroll`)."""
    if not config or "mode_unroll" not in config:
        return None
    from ssmc.codegen.tvm.diagonal_scan_tir import DiagonalScanConfig

    return _own_knobs(config, DiagonalScanConfig())


def triton_family(family: str, algorithm: str) -> str | None:
    """The Triton kernel family (ssmc.codegen.triton.families) that runs a node family's
    algorithm; None when there is none."""
    name = TRITON_FAMILY_NAMED.get((family, algorithm))
    if name is None and family in TRITON_FAMILY_PREFIX:
        name = f"{TRITON_FAMILY_PREFIX[family]}.{algorithm}"
    return name


def triton_config(family: str, algorithm: str, config: dict | None):
    """A schedule dict -> the Triton family's Config dataclass.  The schedule pass spells knobs
    in upper case (BLOCK_D, CHUNK); the Configs in lower case; knobs a family lacks are
    dropped."""
    name = triton_family(family, algorithm)
    if not config or name is None:
        return None
    import dataclasses

    from ssmc.codegen.triton.families import get_family

    cls = get_family(name).config
    known = {f.name for f in dataclasses.fields(cls)}
    knobs = {k.lower(): v for k, v in config.items() if k.lower() in known}
    return cls.from_dict(knobs) if knobs else None


def node_config(node, backend: str, config: dict):
    """The Config dataclass of the node's kernel (`kernel_config`) or None, made once and kept
    on the node:
    torch.compile's trace cannot build the frozen dataclasses, so compiled.Runner.add makes
    it before the first call."""
    cfg = node.meta.get("kernel_config", False)
    if cfg is False:
        from ssmc.passes.select_algorithm import family

        cfg = node.meta["kernel_config"] = kernel_config(family(node), node.meta.get("algorithm"),
                                                         backend, config)
    return cfg


def kernel_config(fam: str, alg: str | None, backend: str, config: dict | None):
    """node_config's Config for a node family's kernel, from a schedule dict; raises ValueError
    or TypeError on a dict the kernel cannot take (a knob it lacks, a value out of range)."""
    if fam == "selective_ssm/ssd":
        alg = "chunked"  # the one Triton SSD kernel, whichever algorithm the cost model named
    if fam == "ssm2d":
        from ssmc.codegen.ssm2d_recurrence import ssm2d_config

        return ssm2d_config(backend, alg, config)
    if fam == "recurrence" and backend == "tvm":
        return tvm_plrnn_config(config)
    if fam == "diagonal_ssm" and backend == "tvm":
        return tvm_diagonal_config(config) if alg == "sequential" else None
    return triton_config(fam, alg, config) if backend == "triton" else None


def config_problem(fam: str, alg: str | None, backend: str, config: dict) -> str | None:
    """Why the kernel that runs (fam, alg) on `backend` cannot take `config` (a tuned record's,
    say), or None when it can: every Config the runtime would build from it is built here."""
    try:
        if backend == "tvm" and fam in ("conv1d", "rmsnorm"):  # the glue kernels
            tvm_glue_config(fam, config)
        else:
            kernel_config(fam, alg, backend, config)
            if backend == "tvm" and fam in ("selective_ssm/mamba1", "selective_ssm/ssd"):
                tvm_config(config)
    except (ValueError, TypeError, KeyError) as e:
        return str(e)
    return None


def start_prologue(mod, ins: dict) -> dict:
    """START (MODELS.md section 10) in front of the Mamba-1 kernel, in training mode: saliency,
    top-k and perturbation of semantics.start.start_perturb on the same (b, d, L) / (b, [g,] N, L)
    views the reference module makes, with its generator, so that the draws are the reference's
    draw for draw; the perturbed delta, B, C go back to channels-last (views both ways).  It
    reads delta, B, C once for the saliency and rewrites only the k selected tokens (see
    semantics.start: what fusing into the kernel's loads would save), so every scan backend and
    backward runs unchanged behind it."""
    from ssmc.semantics.start import start_perturb

    b, L, _ = ins["x"].shape
    g, N = mod.groups, mod.d_state

    def scan_view(M):  # (b, L, g*N) -> (b, N, L) or (b, g, N, L)
        M = M.reshape(b, L, g, N).permute(0, 2, 3, 1)
        return M[:, 0] if g == 1 else M

    def back(M):
        M = M.permute(0, 2, 1) if g == 1 else M.permute(0, 3, 1, 2)
        return M.reshape(b, L, g * N)

    cfg = mod.start
    delta, B, C = start_perturb(ins["delta"].transpose(1, 2), scan_view(ins["B"]), scan_view(ins["C"]),
                                cfg["k"], mode=cfg["mode"], sigma=cfg["sigma"], targets=cfg["targets"],
                                training=True, generator=mod.start_generator,
                                delta_bias=mod.delta_bias, delta_softplus=mod.delta_softplus)
    return {**ins, "delta": delta.transpose(1, 2), "B": back(B), "C": back(C)}


def mamba1(node, mod, ins: dict, fn, backend: str, config: dict):
    if mod.start is not None and mod.training:
        ins = start_prologue(mod, ins)
    from ssmc.runtime import library

    if library.node_wants_op(mod, ins, backend, ins["x"]):
        return library.run_mamba1_node(node, mod, ins, backend, config)
    x, delta, B, C = ins["x"], ins["delta"], ins["B"], ins["C"]
    z, h0 = ins.get("z"), ins.get("initial_state")
    b, L, d = x.shape
    g, N = mod.groups, mod.d_state
    kw = dict(D=mod.D, delta_bias=mod.delta_bias, delta_softplus=mod.delta_softplus,
              return_last_state=node.final_state, initial_state=h0, conj_pair=mod.conj_pair)
    if backend == "tvm":  # channels-last end to end: no transposes
        return fn(x, delta, mod.A(), B.reshape(b, L, g, N), C.reshape(b, L, g, N), z=z,
                  layout="bld", config=tvm_config(config), **kw)
    Bs = B.reshape(b, L, g, N).permute(0, 2, 3, 1)
    Cs = C.reshape(b, L, g, N).permute(0, 2, 3, 1)
    if g == 1:
        Bs, Cs = Bs[:, 0], Cs[:, 0]
    out = fn(x.transpose(1, 2), delta.transpose(1, 2), mod.A(), Bs, Cs,
             z=None if z is None else z.transpose(1, 2),
             config=node_config(node, backend, config), **kw)
    if node.final_state:
        return out[0].transpose(1, 2), out[1]
    return out.transpose(1, 2)


def ssd(node, mod, ins: dict, fn, backend: str, config: dict):
    from ssmc.runtime import library

    if library.node_wants_op(mod, ins, backend, ins["x"]):
        return library.run_ssd_node(node, mod, ins, backend, config)
    x, dt, B, C = ins["x"], ins["dt"], ins["B"], ins["C"]
    z, h0 = ins.get("z"), ins.get("initial_state")
    b, L, d = x.shape
    h, p, g, n = mod.heads, mod.head_dim, mod.groups, mod.d_state
    A = -torch.exp(mod.A_log.float())  # SSDSSM keeps A_log (heads,)
    cfg = tvm_config(config) if backend == "tvm" else \
        node_config(node, backend, config)
    out = fn(x.reshape(b, L, h, p), dt, A, B.reshape(b, L, g, n), C.reshape(b, L, g, n),
             chunk_size=node.chunk_size or config.get("CHUNK") or config.get("chunk", 64), D=mod.D,
             z=None if z is None else z.reshape(b, L, h, p), dt_bias=mod.dt_bias,
             initial_states=h0, dt_softplus=mod.dt_softplus, dt_limit=mod.dt_limit,
             return_final_states=node.final_state,
             **_config_kw(cfg))
    if node.final_state:
        return out[0].reshape(b, L, d), out[1]
    return out.reshape(b, L, d)


def _config_kw(cfg) -> dict:
    # the reference (the fallback when Triton is absent) takes no config argument
    return {} if cfg is None else {"config": cfg}


def nested(node, mod, ins: dict, fn, backend: str, config: dict):
    """Nested recursion by the level-synchronous tree (bbt / rnn also with gradients: the
    ssmc::nested_tree op's backward; the beam under autograd)."""
    x = ins["x"]
    sw = mod.scorer.weights() if mod.scorer is not None else None
    return fn(x, mod.cell.weights(), mod.inner, mod.chunk, None, sw, mod.beam)


def dense(node, mod, ins: dict, fn, backend: str, config: dict):
    """Dense selective SSM.  Triton: the sequential kernel at inference; with gradients or
    under torch.compile its Triton forward + adjoint backward pair (ops:
    triton.dense.backward.dense_ssm_trainable) where the kernels run (_triton_trains).  TVM:
    with gradients the sequential kernel and its adjoint kernel (tvm.dense_scan_bwd) where
    _tvm_dense_trains says so.  Otherwise with
    gradients, and wherever the Triton kernels cannot run, the (differentiable) associative
    torch scan."""
    x = ins["x"]
    kw = {}
    if backend == "triton" and (_triton_runs(mod, ins, x) or _triton_trains(x)):
        kw = _config_kw(node_config(node, backend, config))
        if not _triton_runs(mod, ins, x):
            from ssmc.codegen.triton.dense.backward import dense_ssm_trainable as fn
    elif backend == "tvm" and _grad_needed(mod, [x]) and _tvm_dense_trains(x):
        from ssmc.codegen.composite.dense import dense_ssm_sequential as fn
    elif backend == "triton" or _grad_needed(mod, [x]):
        from ssmc.codegen.composite.dense import dense_ssm_associative as fn
    out = fn(x, mod.A_k, mod.B_proj, mod.C_proj, mod.D, mod.transition, ins.get("initial_state"),
             node.final_state, A_0=mod.A_0, **kw)
    return out


def _tvm_dense_trains(x) -> bool:
    """Whether a training call of the TVM dense node runs the sequential kernel with its adjoint
    kernel (ssmc.codegen.tvm.dense_scan_bwd; the projections around the scan stay torch ops
    that autograd differentiates): on the CPU, not traced by torch.compile (the TVM calls are
    opaque to dynamo), for more than one step: at L = 1 the associative scan is no scan at all
    and two kernel calls cost more (lcde fwd+bwd b2, one thread: 0.6 vs 0.9 ms; even at L 2,
    faster from L 3: 1.6 vs 1.2 ms, 31x at L 4096).  fp64 goes to the associative scan inside
    dense_ssm_fast."""
    return x.device.type == "cpu" and x.shape[1] > 1 and not torch.compiler.is_compiling()


def diagonal(node, mod, ins: dict, fn, backend: str, config: dict):
    """S4D / polar diagonal SSM.  With gradients, under torch.compile and wherever the Triton
    kernels cannot run (see _triton_takes), whatever the node's algorithm: the Vandermonde
    kernel K through ssmc::s4d_vandermonde (the backend's forward and transposed-Vandermonde
    backward kernels, traceable as an opaque op; ssmc.runtime.vandermonde), then torch's FFT
    convolution (autograd differentiates it).  Eager inference calls the node's kernel."""
    u = ins["u"]
    Abar, Bbar, C = mod.discrete()
    if backend == "triton" and _triton_takes(mod, u):
        cfg = node_config(node, backend, config)
        # the Triton S4D kernels take u channels-first (b, d, L)
        y = fn(u.transpose(1, 2), Abar, Bbar, C, D=mod.D, conj_pair=mod.conj_pair,
               **_config_kw(cfg))
        return y.transpose(1, 2)
    if backend == "triton" or _grad_needed(mod, [u]) or torch.compiler.is_compiling():
        from ssmc.runtime.vandermonde import BACKENDS, diagonal_conv

        # a backend whose kernels cannot take these tensors falls back to torch inside the op
        return diagonal_conv(u, Abar, Bbar, C, mod.D, mod.conj_pair,
                             backend=backend if backend in BACKENDS else "torch")
    return fn(u, Abar, Bbar, C, mod.D, mod.conj_pair,
              **_config_kw(node_config(node, backend, config)))


def _triton_runs(mod, ins: dict, x) -> bool:
    """Whether a forward-only Triton kernel runs this call: no gradients wanted (parameters or
    inputs), fp32/fp16/bf16 on a GPU (or the CPU under TRITON_INTERPRET=1), not traced by
    torch.compile (the ssmc:: ops' conditions, as in _triton_takes)."""
    from ssmc.runtime.library import node_wants_op

    return not node_wants_op(mod, ins, "triton", x)


def _triton_trains(x) -> bool:
    """Whether a Triton forward + backward pair (ops whose autograd formula is the backward
    kernel: triton_ops that torch.compile traces) can run a call _triton_runs turns away for
    its gradients or for torch.compile: fp32/fp16/bf16 on a GPU (or the CPU under
    TRITON_INTERPRET=1)."""
    from ssmc.runtime.library import KERNEL_DTYPES, _device_ok

    return x.dtype in KERNEL_DTYPES and _device_ok("triton", x)


def _triton_takes(mod, u) -> bool:
    """Whether the Triton S4D kernels can run this call: they have no backward, take fp32/fp16/
    bf16 on a GPU (or the CPU under TRITON_INTERPRET=1), and are not traceable.  These are the
    conditions on which the selective-scan nodes leave the direct call for the ssmc:: ops."""
    from ssmc.runtime.library import node_wants_op

    return not node_wants_op(mod, {"u": u}, "triton", u)


def ssm2d(node, mod, ins: dict, fn, backend: str, config: dict):
    """Chimera's 2-D SSM.  Differentiable on both backends, the operands' torch preparation
    (x_proj / dt_proj included) differentiated by autograd: TVM on the CPU
    (ssmc.codegen.tvm.ssm2d_bwd: the adjoint kernel), Triton on a GPU or the CPU under
    TRITON_INTERPRET=1 (ssmc.codegen.triton.ssm2d.backward: the reverse wavefront).  Both
    also under torch.compile: their kernels are ops (ssmc::ssm2d / ssm2d_bwd:
    ssmc.runtime.ssm2d_op; ssmc::ssm2d_wavefront_triton / _bwd_triton, triton_ops on a
    device).  The reference runs fp64 (the kernels are fp32) and gradients on a device the
    backend does not run on."""
    x = ins["x"]
    if x.dtype == torch.float64:
        return NotImplemented
    if _grad_needed(mod, [x]) or torch.compiler.is_compiling():
        if backend == "triton":
            from ssmc.codegen.triton.ssm2d.backward import applies
            from ssmc.codegen.triton.ssm2d.backward import ssm2d_wavefront_autograd as fn

            if not applies(x):
                return NotImplemented
        elif backend != "tvm" or x.device.type != "cpu":
            return NotImplemented
    from ssmc.codegen.ssm2d_recurrence import ssm2d_operands

    args, dt_softplus = ssm2d_operands(mod, x)
    return fn(*args, D=mod.D, bidirectional=mod.bidirectional, dt_softplus=dt_softplus,
              config=node_config(node, backend, config)).to(x.dtype)


def recurrence(node, mod, ins: dict, fn, backend: str, config: dict):
    """PLRNN latent recurrence.  TVM (CPU): differentiable (the kernel's adjoint recurrence
    backward) and traceable by torch.compile (the ssmc::plrnn op: ssmc.runtime.plrnn_op).
    Triton: the kernel at inference, its forward + adjoint backward pair with
    gradients (`_recurrence_triton`).
    With a folded `conv` epilogue (ins['epilogue'], its LongConv module: passes/fuse.py) the
    kernel also convolves the trajectory with the conv's kernel and the convolved trajectory is
    the result: directly in the kernel at inference (up to plrnn.FUSE_MAX_TAPS taps), by torch's
    FFT on the kernel's trajectory when gradients are needed (autograd differentiates it, the
    conv kernel too when it is learnable).  fp64 and tensors off the CPU run the reference
    (the node, then its epilogue)."""
    s, epi = ins["s"], ins.get("epilogue")
    if backend == "triton":
        return _recurrence_triton(node, mod, s, epi, fn, config)
    if s.dtype == torch.float64 or s.device.type != "cpu":
        return NotImplemented
    cfg = node_config(node, backend, config)
    if epi is None:
        return fn(s, mod.A, mod.W, mod.h0, mod.C, config=cfg)
    if epi.kernel.dtype == torch.float64 or epi.kernel.device.type != "cpu":
        return NotImplemented
    _, zc = fn(s, mod.A, mod.W, mod.h0, mod.C, hrf=epi.kernel, config=cfg)
    return zc


def _recurrence_triton(node, mod, s, epi, fn, config):
    """The Triton PLRNN kernel at inference, with the folded HRF conv in its register ring
    (only the convolved trajectory is written).  With gradients (of the PLRNN's or a learnable
    HRF's parameters, or of s) the Triton forward + adjoint backward pair
    (triton.plrnn.backward.plrnn_trainable, ops that torch.compile traces, so also under
    torch.compile) runs the recurrence and the epilogue module its convolution (torch,
    autograd differentiates it).  For fp64 or off the GPU the reference runs the node and then
    its epilogue."""
    cfg = _config_kw(node_config(node, "triton", config))
    k = None if epi is None else epi.kernel
    if k is not None and (k.dtype not in (torch.float32, torch.float16, torch.bfloat16)
                          or k.device != s.device):
        return NotImplemented
    if _triton_runs(mod, {"s": s}, s) and not (k is not None and torch.is_grad_enabled()
                                               and k.requires_grad):
        if epi is None:
            return fn(s, mod.A, mod.W, mod.h0, mod.C, **cfg)
        return fn(s, mod.A, mod.W, mod.h0, mod.C, hrf=k, return_trajectory=False, **cfg)
    if not _triton_trains(s):
        return NotImplemented
    from ssmc.codegen.triton.plrnn.backward import plrnn_trainable

    z = plrnn_trainable(s, mod.A, mod.W, mod.h0, mod.C, **cfg)
    return z if epi is None else epi(z)


EXECUTORS = {"selective_ssm/mamba1": mamba1, "selective_ssm/ssd": ssd, "nested_recursion": nested,
             "selective_ssm/dense": dense, "diagonal_ssm": diagonal, "ssm2d": ssm2d,
             "recurrence": recurrence}


def for_node(family: str, algorithm: str, backend: str):
    """(executor, kernel function) when a compiled kernel runs this node, else None."""
    if family not in EXECUTORS or not dispatch.available(family, algorithm, backend):
        return None
    try:
        fn = dispatch.kernel(family, algorithm, backend, strict=True)
    except Exception:  # a backend that does not import here: the reference runs instead
        return None
    return EXECUTORS[family], fn
