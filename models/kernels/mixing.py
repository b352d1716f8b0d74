"""SDEM's mixing ``high * h + low * (u - h) + u * h`` in one pass.

PyTorch evaluates the expression as six element-wise operations, each reading and writing the
whole tensor (and, in bfloat16, widening and rounding at every step); in training autograd keeps
their intermediates and its backward makes about as many passes again. The C kernels read ``u``
and ``h`` once:
- bfloat16 inference (:func:`sdem_mix`): float32 arithmetic rounded once, exactly the expression
  on the widened inputs, rounded to bfloat16;
- float32 (:func:`sdem_mix_one_pass`): the expression evaluated in PyTorch's order, the same bits;
  with gradients one autograd node that saves nothing new (``u`` and ``h`` live on anyway) and
  whose backward makes one pass for ``dL/du``, ``dL/dh`` and the two scalars' gradients (their
  sums accumulated in float64: equal to autograd's to float32 rounding, not bit for bit);
- bfloat16 training (the same function): the mix in float32 rounded once to bfloat16, as the
  inference kernel computes it (autograd's expression rounded ``u - h`` and ``u * h`` to
  bfloat16 on the way); the gradients of ``u`` and ``h`` in float32 rounded once, where autograd
  rounded each of their three terms to bfloat16 and summed them in bfloat16. Nearer the float64
  values than autograd's, and not its bits.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .backend import bf16_lib, data_ptr, for_native, native_kernel, native_lib, needs_grad


def sdem_mix(u: torch.Tensor, h: torch.Tensor, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor | None:
    """The mix of contiguous bfloat16 ``u`` and its spikes ``h`` (same shape) with the scalars
    ``high`` and ``low``, or ``None`` where the native kernel does not apply."""
    if (bf16_lib(u) is None or h.dtype != u.dtype or h.shape != u.shape or not u.is_contiguous()
            or not h.is_contiguous() or high.numel() != 1 or low.numel() != 1):
        return None
    return sdem_mix_forward(u, h, float(high), float(low))


@torch.library.custom_op("spiking_derain::sdem_mix_forward", mutates_args=())
def sdem_mix_forward(u: torch.Tensor, h: torch.Tensor, high: float, low: float) -> torch.Tensor:
    """``high * h + low * (u - h) + u * h`` of contiguous float32 or bfloat16 CPU ``u`` and ``h``
    (float32 arithmetic in both)."""
    kernel = native_kernel(native_lib("native", u, h, bf16=True), "sdem_mix", u.dtype)
    out = torch.empty_like(u)
    for_native(u.numel(), lambda parts, count, _: kernel(
        data_ptr(u), data_ptr(h), data_ptr(out), high, low, parts, count))
    return out


@sdem_mix_forward.register_fake
def _(u: torch.Tensor, h: torch.Tensor, high: float, low: float) -> torch.Tensor:
    return torch.empty_like(u)


@torch.library.custom_op("spiking_derain::sdem_mix_backward", mutates_args=())
def sdem_mix_backward(grad: torch.Tensor, u: torch.Tensor, h: torch.Tensor, high: float,
                      low: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dL/du``, ``dL/dh`` and float64 ``[dL/dhigh, dL/dlow]`` of the mix from ``dL/dout``; all three
    tensors float32, or all bfloat16 (float32 arithmetic, each gradient rounded once)."""
    kernel = native_kernel(native_lib("native", grad, u, h, bf16=True), "sdem_mix_backward", u.dtype)
    grad_u, grad_h = torch.empty_like(u), torch.empty_like(h)
    sums = torch.zeros(torch.get_num_threads(), 2, dtype=torch.float64)  # per part, summed below in order
    for_native(u.numel(), lambda parts, count, first: kernel(
        data_ptr(grad), data_ptr(u), data_ptr(h), data_ptr(grad_u), data_ptr(grad_h), data_ptr(sums[first]),
        high, low, parts, count))
    return grad_u, grad_h, sums.sum(0)


@sdem_mix_backward.register_fake
def _(grad: torch.Tensor, u: torch.Tensor, h: torch.Tensor, high: float,
      low: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.empty_like(u), torch.empty_like(h), u.new_empty(2, dtype=torch.float64)


class SDEMMixFunction(torch.autograd.Function):
    """The float32 mix as one autograd node (see the module docstring)."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, h: torch.Tensor, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        ctx.scalars = float(high), float(low)
        ctx.shapes = high.shape, low.shape  # float32 parameters: their gradients in float32
        ctx.save_for_backward(u, h)
        return sdem_mix_forward(u, h, *ctx.scalars)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        u, h = ctx.saved_tensors
        grad_u, grad_h, sums = sdem_mix_backward(grad.to(u.dtype).contiguous(), u, h, *ctx.scalars)
        sums = sums.to(torch.float32)
        return grad_u, grad_h, sums[0].reshape(ctx.shapes[0]), sums[1].reshape(ctx.shapes[1])


def sdem_mix_one_pass(u: torch.Tensor, h: torch.Tensor, high: torch.Tensor, low: torch.Tensor,
                     backend: str = "auto") -> torch.Tensor | None:
    """The mix of float32 CPU ``u`` and its spikes ``h`` (same shape) with the one-element float32
    ``high`` and ``low``, differentiable, or ``None`` where the native kernels do not apply
    (``backend`` ``torch``, another dtype or device, no C compiler) and the caller uses PyTorch.
    bfloat16 ``u`` and ``h`` (mixed-precision training) are taken too: float32 arithmetic, the mix
    and the gradients of ``u`` and ``h`` rounded once to bfloat16."""
    if (u.shape != h.shape or high.numel() != 1 or low.numel() != 1 or u.dtype != h.dtype
            or native_lib(backend, u, h, bf16=True) is None or native_lib(backend, high, low) is None):
        return None
    u, h = u.contiguous(), h.contiguous()
    if needs_grad(u) or needs_grad(h) or needs_grad(high) or needs_grad(low):
        return SDEMMixFunction.apply(u, h, high, low)
    return sdem_mix_forward(u, h, float(high), float(low))
