"""What is tuned: the SSM nodes of a spec at a shape bucket, and the glue nodes the target runs
on tunable kernels of their own (the CPU's causal conv1d and rmsnorm), grouped by record key;
and the kernel calls a trial times (the same calls the runtime makes, on synthetic inputs of
the node's shape, so that a tuned config is measured where it will run)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ssmc.errors import SsmcError
from ssmc.tune.records import RecordKey, key_for_node

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Workload:
    """One study's subject: a node family at one record key, with a representative node.  A
    glue node (conv1d, rmsnorm) has one kernel, named in passes.schedule.GLUE_KERNELS, where an
    SSM node has algorithms."""

    key: RecordKey
    node: object  # the lowered node (attributes and the compiler's default choice in .meta)
    nodes: list  # qualified names of every node of the spec this key covers
    batch: int
    seqlen: int  # the length asked for (the key holds its power-of-two bucket)
    channels: int
    graph: object = None  # the lowered (sub)graph holding the node
    shape: tuple = ()  # the node's input, concrete (a 2-D SSM's (b, T, V, d))

    @property
    def family(self) -> str:
        return self.key.family

    @property
    def glue(self) -> bool:
        return "algorithm" not in self.node.meta

    @property
    def default_algorithm(self) -> str:
        if self.glue:
            from ssmc.passes.schedule import GLUE_KERNELS

            return GLUE_KERNELS[self.node.OP]
        return self.node.meta["algorithm"]

    @property
    def default_config(self) -> dict:
        return dict(self.node.meta.get("config") or {})

    @property
    def candidates(self) -> tuple:
        """The algorithms the compiler may pick for this node (one when the spec asked)."""
        from ssmc.passes.select_algorithm import candidates

        if self.glue:
            return (self.default_algorithm,)
        if self.node.algorithm != "auto":
            return (self.node.algorithm,)
        return candidates(self.node)

    def algorithms(self, backend: str) -> list:
        """The candidates that have a kernel on `backend` (a glue kernel is a TVM one)."""
        if self.glue:
            return list(self.candidates) if backend == "tvm" else []
        from ssmc.runtime import dispatch

        return [a for a in self.candidates if dispatch.available(self.family, a, backend)]

    def describe(self) -> str:
        node = self.node
        if self.node.OP == "conv1d":
            what = f"width={node.kernel} {node.activation}"
        elif self.node.OP == "rmsnorm":
            what = f"groups={node.groups}"
        else:
            what = f"d_state={self.key.d_state}"
        return (f"{self.family} batch={self.batch} seqlen={self.seqlen} channels={self.channels} "
                f"{what} {self.key.dtype}")


def workloads(graph, target, bindings: dict) -> list[Workload]:
    """The SSM nodes of `graph` lowered for `target` without records (so .meta holds the
    compiler's own default), then its glue nodes with a tunable kernel there (the schedule pass
    named it in .meta['kernel']), one Workload per record key."""
    from ssmc.passes import PassContext, run_pipeline
    from ssmc.passes.rewrite import concrete
    from ssmc.passes.schedule import GLUE_KERNELS
    from ssmc.passes.select_algorithm import family

    ctx = PassContext(target=target, bindings=dict(bindings), records=None, dtype=graph.dtype)
    lowered = run_pipeline(graph, ctx)
    walked = list(lowered.walk())
    ssm = [(q, n, g) for q, n, g in walked if "algorithm" in n.meta and n.OP != "conv"]
    glue = [(q, n, g) for q, n, g in walked
            if n.OP in GLUE_KERNELS and "algorithm" not in n.meta and "kernel" in n.meta]
    found: dict = {}
    for qname, node, g in ssm + glue:
        key = key_for_node(family(node), node, g, ctx.bindings, ctx.dtype)
        if key in found:
            found[key].nodes.append(qname)
            continue
        x = node.inputs.get("x") or node.inputs.get("u") or node.inputs.get("s")
        shape = concrete(g, x, ctx.bindings)
        found[key] = Workload(key, node, [qname], shape[0], shape[1], shape[-1], g,
                              tuple(shape))
    return list(found.values())


# ---- synthetic inputs ------------------------------------------------------------------------

def _gen(seed: int):
    return torch.Generator().manual_seed(seed)


def _sampler(w: Workload, device, gen):
    """rand(*shape, dt, scale, offset): normal samples in w's dtype (or dt) on `device`;
    device='meta' gives shapes only (what the Triton AOT compile needs)."""
    dtype = TORCH_DTYPES.get(w.key.dtype, torch.float32)

    def rand(*shape, dt=dtype, scale=1.0, offset=0.0):
        if device == "meta":
            return torch.empty(shape, dtype=dt, device="meta")
        return (torch.randn(shape, generator=gen) * scale + offset).to(dt).to(device)

    return rand


def _placed(t: torch.Tensor, device) -> torch.Tensor:
    """A CPU tensor on `device`; on 'meta' only its shape and dtype."""
    t = t.detach()
    return torch.empty_like(t, device="meta") if device == "meta" else t.to(device)


def mamba1_inputs(w: Workload, layout: str, device="cpu", seed: int = 0) -> dict:
    """Arguments of a Mamba-1 selective scan of w's shape: layout 'bld' as the TVM executor
    passes them, 'bdl' as the Triton kernels (mamba-ssm) take them.  device='meta' gives shapes
    only (what the Triton AOT compile needs)."""
    node = w.node
    b, L, d, N, g = w.batch, w.seqlen, w.channels, node.d_state, node.groups
    gen = _gen(seed)
    rand = _sampler(w, device, gen)
    seq = (b, L, d) if layout == "bld" else (b, d, L)
    if g == 1:
        bc = (b, L, N) if layout == "bld" else (b, N, L)
    else:
        bc = (b, L, g, N) if layout == "bld" else (b, g, N, L)
    if node.complex:
        if device == "meta":
            A = torch.empty(d, N, dtype=torch.complex64, device="meta")
        else:
            A = torch.complex(-torch.rand(d, N, generator=gen) - 0.1,
                              torch.randn(d, N, generator=gen)).to(device)
        B = rand(*bc, dt=torch.complex64) if device == "meta" else torch.complex(
            rand(*bc, dt=torch.float32), rand(*bc, dt=torch.float32))
        C = B.clone() if device != "meta" else rand(*bc, dt=torch.complex64)
    else:
        A = -torch.rand(d, N, generator=gen).to(device) - 0.1 if device != "meta" else \
            torch.empty(d, N, device="meta")
        B, C = rand(*bc), rand(*bc)
    kw = dict(u=rand(*seq), delta=rand(*seq, scale=0.5, offset=-2.0), A=A, B=B, C=C,
              delta_softplus=node.delta_softplus, return_last_state=node.final_state)
    if node.D:
        kw["D"] = rand(d, dt=torch.float32)
    if node.delta_bias:
        kw["delta_bias"] = rand(d, dt=torch.float32, scale=0.1)
    if "z" in node.inputs:
        kw["z"] = rand(*seq)
    if node.complex:
        kw["conj_pair"] = node.conj_pair
    return kw


def ssd_inputs(w: Workload, device="cpu", seed: int = 0) -> dict:
    """Arguments of a Mamba-2 SSD of w's shape (mamba_chunk_scan_combined's)."""
    node = w.node
    b, L, d, n, g, h = w.batch, w.seqlen, w.channels, node.d_state, node.groups, node.heads
    p = d // h
    gen = _gen(seed)
    rand = _sampler(w, device, gen)
    kw = dict(x=rand(b, L, h, p), dt=rand(b, L, h, scale=0.5, offset=-2.0),
              A=-torch.rand(h, generator=gen).to(device) - 0.1 if device != "meta" else
              torch.empty(h, device="meta"),
              B=rand(b, L, g, n), C=rand(b, L, g, n), dt_softplus=node.delta_softplus,
              return_final_states=node.final_state)
    if node.chunk_size:
        kw["chunk_size"] = node.chunk_size
    if node.D:
        kw["D"] = rand(h, dt=torch.float32)
    if node.delta_bias:
        kw["dt_bias"] = rand(h, dt=torch.float32, scale=0.1)
    if "z" in node.inputs:
        kw["z"] = rand(b, L, h, p)
    if node.dt_limit is not None:
        kw["dt_limit"] = tuple(node.dt_limit)
    return kw


def s4d_inputs(w: Workload, device="cpu", seed: int = 0) -> dict:
    """Arguments of an S4D layer of w's shape as the Triton kernels take them (s4d_recurrent's
    and s4d_conv's): u channels-first (b, d, L) and the discrete parameters of the node's own
    reference module (its init and discretization), as executors.diagonal passes them."""
    from ssmc.semantics.model import diagonal_module

    with torch.random.fork_rng(devices=[]):  # the module draws from the global generator
        torch.manual_seed(seed)
        mod = diagonal_module(w.node, w.channels)
    with torch.no_grad():
        Abar, Bbar, C = mod.discrete()
    rand = _sampler(w, device, _gen(seed))
    kw = dict(u=rand(w.batch, w.channels, w.seqlen), Abar=_placed(Abar, device),
              Bbar=_placed(Bbar, device), C=_placed(C, device), conj_pair=mod.conj_pair)
    if mod.D is not None:
        kw["D"] = _placed(mod.D, device)
    return kw


def glue_inputs(w: Workload, device="cpu", seed: int = 0) -> dict:
    """Arguments of a glue node's kernel of w's shape (ssmc.codegen.tvm.decode's conv1d and
    rmsnorm): x channels-last (b, L, c) and the node's parameters as its module holds them."""
    node = w.node
    gen = _gen(seed)
    rand = _sampler(w, device, gen)
    x = rand(w.batch, w.seqlen, w.channels)
    if node.OP == "conv1d":
        return dict(x=x, weight=rand(w.channels, 1, node.kernel, dt=torch.float32, scale=0.5),
                    bias=rand(w.channels, dt=torch.float32, scale=0.1) if node.bias else None,
                    activation="silu" if node.activation == "silu" else None)
    return dict(x=x, weight=rand(w.channels, dt=torch.float32, scale=0.1, offset=1.0),
                eps=float(node.eps), groups=int(node.groups))


