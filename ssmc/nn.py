"""Drop-in SSM layers for any PyTorch model, backed by ssmc's compiled kernels.

    import ssmc.nn
    mixer = ssmc.nn.Mamba(d_model=256)            # the Mamba-1 mixer block
    y = mixer(x)                                  # x, y: (batch, seqlen, d_model)

Each layer writes a one-layer spec (YAML, `layer.spec`) from its constructor arguments and
compiles it with `ssmc.compile`: it *is* a CompiledModel, so its parameter names are the
reference model's (`layer.reference()` builds the eager oracle of the same spec; state dicts
move both ways), its SSM node runs the kernel chosen for the target (TVM on the CPU, Triton on
a GPU) with the ``ssmc::`` ops' gradients when training, and the reference runs wherever a
kernel is missing.  `use_kernels=False` builds the reference itself.

The layers: Mamba, Mamba2 (the mixer blocks), S4D, LRU (polar complex diagonal), LCDE (dense
input-dependent transition), RIR (nested recursion, a sequence -> one vector), Chimera (2-D SSM
over time x variates) and PLRNN (nonlinear latent recurrence, optionally observed through an
HRF convolution); SpecLayer compiles any spec text.

The Mamba layers' constructor arguments follow mamba-ssm's (``d_model, d_state, d_conv, expand,
dt_rank="auto"``, ...); the others take the names of their reference modules in
ssmc.semantics (``d_state``, ``block_size``, ``chunk``, ``inner``, ``d_latent``, ...).  The
Mamba step-size bias lives on the scan (``ssm.delta_bias`` / ``ssm.dt_bias``), fused into the
kernel, rather than on ``dt_proj``.
"""

from __future__ import annotations

import math

import torch

from ssmc.ir.mamba_mixers import indent, mamba1_mixer, mamba2_mixer
from ssmc.ir.mamba_mixers import yaml_bool as _b
from ssmc.ir.mamba_mixers import yaml_float as _f
from ssmc.runtime.compiled import CompiledModel
from ssmc.semantics.model import GraphModule

__all__ = ["S4D", "Mamba", "Mamba2", "LRU", "LCDE", "RIR", "Chimera", "PLRNN", "SpecLayer"]


class SpecLayer(CompiledModel):
    """A layer defined by a spec text: compiled for `target` ('auto' = this host) with the
    target's tuned records (records=False: none), or the eager reference with
    use_kernels=False.  (seqlen, batch) and `dims` (the values of the spec's other run-time
    dims, e.g. Chimera's variates) are the shape bucket algorithms are chosen for; any shape
    runs."""

    def __init__(self, spec: str, *, target="auto", use_kernels: bool = True, seqlen: int = 1024,
                 batch: int = 2, records=None, device=None, dtype=None, dims: dict | None = None):
        from ssmc.ir.spec import load_spec
        from ssmc.targets import detect_host, load_target

        graph = load_spec(spec)
        self.spec = spec
        with torch.device(device or "cpu"):
            if use_kernels:
                tgt = detect_host() if target == "auto" else (
                    load_target(target) if isinstance(target, str) else target)
                if records is None:  # the tuned records for the target, as ssmc.compile reads
                    try:
                        from ssmc.tune.records import default_records
                    except ImportError:
                        default_records = None
                    records = default_records(tgt) if default_records is not None else None
                super().__init__(graph, tgt, {"batch": batch, "seqlen": seqlen, **(dims or {})},
                                 records or None)
            else:  # the reference: no runner, every node eager
                GraphModule.__init__(self, graph)
                self.kernels, self.source_graph, self.target = {}, graph, None
                self.bindings = {"batch": batch, "seqlen": seqlen, **(dims or {})}
        if dtype is not None:
            self.to(dtype)

    def reference(self) -> GraphModule:
        """The eager oracle of the same spec, holding a copy of this layer's weights."""
        p = next(self.parameters())
        ref = GraphModule(self.source_graph).to(device=p.device, dtype=p.dtype)
        ref.load_state_dict(self.state_dict())
        return ref


class Mamba(SpecLayer):
    """The Mamba-1 mixer (Gu & Dao 2023): in_proj -> causal conv1d + SiLU -> x_proj -> dt_proj
    -> selective scan (softplus(dt + bias), D skip, SiLU(z) gate fused) -> out_proj.
    forward(hidden_states (b, L, d_model)) -> (b, L, d_model)."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank="auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 conv_bias: bool = True, bias: bool = False, **kw):
        d_inner = int(expand * d_model)
        rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner, self.dt_rank = d_inner, rank
        nodes = indent(mamba1_mixer("hidden_states", bias=bias, conv_bias=conv_bias,
                                    ssm_extra=(f"dt_min: {_f(dt_min)}",
                                               f"dt_max: {_f(dt_max)}")), 2)
        spec = f"""\
name: mamba_mixer
dims: {{d_model: {d_model}, d_inner: {d_inner}, d_state: {d_state}, d_conv: {d_conv}, dt_rank: {rank}}}
inputs:
  hidden_states: {{shape: [batch, seqlen, d_model]}}
