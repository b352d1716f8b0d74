"""Fast multi-step LIF kernel (SPEC 1.1), exact against spikingjelly's LIFNode.

Forward arithmetic repeats spikingjelly 2.0.0 operation by operation (``v - (v - 0) / tau + x``
and ``s * 0 + (1 - s) * h``), so spikes and membranes are bit-identical. Only the charged
membranes are saved; the backward is hand-derived (reset not detached):
``dL/dh_t = dL/ds_t sg_t + dL/dv_t ((1 - s_t) - h_t sg_t)``, ``dL/dv_{t-1} = dL/dh_t (1 - 1/tau)``,
``dL/dx_t = dL/dh_t``; gradients agree with autograd's to float rounding.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .backend import data_ptr, for_native, for_torch_chunks, native_kernel, native_lib, needs_grad, neuron_takes_bf16
from .common import LOW_PRECISION


@torch.library.custom_op("spiking_derain::lif_forward", mutates_args=())
def lif_forward(
    x: torch.Tensor, v0: torch.Tensor, tau: float, v_th: float, keep_h: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spikes ``[L, N]``, charged membranes ``h`` (``[L, N]``; empty unless ``keep_h``) and final
    membrane ``[N]`` from contiguous ``x`` ``[L, N]`` and ``v0`` ``[N]``. ``x`` is float32, or
    bfloat16 for the native backend (spikes in ``x``'s dtype, membranes float32).

    torch backend: the hard reset ``v = s * 0 + (1 - s) * h`` is taken as ``h * [h < v_th]``
    (equal values, also for NaN and infinite ``h``; a zero may change sign, which no later
    step can see).
    """
    x, v0 = x.detach(), v0.detach().contiguous()
    L, N = x.shape
    spikes = torch.empty_like(x)
    charged = torch.empty_like(x, dtype=torch.float32) if keep_h else x.new_empty(0)  # float32 for bfloat16 x too
    v_out = torch.empty_like(v0)
    lib = native_lib(backend, x, bf16=True) if v0.dtype == torch.float32 else None
    if lib is not None:
        kernel = native_kernel(lib, "lif_forward", x.dtype)
        for_native(N, lambda parts, count, _: kernel(
            data_ptr(x), data_ptr(v0), data_ptr(spikes), data_ptr(charged) if keep_h else None, data_ptr(v_out),
            L, N, parts, count, tau, v_th))
        return spikes, charged, v_out

    def body(c: slice) -> None:
        v = v0[c].clone()
        tmp = torch.empty_like(v)
        h = None if keep_h else torch.empty_like(v)
        for t in range(L):
            ht = charged[t, c] if keep_h else h
            torch.div(v, tau, out=tmp)
            torch.sub(v, tmp, out=ht)
            ht.add_(x[t, c])
            torch.ge(ht, v_th, out=spikes[t, c])
            torch.lt(ht, v_th, out=tmp)
            torch.mul(ht, tmp, out=v)
        v_out[c] = v

    for_torch_chunks(N, x.device, body)
    return spikes, charged, v_out


@lif_forward.register_fake
def _(x: torch.Tensor, v0: torch.Tensor, tau: float, v_th: float, keep_h: bool, backend: str):
    charged = torch.empty_like(x, dtype=torch.float32) if keep_h else x.new_empty(0)
    return torch.empty_like(x), charged, torch.empty_like(v0)


@torch.library.custom_op("spiking_derain::lif_backward", mutates_args=())
def lif_backward(grad_s: torch.Tensor, h: torch.Tensor, tau: float, v_th: float, alpha: float,
                 backend: str) -> torch.Tensor:
    """``dL/dx`` ``[L, N]`` from contiguous ``dL/ds`` and the saved charged membranes ``h``; ``dL/ds``
    float32, or bfloat16 for the native backend (float32 arithmetic, each gradient rounded once)."""
    grad_s = grad_s.detach()
    L, N = grad_s.shape
    grad_x = torch.empty_like(grad_s)
    lib = native_lib(backend, grad_s, bf16=True)
    if lib is not None:
        kernel = native_kernel(lib, "lif_backward", grad_s.dtype)
        for_native(N, lambda parts, count, _: kernel(
            data_ptr(grad_s), data_ptr(h), data_ptr(grad_x), L, N, parts, count, tau, v_th, alpha))
        return grad_x

    def body(c: slice) -> None:
        sg = torch.empty_like(h[0, c])
        tmp = torch.empty_like(sg)
        carry = None  # dL/dv_t, flowing in from step t + 1
        for t in range(L - 1, -1, -1):
            ht, o = h[t, c], grad_x[t, c]
            torch.sub(ht, v_th, out=tmp)
            tmp.mul_(alpha).sigmoid_()
            torch.neg(tmp, out=sg).add_(1).mul_(tmp).mul_(alpha)  # sg = alpha * sig * (1 - sig)
            torch.mul(grad_s[t, c], sg, out=o)
            if carry is not None:
                torch.lt(ht, v_th, out=tmp)  # 1 - s_t
                tmp.sub_(ht * sg)  # dv_t/dh_t = (1 - s_t) + (0 - h_t) * sg_t
                o.addcmul_(carry, tmp)
            carry = o * (1 - 1 / tau)

    for_torch_chunks(N, grad_s.device, body)
    return grad_x


@lif_backward.register_fake
def _(grad_s: torch.Tensor, h: torch.Tensor, tau: float, v_th: float, alpha: float, backend: str) -> torch.Tensor:
    return torch.empty_like(grad_s)


class LIFFunction(torch.autograd.Function):
    """Multi-step LIF from a constant initial membrane; returns spikes and the final membrane."""

    @staticmethod
    def forward(ctx, x_seq, v0, tau, v_th, alpha, backend):
        x = x_seq.contiguous()
        spikes, h, v = lif_forward(x.view(x.shape[0], -1), v0.reshape(-1), tau, v_th, True, backend)
        ctx.save_for_backward(h)
        ctx.consts = (tau, v_th, alpha, backend)
        ctx.mark_non_differentiable(v)
        return spikes.view(x.shape), v.view(x.shape[1:])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_s, grad_v):
        (h,) = ctx.saved_tensors
        g = grad_s.contiguous()
        return lif_backward(g.view(h.shape), h, *ctx.consts).view(g.shape), None, None, None, None, None


def lif_multi_step(
    x_seq: torch.Tensor, v0: torch.Tensor, tau: float, v_th: float, alpha: float, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spikes ``[T, ...]`` and final membrane ``[...]`` of the released LIF from ``v0``.

    ``v0`` is a constant (no gradient flows into it): :class:`models.neurons.LIF` only calls
    this on a freshly reset or gradient-free state. bfloat16 / float16 input (mixed precision):
    membranes in float32, spikes returned in the input's dtype, the final membrane in float32;
    bfloat16 on the CPU goes to the native kernels' bfloat16 instances without conversions, in
    training too.
    """
    if x_seq.dtype in LOW_PRECISION and not neuron_takes_bf16(x_seq, backend):
        spikes, v = lif_multi_step(x_seq.float(), v0.float(), tau, v_th, alpha, backend)
        return spikes.to(x_seq.dtype), v
    if needs_grad(x_seq):
        return LIFFunction.apply(x_seq, v0.detach(), tau, v_th, alpha, backend)
    x = x_seq.contiguous()
    spikes, _, v = lif_forward(x.view(x.shape[0], -1), v0.float().reshape(-1), tau, v_th, False, backend)
    return spikes.view(x.shape), v.view(x.shape[1:])