def glue_reference(w: Workload, inputs: dict):
    """The oracle's answer for glue_inputs(w): the reference modules' own functions."""
    from ssmc.semantics import glue

    if w.node.OP == "conv1d":
        return glue.causal_conv1d(inputs["x"], inputs["weight"], inputs["bias"],
                                  inputs["activation"])
    norm = glue.RMSNorm(w.channels, eps=inputs["eps"], groups=inputs["groups"])
    with torch.no_grad():
        norm.weight.copy_(inputs["weight"])
        return norm(inputs["x"])


# Node families whose kernels a trial runs through the runtime's executor (runtime.executors)
# with the node's reference module: their kernels take many parameters prepared from the
# module (the 2-D SSM's projections, the PLRNN's and its folded HRF's), which the executor is
# the one place to prepare.
EXECUTOR_RUN = {("ssm2d", "tvm"), ("recurrence", "tvm"), ("diagonal_ssm", "tvm"),
                ("ssm2d", "triton"), ("recurrence", "triton"), ("selective_ssm/dense", "triton")}


def module_inputs(w: Workload, device="cpu", seed: int = 0) -> dict:
    """{'module', 'epilogue', 'x'}: the node's reference module (and its folded epilogue's)
    with parameters drawn as the reference model draws them, and an input of the node's
    shape."""
    from ssmc.semantics.model import node_module

    with torch.random.fork_rng(devices=[]):  # the modules draw from the global generator
        torch.manual_seed(seed)
        mod = node_module(w.graph, w.node).to(device)
        epi = w.node.meta.get("epilogue")
        epi_mod = node_module(w.graph, epi).to(device) if epi is not None else None
    for m in (mod, epi_mod):
        if m is not None:
            m.eval().requires_grad_(False)
    x = _sampler(w, device, _gen(seed))(*w.shape)
    return {"module": mod, "epilogue": epi_mod, "x": x}