nodes:
{nodes}outputs: [out_proj]
"""
        super().__init__(spec, **kw)


class Mamba2(SpecLayer):
    """The Mamba-2 mixer (Dao & Gu 2024): in_proj -> (z, xBC, dt); causal conv1d + SiLU on xBC
    -> SSD (scalar A per head, softplus(dt + dt_bias), D skip) -> RMSNorm(y * SiLU(z))
    (mamba-ssm's gated norm with norm_before_gate=False) -> out_proj.
    forward(hidden_states (b, L, d_model)) -> (b, L, d_model)."""

    def __init__(self, d_model: int, d_state: int = 128, d_conv: int = 4, expand: int = 2,
                 headdim: int = 64, ngroups: int = 1, chunk_size: int = 256,
                 dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_limit=(0.0, float("inf")), rmsnorm: bool = True, conv_bias: bool = True,
                 bias: bool = False, **kw):
        d_inner = int(expand * d_model)
        if d_inner % headdim:
            raise ValueError(f"headdim ({headdim}) must divide expand * d_model ({d_inner})")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner, self.headdim, self.nheads, self.ngroups = d_inner, headdim, \
            d_inner // headdim, ngroups
        nodes = indent(mamba2_mixer("hidden_states", bias=bias, conv_bias=conv_bias,
                                    chunk_size=chunk_size, dt_limit=dt_limit,
                                    norm="norm" if rmsnorm else None,
                                    ssm_extra=(f"dt_min: {_f(dt_min)}",
                                               f"dt_max: {_f(dt_max)}")), 2)
        spec = f"""\
name: mamba2_mixer
dims:
  d_model: {d_model}
  d_inner: {d_inner}
  head_dim: {headdim}
  n_heads: d_inner / head_dim
  n_groups: {ngroups}
  d_state: {d_state}
  d_conv: {d_conv}
  conv_dim: d_inner + 2*n_groups*d_state
inputs:
  hidden_states: {{shape: [batch, seqlen, d_model]}}
nodes:
{nodes}outputs: [out_proj]
"""
        super().__init__(spec, **kw)


class S4D(SpecLayer):
    """The S4D layer (Gu et al. 2022): a diagonal time-invariant SSM per channel,
    u (b, L, d_model) -> y (b, L, d_model) (no mixing: add your own activation / linear).
    init: lin | inv | real | legs; complex=False takes the real S4D-Real state."""

    def __init__(self, d_model: int, d_state: int = 64, complex: bool = True, init: str = "lin",
                 discretization: str = "zoh", dt_min: float = 0.001, dt_max: float = 0.1,
                 D: bool = True, learn_dt: bool = True, conj_pair: bool = True, **kw):
        if not complex and init == "lin":
            init = "real"
        self.d_model, self.d_state = d_model, d_state
        spec = f"""\
name: s4d_layer
dims: {{d_model: {d_model}, d_state: {d_state}}}
inputs:
  u: {{shape: [batch, seqlen, d_model]}}
nodes:
  - name: ssm
    op: diagonal_ssm
    inputs: [u]
    d_state: d_state
    complex: {_b(complex)}
    init: {init}
    discretization: {discretization}
    conj_pair: {_b(conj_pair)}
    learn_dt: {_b(learn_dt)}
    D: {_b(D)}
    dt_min: {_f(dt_min)}
    dt_max: {_f(dt_max)}
outputs: [ssm]
"""
        super().__init__(spec, **kw)


class LRU(SpecLayer):
    """The linear recurrent unit's recurrence (Orvieto et al. 2023; ir/lru_polar.yaml): a complex
    diagonal SSM in polar form, Abar = exp(-exp(nu)) e^{i exp(phi)} (|Abar| < 1 whatever the
    weights), the input scaled by gamma = sqrt(1 - |Abar|^2), y = 2 Re <C, h> + D u (conj_pair)
    or Re <C, h>.  u (b, L, d_model) -> y (b, L, d_model) (no mixing: the zoo block adds
    layernorm, GELU and a linear around it)."""

    def __init__(self, d_model: int, d_state: int = 64, conj_pair: bool = True, D: bool = True,
                 **kw):
        self.d_model, self.d_state = d_model, d_state
        spec = f"""\
name: lru_layer
dims: {{d_model: {d_model}, d_state: {d_state}}}
inputs:
  u: {{shape: [batch, seqlen, d_model]}}
nodes:
  - name: lru
    op: diagonal_ssm
    inputs: [u]
    d_state: d_state
    complex: true
    parameterization: polar
    conj_pair: {_b(conj_pair)}
    D: {_b(D)}
outputs: [lru]
"""
        super().__init__(spec, **kw)


class LCDE(SpecLayer):
    """A linear neural CDE layer (Cirone et al. 2024; ir/lcde.yaml): the dense, input-dependent
    transition h_t = A(x_t) h_{t-1} + B_proj x_t, y_t = C_proj h_t + D x_t with
    A(x) = I + A_0 + sum_k x^k A_k ("linear") or expm(A_0 + sum_k x^k A_k) ("expm"),
    block-diagonal with blocks of block_size (d_state when None).
    x (b, L, d_model) -> y (b, L, d_model)."""

    def __init__(self, d_model: int, d_state: int = 16, block_size: int | None = None,
                 transition: str = "linear", D: bool = True, **kw):
        if block_size is not None and d_state % block_size:
            raise ValueError(f"block_size ({block_size}) must divide d_state ({d_state})")
        self.d_model, self.d_state, self.block_size = d_model, d_state, block_size or d_state
        block = "" if block_size is None else f"\n    block: {int(block_size)}"
        spec = f"""\
name: lcde_layer
dims: {{d_model: {d_model}, d_state: {d_state}}}
inputs:
  x: {{shape: [batch, seqlen, d_model]}}
nodes:
  - name: cde
    op: selective_ssm
    variant: dense
    inputs: [x]
    d_state: d_state{block}
    transition: {transition}
    D: {_b(D)}
outputs: [cde]
"""
        super().__init__(spec, **kw)


class RIR(SpecLayer):
    """Recursion in recursion (Ray Chowdhury & Caragea 2023; ir/rir.yaml): the sequence in
    chunks of `chunk`, each reduced by a balanced tree of gated recursive cells (inner='bbt';
    'rnn': a left-to-right chain; 'beam': a beam search over merge orders with `beam` beams),
    the chunk results by the next level, down to one vector.
    x (b, L, d_model) -> (b, d_model)."""

    def __init__(self, d_model: int, chunk: int = 30, inner: str = "bbt", beam: int = 7, **kw):
        self.d_model, self.chunk, self.inner, self.beam = d_model, chunk, inner, beam
        spec = f"""\
name: rir_layer
dims: {{d_model: {d_model}}}
inputs:
  x: {{shape: [batch, seqlen, d_model]}}
nodes:
  - {{name: encoder, op: nested_recursion, inputs: [x], chunk: {int(chunk)}, inner: {inner}, beam: {int(beam)}}}
outputs: [encoder]
"""
        super().__init__(spec, **kw)


class Chimera(SpecLayer):
    """Chimera's 2-D SSM (Behrouz et al. 2024; ir/chimera.yaml) over a (time, variate) grid:
    x (b, L, V, d_model) -> (b, L, V, d_model), the variate axis run both ways and summed
    (bidirectional).  selective: B, C and the steps from x_proj / dt_proj of each cell.
    `variates` is the number of variates the algorithm is chosen for (the shape bucket, with
    seqlen and batch); inputs with any V run."""

    def __init__(self, d_model: int, d_state: int = 16, variates: int = 8,
                 selective: bool = True, bidirectional: bool = True, dt_min: float = 0.001,
                 dt_max: float = 0.1, **kw):
        self.d_model, self.d_state, self.variates = d_model, d_state, variates
        dims = {"variates": int(variates), **(kw.pop("dims", None) or {})}
        spec = f"""\
name: chimera_layer
dims: {{d_model: {d_model}, d_state: {d_state}, variates: symbolic}}
inputs:
  x: {{shape: [batch, seqlen, variates, d_model]}}
nodes:
  - name: ssm2d
    op: ssm2d
    inputs: [x]
    d_state: d_state
    selective: {_b(selective)}
    bidirectional: {_b(bidirectional)}
    dt_min: {_f(dt_min)}
    dt_max: {_f(dt_max)}
outputs: [ssm2d]
"""
        super().__init__(spec, dims=dims, **kw)


class PLRNN(SpecLayer):
    """A piecewise-linear RNN (convSSM's latent model; ir/convssm.yaml):
    z_t = A z_{t-1} + W relu(z_{t-1}) + h0 + C s_t, s (b, L, d_input) -> z (b, L, d_latent).
    hrf_len > 0 convolves the trajectory with a canonical hemodynamic response of that many
    steps of `tr` seconds (fixed unless hrf_learnable), as the fMRI observation model does."""

    def __init__(self, d_latent: int, d_input: int, hrf_len: int = 0, tr: float = 2.0,
                 hrf_learnable: bool = False, **kw):
        if hrf_len < 0:
            raise ValueError(f"hrf_len must be >= 0, got {hrf_len}")
        self.d_latent, self.d_input, self.hrf_len = d_latent, d_input, hrf_len
        hrf, last = "", "plrnn"
        if hrf_len:
            hrf = (f"  - {{name: hrf, op: conv, inputs: [plrnn], length: {int(hrf_len)}, init: hrf, "
                   f"tr: {_f(tr)}, learnable: {_b(hrf_learnable)}}}\n")
            last = "hrf"
        spec = f"""\
name: plrnn_layer
dims: {{d_latent: {d_latent}, d_input: {d_input}}}
inputs:
  s: {{shape: [batch, seqlen, d_input]}}
nodes:
  - {{name: plrnn, op: recurrence, cell: plrnn, inputs: [s], latent: d_latent}}
{hrf}outputs: [{last}]
"""
        super().__init__(spec, **kw)
