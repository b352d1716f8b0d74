"""The attention's gated products in training: ``gate * x`` with a one-pass backward.

Each gate of the multi-dimensional attention scales the activations, ``y = gate * x``, with the
gate broadcast over the axes it pooled (time gate ``[T, B, 1, 1, 1]``, channel gate
``[1, B, C, 1, 1]``, spatial gate ``[1, B, 1, H, W]``, for ``x`` ``[T, B, C, H, W]``). Autograd's
backward writes ``g * gate`` and a second full-size product ``g * x``, which it then reduces to
the gate's shape. The C kernel reads ``g`` and ``x`` once and writes only ``g * gate`` (the same
bits), summing ``g * x`` per gate value on the fly, in float64: the gate's gradient equals
autograd's to float32 rounding, not bit for bit (its sums run in another order). The forward is
PyTorch's product.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .backend import data_ptr, for_native, native_lib
from .common import GATE_AXES


def _gate_shape(x: torch.Tensor, axis: str) -> tuple[int, ...]:
    T, B, C, H, W = x.shape
    return {"time": (T, B, 1, 1, 1), "channel": (1, B, C, 1, 1), "spatial": (1, B, 1, H, W)}[axis]


@torch.library.custom_op("spiking_derain::gated_product_backward", mutates_args=())
def gated_product_backward(grad: torch.Tensor, x: torch.Tensor, gate: torch.Tensor,
                           mode: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``dL/dx`` and ``dL/dgate`` of ``gate * x`` from ``dL/dy``, for contiguous float32 CPU
    ``[T, B, C, H, W]`` ``grad`` and ``x`` and the gate of axis ``GATE_AXES[mode]``."""
    T, B, C, H, W = x.shape
    lib = native_lib("native", grad, x, gate)
    grad_x = torch.empty_like(x)
    sums = torch.empty((T * B,) if mode == 0 else (T * B, C if mode == 1 else H * W), dtype=torch.float64)
    for_native(T * B, lambda parts, count, _: lib.gated_product_backward(
        data_ptr(grad), data_ptr(x), data_ptr(gate), data_ptr(grad_x), data_ptr(sums), B, C, H * W, mode,
        parts, count), unit=C * H * W, align=1)
    grad_gate = sums if mode == 0 else sums.view(T, B, -1).sum(0)  # the planes of each gate value, in order
    return grad_x, grad_gate.to(gate.dtype).view(gate.shape)


@gated_product_backward.register_fake
def _(grad: torch.Tensor, x: torch.Tensor, gate: torch.Tensor, mode: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x), torch.empty_like(gate)


class GatedProduct(torch.autograd.Function):
    """``gate * x`` as one autograd node with :func:`gated_product_backward` as its backward."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, x: torch.Tensor, mode: int) -> torch.Tensor:
        ctx.mode = mode
        ctx.save_for_backward(gate, x)
        return gate * x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        gate, x = ctx.saved_tensors
        grad_x, grad_gate = gated_product_backward(grad.contiguous(), x, gate, ctx.mode)
        return grad_gate, grad_x, None


def gated_product(gate: torch.Tensor, x: torch.Tensor, axis: str, backend: str = "auto") -> torch.Tensor:
    """``gate * x`` for the attention's gate ``axis`` (one of ``GATE_AXES``) on contiguous
    ``x`` ``[T, B, C, H, W]``; with the one-pass backward where the native kernels apply
    (contiguous float32 CPU tensors, the gate in its axis's shape), else PyTorch's product."""
    if (x.dim() != 5 or tuple(gate.shape) != _gate_shape(x, axis) or not x.is_contiguous()
            or not gate.is_contiguous() or native_lib(backend, x, gate) is None):
        return gate * x
    return GatedProduct.apply(gate, x, GATE_AXES.index(axis))