def launch_example(w: Workload, backend: str = "triton") -> dict:
    """The kernel's own arguments for w's shape on the meta device: what a Triton family's
    launch plan and AOT build take (an executor-run family's, prepared from its module as the
    executor prepares them)."""
    if (w.family, backend) not in EXECUTOR_RUN:
        return kernel_inputs(w, backend, device="meta")
    m = module_inputs(w, device="meta")
    mod, x, epi = m["module"], m["x"], m["epilogue"]
    if w.family == "ssm2d":
        from ssmc.codegen.ssm2d_recurrence import ssm2d_operands

        args, softplus = ssm2d_operands(mod, x)
        names = ("x", "A1", "A2", "A3", "A4", "B1", "B2", "C1", "C2", "dt_t", "dt_v")
        return dict(zip(names, args), D=mod.D, bidirectional=mod.bidirectional,
                    dt_softplus=softplus)
    if w.family == "recurrence":
        kw = dict(s=x, A=mod.A, W=mod.W, h0=mod.h0, C=mod.C)
        if epi is not None:  # the folded HRF conv, in the kernel's register ring
            kw.update(hrf=epi.kernel, return_trajectory=False)
        return kw
    return dict(x=x, A_k=mod.A_k, W_B=mod.B_proj, W_C=mod.C_proj, D=mod.D, mode=mod.transition,
                A_0=mod.A_0)


