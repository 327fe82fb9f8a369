"""nn.Modules over the SSM oracles: parameters, initialisation and a forward that calls the
functional references.  Activations are channel-last (b, L, d); the functions they call use
their own layouts and the modules transpose.

Every module keeps its parameters in fp32 (complex ones as real (..., 2) pairs, which is also
what a backend without complex types sees), computes in fp32 and returns the input's dtype.
Modules build on ``device="meta"`` without computing anything: ``reset_parameters`` skips meta
tensors.  Each records its constructor arguments in ``_ssmc_config`` so that ``mup.apply_mup``
can build a copy at base widths.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ssmc.semantics import init as I
from ssmc.semantics.dense import dense_ssm
from ssmc.semantics.diagonal import discretize, polar_discrete, s4d_fft_conv, s4d_kernel, \
    s4d_recurrence
from ssmc.semantics.scan_assoc import ssd_chunked_ref
from ssmc.semantics.selective import selective_scan_ref, ssd_ref
from ssmc.semantics.start import START_MODES, START_TARGETS, start_perturb

__all__ = ["DiagonalSSM", "SelectiveSSM", "Mamba1SSM", "SSDSSM", "DenseSSM"]


def _config(local_vars: dict) -> dict:
    """Constructor arguments from ``locals()`` at the top of __init__ (device excluded)."""
    return {k: v for k, v in local_vars.items() if k not in ("self", "__class__", "device")}


def _positive_int(name: str, v) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")


def _choice(name: str, v, options) -> None:
    if v not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {v!r}")


def _dt_range(dt_min: float, dt_max: float) -> None:
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")


def _check_shape(name: str, t, shape) -> None:
    if t is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def _tensor(register, name: str, shape, learn: bool, device) -> None:
    """Register an empty fp32 tensor as a Parameter (learn) or a buffer; reset fills it."""
    t = torch.empty(shape, dtype=torch.float32, device=device)
    if learn:
        register.register_parameter(name, nn.Parameter(t))
    else:
        register.register_buffer(name, t)


def _complex_view(t: torch.Tensor) -> torch.Tensor:
    """(..., 2) real pairs -> (...) complex64."""
    return torch.view_as_complex(t.float().contiguous())


def _as_pairs(c: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(c.to(torch.complex64))


# --- S4D ------------------------------------------------------------------------------------

class DiagonalSSM(nn.Module):
    """Diagonal time-invariant SSM (S4D, MODELS.md section 1; polar form, section 5).

    forward(u: (b, L, d_model)) -> (b, L, d_model).

    ``d_state`` is S4D's N: with complex modes and ``conj_pair`` N/2 complex modes are stored
    (each stands for a conjugate pair, y = 2 Re C x); without ``conj_pair`` all N are stored
    and y = Re C x; with ``complex=False`` the state is real (S4D-Real) and y = C x.

    Parameters (fp32; complex ones as (..., 2) real pairs):
      s4d: log_dt (d,) [a buffer unless learn_dt], A_log_re (d, n) with Re A = -exp(A_log_re),
           A_im (d, n) (complex only);
      polar: nu, phi (d, n) with Abar = exp(-exp(nu)) e^{i exp(phi)} and the input scaled by
           gamma = sqrt(1 - |Abar|^2); no step size;
      B (d, n[, 2]) = 1 [a buffer unless learn_B], C (d, n[, 2]) ~ N(0, 1), D (d,) ~ N(0, 1).
    ``method`` picks the FFT convolution with the Vandermonde kernel or the recurrence.
    """

    # mup.py's roles: the (d, n) tensors act elementwise per state; C is read out over the
    # state axis, which only the polar form's normalised modes make a width (see mup.py).
    _MUP_ELEMENTWISE = {"B": "vector", "A_log_re": "vector", "A_im": "vector", "nu": "vector",
                        "phi": "vector", "C": "vector"}

    def __init__(self, d_model, d_state, complex=True, discretization="zoh", init="lin",
                 conj_pair=True, learn_dt=True, dt_min=1e-3, dt_max=1e-1, D=True,
                 parameterization="s4d", method="fft", *, learn_B=True, r_min=0.9,
                 r_max=0.999, max_phase=2 * math.pi, device=None):
        self._ssmc_config = _config(locals())
        super().__init__()
        _positive_int("d_model", d_model)
        _positive_int("d_state", d_state)
        _choice("discretization", discretization, ("zoh", "bilinear"))
        _choice("init", init, ("lin", "inv", "real", "legs"))
        _choice("parameterization", parameterization, ("s4d", "polar"))
        _choice("method", method, ("fft", "recurrence"))
        _dt_range(dt_min, dt_max)
        if not complex and init != "real":
            raise ValueError(f"init={init!r} gives complex A: it needs complex=True "
                             "(a real state takes init='real')")
        if not complex and parameterization == "polar":
            raise ValueError("parameterization='polar' needs complex=True")
        if complex and conj_pair and d_state % 2:
            raise ValueError(f"d_state must be even with complex=True, conj_pair=True "
                             f"(N/2 conjugate pairs), got {d_state}")
        self.d_model, self.d_state = d_model, d_state
        self.complex, self.conj_pair = complex, conj_pair and complex
        self.discretization, self.init, self.method = discretization, init, method
        self.parameterization = parameterization
        self.dt_min, self.dt_max = dt_min, dt_max
        self.r_min, self.r_max, self.max_phase = r_min, r_max, max_phase
        self.n_modes = d_state // 2 if self.conj_pair else d_state
        self.mup_rules = dict(self._MUP_ELEMENTWISE)
        if parameterization == "polar":
            self.mup_rules["C"] = ("output", (1,))

        d, n = d_model, self.n_modes
        pair = (2,) if complex else ()
        if parameterization == "s4d":
            _tensor(self, "log_dt", (d,), learn_dt, device)
            _tensor(self, "A_log_re", (d, n), True, device)
            if complex:
                _tensor(self, "A_im", (d, n), True, device)
        else:
            _tensor(self, "nu", (d, n), True, device)
            _tensor(self, "phi", (d, n), True, device)
        _tensor(self, "B", (d, n, *pair), learn_B, device)
        _tensor(self, "C", (d, n, *pair), True, device)
        if D:
            _tensor(self, "D", (d,), True, device)
        else:
            self.D = None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.C.is_meta:
            return
        d, n = self.d_model, self.n_modes
        if self.parameterization == "s4d":
            self.log_dt.copy_(I.log_dt_init(d, self.dt_min, self.dt_max))
            A = I.s4d_init(self.init, n).to(torch.complex64)  # S4D-Real: imaginary part 0
            self.A_log_re.copy_(torch.log(-A.real).expand(d, n))
            if self.complex:
                self.A_im.copy_(A.imag.expand(d, n))
        else:
            nu, phi = I.polar_init((d, n), self.r_min, self.r_max, self.max_phase)
            self.nu.copy_(nu)
            self.phi.copy_(phi)
        if self.complex:
            self.B.copy_(_as_pairs(torch.ones(d, n, dtype=torch.complex64)))
            self.C.copy_(_as_pairs(I.complex_normal((d, n))))
        else:
            self.B.fill_(1.0)
            self.C.copy_(torch.randn(d, n))
        if self.D is not None:
            self.D.copy_(torch.randn(d))

    def continuous_A(self) -> torch.Tensor:
        """A (d, n): -exp(A_log_re) + i A_im (s4d parameterisation only)."""
        re = -torch.exp(self.A_log_re.float())
        return torch.complex(re, self.A_im.float()) if self.complex else re

    def discrete(self):
        """(Abar, Bbar, C), each (d, n): what the kernel and the recurrence consume."""
        B = _complex_view(self.B) if self.complex else self.B.float()
        C = _complex_view(self.C) if self.complex else self.C.float()
        if self.parameterization == "polar":
            Abar, Bbar = polar_discrete(self.nu, self.phi, B)
        else:
            Abar, Bbar = discretize(self.continuous_A(), B, torch.exp(self.log_dt.float()),
                                    self.discretization)
        return Abar, Bbar, C

    def kernel(self, L: int) -> torch.Tensor:
        """The convolution kernel K (d, L)."""
        Abar, Bbar, C = self.discrete()
        return s4d_kernel(Abar, Bbar, C, L, self.conj_pair)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if u.dim() != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"u must be (b, L, {self.d_model}), got {tuple(u.shape)}")
        uc = u.transpose(1, 2)  # (b, d, L)
        Abar, Bbar, C = self.discrete()
        if self.method == "fft":
            K = s4d_kernel(Abar, Bbar, C, uc.shape[-1], self.conj_pair)
            y = s4d_fft_conv(uc, K, self.D)
        else:
            y = s4d_recurrence(uc, Abar, Bbar, C, self.D, self.conj_pair)
        return y.transpose(1, 2)


# --- selective SSMs ---------------------------------------------------------------------------

class SelectiveSSM(nn.Module):
    """Selective SSM layer; ``variant`` picks the concrete class:

    * "mamba1" -> :class:`Mamba1SSM` (MODELS.md section 2),
    * "ssd"    -> :class:`SSDSSM` (section 3),
    * "dense"  -> :class:`DenseSSM` (section 4).

    ``SelectiveSSM(d_inner, d_state, variant=..., **options)`` returns an instance of that
    subclass (so isinstance(m, SelectiveSSM) holds for all three).
    """

    variant: str = ""
    _VARIANTS: dict[str, type] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        SelectiveSSM._VARIANTS[cls.variant] = cls

    def __new__(cls, *args, **kwargs):
        if cls is SelectiveSSM:
            variant = args[2] if len(args) > 2 else kwargs.get("variant", "mamba1")
            _choice("variant", variant, tuple(SelectiveSSM._VARIANTS))
            cls = SelectiveSSM._VARIANTS[variant]
        return super().__new__(cls)

    def _check_variant(self, variant) -> None:
        if variant != self.variant:
            raise ValueError(f"variant must be {self.variant!r} for {type(self).__name__}, "
                             f"got {variant!r}")


class Mamba1SSM(SelectiveSSM):
    """Mamba-1 selective scan layer (S6).

    forward(x (b, L, d), delta (b, L, d), B, C (b, L, N) or (b, L, groups*N), z=None (b, L, d),
    initial_state=None (b, d, N), return_final_state=False) -> y (b, L, d) [, state (b, d, N)].

    Parameters: A_log (d, N) with A = -exp(A_log) [+ i A_imag (d, N) when complex],
    D (d,), delta_bias (d,).  Real A starts at -(1..N) per channel (S4D-Real); complex A at
    S4D-Lin (-1/2 + i pi n).  delta_bias is the inverse softplus of a log-uniform step in
    [dt_min, dt_max] (the step itself when delta_softplus is off).
    ``start=dict(k=..., mode="noise"|"drop", sigma=..., targets=(...))`` enables the START
    prologue in training mode; noise uses ``self.start_generator`` when set, else the global RNG.
    """

    variant = "mamba1"
    mup_rules = {"A_log": "vector", "A_imag": "vector"}  # elementwise per (channel, state)

    def __init__(self, d_inner, d_state, variant="mamba1", *, groups=1, complex=False,
                 delta_bias=True, delta_softplus=True, D=True, conj_pair=False, dt_min=1e-3,
                 dt_max=1e-1, dt_init_floor=1e-4, start=None, device=None):
        self._ssmc_config = _config(locals())
        super().__init__()
        self._check_variant(variant)
        _positive_int("d_inner", d_inner)
        _positive_int("d_state", d_state)
        _positive_int("groups", groups)
        if d_inner % groups:
            raise ValueError(f"groups ({groups}) must divide d_inner ({d_inner})")
        _dt_range(dt_min, dt_max)
        self.start = self._check_start(start)
        self.start_generator = None
        self.d_inner, self.d_state, self.groups = d_inner, d_state, groups
        self.complex, self.conj_pair = complex, conj_pair
        self.delta_softplus = delta_softplus
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        _tensor(self, "A_log", (d_inner, d_state), True, device)
        if complex:
            _tensor(self, "A_imag", (d_inner, d_state), True, device)
        for name, on in (("D", D), ("delta_bias", delta_bias)):
            if on:
                _tensor(self, name, (d_inner,), True, device)
            else:
                setattr(self, name, None)
        self.reset_parameters()

    @staticmethod
    def _check_start(start):
        if start is None:
            return None
        if not isinstance(start, dict) or "k" not in start:
            raise ValueError(f"start must be None or a dict with 'k', got {start!r}")
        unknown = set(start) - {"k", "mode", "sigma", "targets"}
        if unknown:
            raise ValueError(f"start: unknown keys {sorted(unknown)}")
        cfg = {"mode": "noise", "sigma": 0.1, "targets": START_TARGETS, **start}
        _choice("start['mode']", cfg["mode"], START_MODES)
        if isinstance(cfg["k"], bool) or not isinstance(cfg["k"], int) or cfg["k"] < 0:
            raise ValueError(f"start['k'] must be an int >= 0, got {cfg['k']!r}")
        if isinstance(cfg["sigma"], bool) or not isinstance(cfg["sigma"], (int, float)) \
                or not 0 <= cfg["sigma"] < math.inf:
            raise ValueError(f"start['sigma'] must be a number >= 0, got {cfg['sigma']!r}")
        return cfg

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.A_log.is_meta:
            return
        d, N = self.d_inner, self.d_state
        if self.complex:
            lin = I.s4d_lin(N)
            self.A_log.copy_(torch.log(-lin.real).expand(d, N))
            self.A_imag.copy_(lin.imag.expand(d, N))
        else:
            self.A_log.copy_(I.mamba_A_log(d, N))
        if self.D is not None:
            self.D.fill_(1.0)
        if self.delta_bias is not None:
            if self.delta_softplus:
                self.delta_bias.copy_(I.mamba_dt_bias(d, self.dt_min, self.dt_max,
                                                      self.dt_init_floor))
            else:
                dt = I.log_uniform((d,), self.dt_min, self.dt_max).clamp(min=self.dt_init_floor)
                self.delta_bias.copy_(dt)

    def A(self) -> torch.Tensor:
        re = -torch.exp(self.A_log.float())
        return torch.complex(re, self.A_imag.float()) if self.complex else re

    def _scan_layout(self, name, M, b, L):
        """(b, L, g*N) -> (b, N, L) when groups == 1, else (b, g, N, L)."""
        _check_shape(name, M, (b, L, self.groups * self.d_state))
        M = M.reshape(b, L, self.groups, self.d_state).permute(0, 2, 3, 1)
        return M[:, 0] if self.groups == 1 else M

    def forward(self, x, delta, B, C, z=None, initial_state=None, return_final_state=False):
        if x.dim() != 3 or x.shape[-1] != self.d_inner:
            raise ValueError(f"x must be (b, L, {self.d_inner}), got {tuple(x.shape)}")
        b, L, d = x.shape
        _check_shape("delta", delta, (b, L, d))
        _check_shape("z", z, (b, L, d))
        _check_shape("initial_state", initial_state, (b, d, self.d_state))
        Bs, Cs = self._scan_layout("B", B, b, L), self._scan_layout("C", C, b, L)
        deltas = delta.transpose(1, 2)
        if self.start is not None:
            deltas, Bs, Cs = start_perturb(
                deltas, Bs, Cs, self.start["k"], mode=self.start["mode"],
                sigma=self.start["sigma"], targets=self.start["targets"],
                training=self.training, generator=self.start_generator,
                delta_bias=self.delta_bias, delta_softplus=self.delta_softplus)
        out = selective_scan_ref(
            x.transpose(1, 2), deltas, self.A(), Bs, Cs, D=self.D,
            z=None if z is None else z.transpose(1, 2), delta_bias=self.delta_bias,
            delta_softplus=self.delta_softplus, return_last_state=return_final_state,
            initial_state=initial_state, conj_pair=self.conj_pair)
        if return_final_state:
            return out[0].transpose(1, 2), out[1]
        return out.transpose(1, 2)


class SSDSSM(SelectiveSSM):
    """Mamba-2 SSD layer (scalar A per head).

    forward(x (b, L, heads*head_dim), dt (b, L, heads), B, C (b, L, groups*d_state),
    z=None (b, L, d_inner), initial_state=None (b, heads, head_dim, d_state),
    return_final_state=False, seq_idx=None (b, L)) -> y (b, L, d_inner) [, state].

    Parameters: A_log (heads,) with A = -exp(A_log), A ~ U[A_init_range] (Mamba-2's init);
    D (heads,) = 1; dt_bias (heads,) = inverse softplus of a log-uniform step.
    ``chunk_size=None`` calls the sequential ``ssd_ref``; an int calls ``ssd_chunked_ref``.
    """

    variant = "ssd"

    def __init__(self, d_inner, d_state, variant="ssd", *, heads=None, head_dim=None, groups=1,
                 D=True, dt_bias=True, dt_softplus=True, dt_min=1e-3, dt_max=1e-1,
                 dt_init_floor=1e-4, dt_limit=(0.0, float("inf")), A_init_range=(1.0, 16.0),
                 chunk_size=None, device=None):
        self._ssmc_config = _config(locals())
        super().__init__()
        self._check_variant(variant)
        _positive_int("d_inner", d_inner)
        _positive_int("d_state", d_state)
        _positive_int("groups", groups)
        heads, head_dim = self._heads(d_inner, heads, head_dim)
        if heads % groups:
            raise ValueError(f"groups ({groups}) must divide heads ({heads})")
        _dt_range(dt_min, dt_max)
        if not 0 <= dt_limit[0] <= dt_limit[1]:
            raise ValueError(f"dt_limit must be (lo, hi) with 0 <= lo <= hi, got {dt_limit}")
        if not 0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"A_init_range must satisfy 0 < lo <= hi, got {A_init_range}")
        if chunk_size is not None:
            _positive_int("chunk_size", chunk_size)
        self.d_inner, self.d_state, self.groups = d_inner, d_state, groups
        self.heads, self.head_dim = heads, head_dim
        self.dt_softplus, self.dt_limit = dt_softplus, tuple(dt_limit)
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.A_init_range, self.chunk_size = tuple(A_init_range), chunk_size
        _tensor(self, "A_log", (heads,), True, device)
        for name, on in (("D", D), ("dt_bias", dt_bias)):
            if on:
                _tensor(self, name, (heads,), True, device)
            else:
                setattr(self, name, None)
        self.reset_parameters()

    @staticmethod
    def _heads(d_inner, heads, head_dim):
        if heads is None and head_dim is None:
            head_dim = 64 if d_inner % 64 == 0 else d_inner
        if heads is None:
            _positive_int("head_dim", head_dim)
            if d_inner % head_dim:
                raise ValueError(f"head_dim ({head_dim}) must divide d_inner ({d_inner})")
            heads = d_inner // head_dim
        if head_dim is None:
            _positive_int("heads", heads)
            if d_inner % heads:
                raise ValueError(f"heads ({heads}) must divide d_inner ({d_inner})")
            head_dim = d_inner // heads
        _positive_int("heads", heads)
        _positive_int("head_dim", head_dim)
        if heads * head_dim != d_inner:
            raise ValueError(f"heads * head_dim must equal d_inner: {heads} * {head_dim} "
                             f"!= {d_inner}")
        return heads, head_dim

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.A_log.is_meta:
            return
        lo, hi = self.A_init_range
        self.A_log.copy_(torch.log(torch.empty(self.heads).uniform_(lo, hi)))
        if self.D is not None:
            self.D.fill_(1.0)
        if self.dt_bias is not None:
            if self.dt_softplus:
                bias = I.mamba_dt_bias(self.heads, self.dt_min, self.dt_max, self.dt_init_floor)
            else:
                bias = I.log_uniform((self.heads,), self.dt_min, self.dt_max)
            self.dt_bias.copy_(bias)

    def forward(self, x, dt, B, C, z=None, initial_state=None, return_final_state=False,
                seq_idx=None):
        if x.dim() != 3 or x.shape[-1] != self.d_inner:
            raise ValueError(f"x must be (b, L, {self.d_inner}), got {tuple(x.shape)}")
        b, L, _ = x.shape
        h, p, g, n = self.heads, self.head_dim, self.groups, self.d_state
        _check_shape("dt", dt, (b, L, h))
        _check_shape("B", B, (b, L, g * n))
        _check_shape("C", C, (b, L, g * n))
        _check_shape("z", z, (b, L, self.d_inner))
        _check_shape("initial_state", initial_state, (b, h, p, n))
        _check_shape("seq_idx", seq_idx, (b, L))
        kwargs = dict(D=self.D, z=None if z is None else z.reshape(b, L, h, p),
                      dt_bias=self.dt_bias, initial_states=initial_state, seq_idx=seq_idx,
                      dt_softplus=self.dt_softplus, dt_limit=self.dt_limit,
                      return_final_states=return_final_state)
        if self.chunk_size is not None:
            kwargs["chunk_size"] = self.chunk_size
        scan = ssd_ref if self.chunk_size is None else ssd_chunked_ref
        out = scan(x.reshape(b, L, h, p), dt, -torch.exp(self.A_log.float()),
                   B.reshape(b, L, g, n), C.reshape(b, L, g, n), **kwargs)
        if return_final_state:
            return out[0].reshape(b, L, self.d_inner), out[1]
        return out.reshape(b, L, self.d_inner)


class DenseSSM(SelectiveSSM):
    """Dense / block-diagonal input-dependent transition (linear CDE view, MODELS.md section 4).

    forward(x (b, L, d_inner), initial_state=None (b, d_state), return_final_state=False)
    -> y (b, L, d_inner) [, state (b, d_state)].

    h_t = A(x_t) h_{t-1} + B_proj x_t,  y_t = C_proj h_t + D x_t, with
    A(x) = I + A_0 + sum_k x^k A_k ("linear") or expm(A_0 + sum_k x^k A_k) ("expm").
    A_0 is the input-independent drift (the CDE's time channel), initialised to -decay * I so
    that the default layer is contractive over long sequences.
    Parameters: A_0 (nb, bs, bs); A_k (d_inner, nb, bs, bs) ~ N(0, a_std^2 / (d_inner * bs))
    (so sum_k x^k A_k has an O(a_std) spectral norm whatever the widths); bs = block_size
    (d_state when None), nb = d_state // bs; B_proj (d_state, d_inner) ~ N(0, 1/d_inner);
    C_proj (d_inner, d_state) ~ N(0, 1/d_state); D (d_inner,) = 1.
    ``scan`` = "sequential" (the oracle) or "assoc" (matrix-combine associative scan).
    """

    variant = "dense"
    # mup.py's roles: A_k's fan-in is the driving channel k and the block column j; A_0's is
    # the block column.
    mup_rules = {"A_k": ("hidden", (0, 3)), "A_0": ("hidden", (2,))}

    def __init__(self, d_inner, d_state, variant="dense", *, block_size=None,
                 transition="linear", D=True, decay=0.1, a_std=0.1, scan="sequential",
                 device=None):
        self._ssmc_config = _config(locals())
        super().__init__()
        self._check_variant(variant)
        _positive_int("d_inner", d_inner)
        _positive_int("d_state", d_state)
        bs = d_state if block_size is None else block_size
        _positive_int("block_size", bs)
        if d_state % bs:
            raise ValueError(f"block_size ({bs}) must divide d_state ({d_state})")
        _choice("transition", transition, ("linear", "expm"))
        _choice("scan", scan, ("sequential", "assoc"))
        self.d_inner, self.d_state = d_inner, d_state
        self.block_size, self.n_blocks = bs, d_state // bs
        self.transition, self.decay, self.a_std, self.scan = transition, decay, a_std, scan
        _tensor(self, "A_0", (self.n_blocks, bs, bs), True, device)
        _tensor(self, "A_k", (d_inner, self.n_blocks, bs, bs), True, device)
        _tensor(self, "B_proj", (d_state, d_inner), True, device)
        _tensor(self, "C_proj", (d_inner, d_state), True, device)
        if D:
            _tensor(self, "D", (d_inner,), True, device)
        else:
            self.D = None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.A_k.is_meta:
            return
        d, N, bs = self.d_inner, self.d_state, self.block_size
        self.A_0.copy_(-self.decay * torch.eye(bs).expand(self.n_blocks, bs, bs))
        self.A_k.normal_(0.0, self.a_std / math.sqrt(d * bs))
        self.B_proj.normal_(0.0, 1 / math.sqrt(d))
        self.C_proj.normal_(0.0, 1 / math.sqrt(N))
        if self.D is not None:
            self.D.fill_(1.0)

    def forward(self, x, initial_state=None, return_final_state=False):
        if x.dim() != 3 or x.shape[-1] != self.d_inner:
            raise ValueError(f"x must be (b, L, {self.d_inner}), got {tuple(x.shape)}")
        _check_shape("initial_state", initial_state, (x.shape[0], self.d_state))
        return dense_ssm(x, self.A_k, self.B_proj, self.C_proj, self.D, self.transition,
                         self.scan, initial_state, return_final_state, A_0=self.A_0)
