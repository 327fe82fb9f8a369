"""The kernels an accelerated transformers mixer calls, per backend, behind one small interface.

Every backend provides, channels-last:

    conv(x (b, L, c), weight (c, 1, k), bias, initial_state (b, c, k) | None) -> (b, L, c)
        causal depthwise conv1d + SiLU (initial_state: the decoder's conv state, read only)
    conv_step(x (b, c), conv_state (b, c, k), weight, bias) -> (b, c)
        one token; conv_state shifted and appended in place
    scan(x, dt (b, L, d), A (d, N), B, C (b, L, g, N), D, z, dt_bias, initial_state, final)
        Mamba-1 selective scan, softplus(dt + dt_bias); -> y (b, L, d) [, state (b, d, N)]
    step(state (b, d, N), x, dt (b, d), A (d, N), B, C (b, g, N), D, z, dt_bias) -> y (b, d)
        one Mamba-1 token; state updated in place
    ssd(x (b, L, h*p), dt (b, L, h), A (h,), B, C (b, L, g, N), D (h,), dt_bias, dt_limit,
        initial_state (b, h*p, N), final) -> y (b, L, h*p) [, state]
    ssd_step(state (b, h*p, N), x (b, h*p), dt (b, h), A (h,), B, C (b, g, N), D, dt_bias)

scan, step, ssd and ssd_step take A as `a_param(A)` (the TVM kernels want A * log2 e,
transposed), which the caller computes once per weight version.

"tvm" runs them on ssmc's TVM CPU kernels (codegen/tvm: the sequence scan, and the step /
conv / per-head kernels of decode.py); "triton" runs the scans on ssmc's Triton kernels
(ssmc.ops) and the small glue in torch; "reference" is plain torch (the meaning of all of
them, and what a GPU decode step runs until a Triton step kernel exists).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

INF = float("inf")


class TorchKernels:
    """Plain torch: the meaning of every kernel (fp32 inside, fp32 out)."""

    name = "reference"

    def prepare(self, mixer) -> None:  # build / look up kernels ahead of the first call
        return None

    def a_param(self, A: torch.Tensor) -> torch.Tensor:
        """What step / ssd / ssd_step take for A (computed once per weight version)."""
        return A.detach().float()

    def conv(self, x, weight, bias, initial_state=None):
        b, L, c = x.shape
        k = weight.shape[-1]
        xt = x.transpose(1, 2).float()
        if initial_state is not None:
            xt = torch.cat([initial_state.float(), xt], dim=-1)
            y = F.conv1d(xt, weight.float().reshape(c, 1, k), None if bias is None else bias.float(),
                         groups=c)[..., -L:]
        else:
            y = F.conv1d(xt, weight.float().reshape(c, 1, k), None if bias is None else bias.float(),
                         padding=k - 1, groups=c)[..., :L]
        return F.silu(y).transpose(1, 2)

    def conv_step(self, x, conv_state, weight, bias):
        c, k = weight.shape[0], weight.shape[-1]
        new = torch.cat([conv_state, x[:, :, None].to(conv_state.dtype)], dim=-1)[..., -k:]
        conv_state.copy_(new)
        y = (new.float() * weight.float().reshape(c, k)).sum(-1)
        if bias is not None:
            y = y + bias.float()
        return F.silu(y)

    @staticmethod
    def _dt(dt, dt_bias, dt_limit=(0.0, INF)):
        dt = dt.float()
        if dt_bias is not None:
            dt = dt + dt_bias.float()
        dt = F.softplus(dt)
        if tuple(dt_limit) != (0.0, INF):
            dt = dt.clamp(dt_limit[0], dt_limit[1])
        return dt

    def scan(self, x, dt, A, B, C, D, z, dt_bias, initial_state=None, final=False):
        from ssmc.semantics.selective import selective_scan_ref

        g = B.shape[2]
        Bs = B.permute(0, 2, 3, 1)
        Cs = C.permute(0, 2, 3, 1)
        out = selective_scan_ref(x.transpose(1, 2), dt.transpose(1, 2), A.float(),
                                 Bs[:, 0] if g == 1 else Bs, Cs[:, 0] if g == 1 else Cs, D=D,
                                 z=None if z is None else z.transpose(1, 2), delta_bias=dt_bias,
                                 delta_softplus=True, return_last_state=final,
                                 initial_state=initial_state)
        if final:
            return out[0].transpose(1, 2).float(), out[1].float()
        return out.transpose(1, 2).float()

    def step(self, state, x, dt, A, B, C, D, z, dt_bias):
        d = x.shape[1]
        g = B.shape[1]
        dt = self._dt(dt, dt_bias)                                  # (b, d)
        rep = d // g
        Bd = B.float().repeat_interleave(rep, dim=1)                # (b, d, N)
        Cd = C.float().repeat_interleave(rep, dim=1)
        h = state.float() * torch.exp(dt[..., None] * A.float()) + (dt * x.float())[..., None] * Bd
        state.copy_(h.to(state.dtype))
        y = (h * Cd).sum(-1)
        if D is not None:
            y = y + x.float() * D.float()
        if z is not None:
            y = y * F.silu(z.float())
        return y

    def ssd(self, x, dt, A, B, C, D, dt_bias, dt_limit, head_dim, initial_state=None, final=False):
        from ssmc.semantics.selective import ssd_ref

        b, L, d = x.shape
        h = d // head_dim
        N = B.shape[3]
        out = ssd_ref(x.reshape(b, L, h, head_dim), dt, A.float(), B, C, D=D, dt_bias=dt_bias,
                      dt_softplus=True, dt_limit=tuple(dt_limit),
                      initial_states=None if initial_state is None else
                      initial_state.reshape(b, h, head_dim, N),
                      return_final_states=final)
        if final:
            return out[0].reshape(b, L, d).float(), out[1].reshape(b, d, N).float()
        return out.reshape(b, L, d).float()

    def ssd_step(self, state, x, dt, A, B, C, D, dt_bias, head_dim):
        b, d = x.shape
        h = d // head_dim
        g, N = B.shape[1], B.shape[2]
        dt = self._dt(dt, dt_bias)                                  # (b, h)
        dA = torch.exp(dt * A.float())                              # (b, h)
        Bh = B.float().repeat_interleave(h // g, dim=1)             # (b, h, N)
        Ch = C.float().repeat_interleave(h // g, dim=1)
        xh = x.float().reshape(b, h, head_dim)
        s = state.view(b, h, head_dim, N)
        new = s.float() * dA[:, :, None, None] + (dt[:, :, None] * xh)[..., None] * Bh[:, :, None, :]
        s.copy_(new.to(s.dtype))
        y = (new * Ch[:, :, None, :]).sum(-1)
        if D is not None:
            y = y + xh * D.float()[:, None]
        return y.reshape(b, d)


class TritonKernels(TorchKernels):
    """GPU: the sequence scans on ssmc's Triton kernels; conv and the one-token steps in torch
    (a step is a handful of elementwise ops on (b, d, N))."""

    name = "triton"

    def scan(self, x, dt, A, B, C, D, z, dt_bias, initial_state=None, final=False):
        from ssmc.ops import selective_scan_fn

        if initial_state is not None:  # selective_scan_fn has no initial state (mamba-ssm's)
            return super().scan(x, dt, A, B, C, D, z, dt_bias, initial_state, final)
        g = B.shape[2]
        Bs = B.permute(0, 2, 3, 1)
        Cs = C.permute(0, 2, 3, 1)
        out = selective_scan_fn(x.transpose(1, 2), dt.transpose(1, 2), A.float(),
                                Bs[:, 0] if g == 1 else Bs, Cs[:, 0] if g == 1 else Cs,
                                D=None if D is None else D.float(),
                                z=None if z is None else z.transpose(1, 2),
                                delta_bias=None if dt_bias is None else dt_bias.float(),
                                delta_softplus=True, return_last_state=final, backend="triton")
        if final:
            return out[0].transpose(1, 2).float(), out[1].float()
        return out.transpose(1, 2).float()

    def ssd(self, x, dt, A, B, C, D, dt_bias, dt_limit, head_dim, initial_state=None, final=False):
        from ssmc.ops import mamba_chunk_scan_combined

        b, L, d = x.shape
        h = d // head_dim
        N = B.shape[3]
        out = mamba_chunk_scan_combined(
            x.reshape(b, L, h, head_dim), dt, A.float(), B, C, chunk_size=64, D=D,
            dt_bias=dt_bias, dt_softplus=True, dt_limit=tuple(dt_limit),
            initial_states=None if initial_state is None else initial_state.reshape(b, h, head_dim, N),
            return_final_states=final, backend="triton")
        if final:
            return out[0].reshape(b, L, d).float(), out[1].reshape(b, d, N).float()
        return out.reshape(b, L, d).float()


class TvmKernels(TorchKernels):
    """CPU: every kernel on TVM (fp32 inside; other dtypes are converted at the boundary)."""

    name = "tvm"

    def __init__(self):
        from ssmc.codegen.tvm import decode

        self.dk = decode

    def prepare(self, mixer) -> None:
        """Build (or load from the disk cache) the kernels of this mixer's shapes now, so that
        the first generate() call does not pay for compilation."""
        from ssmc.codegen.tvm import causal_conv_tir as convb
        from ssmc.codegen.tvm import selective_step_tir as stepb

        info = mixer_shapes(mixer)
        c, k = info["conv_dim"], info["d_conv"]
        has_bias = mixer.conv1d.bias is not None
        for step in (False, True):
            self.dk.conv_kernel(convb.ConvSignature(c=c, k=k, has_bias=has_bias, step=step))
        if info["kind"] == "mamba1":
            d, N = info["d_inner"], info["d_state"]
            self.dk.step_kernel(stepb.StepSignature(d=d, N=N))
            for final in (False, True):
                self.dk.step_kernel(stepb.StepSignature(d=d, N=N, step=False, has_initial_state=False,
                                                        return_last_state=final))
        else:
            d, P, g, N = info["d_inner"], info["head_dim"], info["n_groups"], info["d_state"]
            plain = tuple(info["dt_limit"]) == (0.0, INF)
            for final in (False, True):
                self.dk.step_kernel(stepb.StepSignature(
                    d=d, N=N, groups=g, head_dim=P, has_z=False, step=False,
                    has_delta_bias=plain, delta_softplus=plain, has_initial_state=False,
                    return_last_state=final))
            self.dk.step_kernel(stepb.StepSignature(d=d, N=N, groups=g, head_dim=P, has_z=False))
        for name in ("in_proj", "x_proj", "out_proj"):  # the decode step's one-row projections
            lin = getattr(mixer, name, None)
            if isinstance(lin, torch.nn.Linear):
                self.dk.gemv_kernel(self.dk.gemv_signature(lin.weight, lin.bias))
        if info["kind"] == "mamba1":
            self.dk.gemv_kernel(self.dk.gemv_signature(mixer.dt_proj.weight))

    def a_param(self, A: torch.Tensor) -> torch.Tensor:
        return self.dk.A2_of(A)  # A * log2(e), laid out for the kernels

    def conv(self, x, weight, bias, initial_state=None):
        return self.dk.causal_conv1d(x, weight, bias, "silu", initial_state)

    def conv_step(self, x, conv_state, weight, bias):
        if conv_state.dtype != torch.float32 or not conv_state.is_contiguous():
            tmp = conv_state.float().contiguous()
            y = self.dk.causal_conv1d_update(x, tmp, weight, bias, "silu")
            conv_state.copy_(tmp)
            return y
        return self.dk.causal_conv1d_update(x, conv_state, weight, bias, "silu")

    def scan(self, x, dt, A2, B, C, D, z, dt_bias, initial_state=None, final=False):
        # the scan's algorithm built for strided channels-last inputs: z = xz[..., d:] and the
        # B / C columns of x_proj's output are read in place, without copies
        return self.dk.selective_scan_seq(x, dt, A2, B, C, D, z, dt_bias, True, head_dim=1,
                                          initial_state=initial_state, return_last_state=final)

    def step(self, state, x, dt, A2, B, C, D, z, dt_bias):
        """A2: decode.A2_of(A), computed once per weight version by the caller."""
        if state.dtype != torch.float32 or not state.is_contiguous():
            tmp = state.float().contiguous()
            y = self.dk.selective_state_update(tmp, x, dt, A2, B, C, D, z, dt_bias, True)
            state.copy_(tmp)
            return y
        return self.dk.selective_state_update(state, x, dt, A2, B, C, D, z, dt_bias, True)

    def ssd(self, x, dt, A2, B, C, D, dt_bias, dt_limit, head_dim, initial_state=None,
            final=False):
        if tuple(dt_limit) != (0.0, INF):  # the kernel has no clamp: softplus + clamp here
            dt, dt_bias, softplus = self._dt(dt, dt_bias, dt_limit), None, False
        else:
            softplus = True
        return self.dk.selective_scan_seq(x, dt, A2, B, C, D, None, dt_bias, softplus,
                                            head_dim=head_dim, initial_state=initial_state,
                                            return_last_state=final)

    def ssd_step(self, state, x, dt, A2, B, C, D, dt_bias, head_dim):
        if state.dtype != torch.float32 or not state.is_contiguous():
            tmp = state.float().contiguous()
            y = self.dk.selective_state_update(tmp, x, dt, A2, B, C, D, None, dt_bias, True,
                                               head_dim=head_dim)
            state.copy_(tmp)
            return y
        return self.dk.selective_state_update(state, x, dt, A2, B, C, D, None, dt_bias, True,
                                              head_dim=head_dim)


def mixer_shapes(mixer) -> dict:
    """The dims of a transformers MambaMixer / Mamba2Mixer."""
    if hasattr(mixer, "x_proj"):
        d, N = mixer.intermediate_size, mixer.ssm_state_size
        return {"kind": "mamba1", "d_inner": d, "d_state": N, "d_conv": mixer.conv_kernel_size,
                "dt_rank": mixer.time_step_rank, "conv_dim": d}
    d = mixer.intermediate_size
    return {"kind": "mamba2", "d_inner": d, "d_state": mixer.ssm_state_size,
            "d_conv": mixer.conv_kernel_size, "n_heads": mixer.num_heads,
            "head_dim": mixer.head_dim, "n_groups": mixer.n_groups, "conv_dim": mixer.conv_dim,
            "dt_limit": tuple(float(v) for v in mixer.time_step_limit)}


BACKENDS = {"reference": TorchKernels, "triton": TritonKernels, "tvm": TvmKernels}