def _executor_call(w: Workload, algorithm: str, config: dict, backend: str, inputs: dict):
    """The node's executor on module_inputs, as the compiled model calls it."""
    from ssmc.runtime import executors

    node = copy.copy(w.node)
    node.meta = {k: v for k, v in w.node.meta.items() if k != "kernel_config"}
    node.meta["algorithm"] = algorithm
    # spelled out, as a record holds it (a partial dict would leave the kernel's defaults)
    config = kernel_knobs(w, backend, algorithm, config)
    executor, fn = executors.for_node(w.family, algorithm, backend)
    port = next(iter(node.inputs))
    ins = {port: inputs["x"]}
    if inputs["epilogue"] is not None:
        ins["epilogue"] = inputs["epilogue"]

    def run():
        with torch.no_grad():
            return executor(node, inputs["module"], ins, fn, backend, config)

    return run


def kernel_inputs(w: Workload, backend: str, device="cpu", seed: int = 0) -> dict:
    if (w.family, backend) in EXECUTOR_RUN:
        return module_inputs(w, device, seed)
    if w.glue and backend == "tvm":
        return glue_inputs(w, device, seed)
    if w.family == "selective_ssm/mamba1":
        return mamba1_inputs(w, "bld" if backend == "tvm" else "bdl", device, seed)
    if w.family == "selective_ssm/ssd":
        return ssd_inputs(w, device, seed)
    if w.family == "diagonal_ssm" and backend == "triton":  # (TVM: EXECUTOR_RUN above)
        return s4d_inputs(w, device, seed)
    raise SsmcError(f"no tunable {backend} kernel for {w.family}")


def reference_output(w: Workload, inputs: dict, backend: str):
    """The oracle's answer for kernel_inputs(w, backend), in the kernel's layout."""
    from ssmc.semantics.selective import selective_scan_ref, ssd_ref

    if (w.family, backend) in EXECUTOR_RUN:  # the modules' own forward
        with torch.no_grad():
            out = inputs["module"](inputs["x"])
            return out if inputs["epilogue"] is None else inputs["epilogue"](out)
    cpu = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    if w.glue:
        return glue_reference(w, cpu)
    if w.family == "diagonal_ssm":
        return s4d_reference(**cpu)
    if w.family == "selective_ssm/ssd":
        cpu.pop("chunk_size", None)
        return ssd_ref(**cpu)
    if backend == "tvm":  # 'bld' -> the oracle's 'bdl' and back
        for name in ("u", "delta", "z"):
            if name in cpu:
                cpu[name] = cpu[name].transpose(1, 2)
        for name in ("B", "C"):
            t = cpu[name]
            cpu[name] = t.permute(0, 2, 1) if t.dim() == 3 else t.permute(0, 2, 3, 1)
    out = selective_scan_ref(**cpu)
    if backend == "tvm":
        return (out[0].transpose(1, 2), out[1]) if isinstance(out, tuple) else out.transpose(1, 2)
    return out


def s4d_reference(u, Abar, Bbar, C, D=None, conj_pair=True):
    """The S4D oracle on s4d_inputs' arguments: the Vandermonde kernel by powers and the FFT
    convolution (the same values as the recurrence, without its Python loop over L)."""
    from ssmc.semantics.diagonal import s4d_fft_conv, s4d_kernel

    return s4d_fft_conv(u, s4d_kernel(Abar, Bbar, C, u.shape[-1], conj_pair), D)


def kernel_call(w: Workload, algorithm: str, config: dict, backend: str, inputs: dict):
    """A no-argument function that runs the kernel that would run this node with `config`,
    exactly as the runtime executors call it."""
    from ssmc.runtime import dispatch, executors

    if (w.family, backend) in EXECUTOR_RUN:
        return _executor_call(w, algorithm, config, backend, inputs)
    if w.glue:  # as runtime.compiled._cpu_glue calls them
        from ssmc.codegen.tvm import decode

        cfg = executors.tvm_glue_config(w.node.OP, config)
        fn = decode.causal_conv1d if w.node.OP == "conv1d" else decode.rmsnorm
        return lambda: fn(**inputs, config=cfg)
    fn = dispatch.kernel(w.family, algorithm, backend, strict=True)
    if backend == "tvm":
        cfg = executors.tvm_config(config)
        if w.family == "selective_ssm/ssd":  # channels-last only: no layout argument
            return lambda: fn(**inputs, config=cfg)
        return lambda: fn(**inputs, layout="bld", config=cfg)
    cfg = executors.triton_config(w.family, algorithm, config)
    return lambda: fn(**inputs, config=cfg)


def kernel_knobs(w: Workload, backend: str, algorithm: str, config: dict) -> dict:
    """A config in the kernel's own knob names with every knob spelled out: a schedule-pass
    dict (BLOCK_D, CHUNK) or a space's partial one -> what a record holds and a trial means."""
    import dataclasses

    from ssmc.runtime import executors

    if w.glue and w.node.OP == "rmsnorm":
        from ssmc.codegen.tvm.config import default_config

        cfg = executors.tvm_glue_config("rmsnorm", config)
        return {"vector_width": (cfg.vector_width if cfg else 0) or
                default_config("llvm").vector_width,  # what decode.rmsnorm resolves 0 to
                "parallel": cfg.parallel if cfg else True}
    if backend == "tvm" and (w.family, backend) in EXECUTOR_RUN:  # host default + knobs
        if w.family == "ssm2d":  # the loop order is the algorithm's (a record names it)
            from ssmc.codegen.ssm2d_recurrence import ssm2d_config

            cfg = ssm2d_config("tvm", algorithm, {})
        elif w.family == "diagonal_ssm":
            if algorithm != "sequential":
                return {}  # the FFT path has no knobs: the tuner weighs the algorithm only
            from ssmc.codegen.tvm.diagonal_scan_tir import DiagonalScanConfig

            cfg = DiagonalScanConfig()
        else:
            from ssmc.codegen.tvm.plrnn import default_config

            cfg = default_config()
        known = {f.name for f in dataclasses.fields(cfg)} - {"order"}
        return cfg.replace(**{k: v for k, v in config.items() if k in known}).as_dict()
    if backend == "tvm":  # the conv1d's kernel takes the selective scan's Config
        cfg = executors.tvm_config(config)
        if cfg is None:
            from ssmc.codegen.tvm.config import default_config, default_ssd_config

            cfg = default_ssd_config() if w.family == "selective_ssm/ssd" else \
                default_config("llvm")
        return cfg.as_dict()
    cfg = executors.triton_config(w.family, algorithm, config)
    if cfg is None:
        from ssmc.codegen.triton.families import get_family

        cfg = get_family(executors.triton_family(w.family, algorithm)).config()
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
