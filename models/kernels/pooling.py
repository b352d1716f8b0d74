"""Mean and max pooling of the attention gates in bfloat16 inference, one pass for both.

Under mixed precision PyTorch's CPU reductions of bfloat16 tensors run at a third of their
float32 speed (``mean`` converts its input first); the attention gates pool every activation
twice (mean and max) in each of their three gates. These C kernels read a bfloat16 tensor once
and return both statistics in float32. Used only where :func:`models.kernels.backend.bf16_lib`
holds; the float32 path keeps PyTorch's pooling, whose rounding the golden vectors pin.

In training (:class:`GatePool`) the means are PyTorch's pooling too and the maxima with their
indices come from C kernels (:func:`max_first`, :func:`max_first_over_rows`: the values and
indices of ``torch.max``, max being exact in any order); the backward writes one gradient tensor
for both statistics instead of one each, added together afterwards.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .backend import bf16_lib, data_ptr, for_native, native_lib
from .common import GATE_AXES


def row_mean_max(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Float32 mean and max over the last dim of contiguous bfloat16 ``x`` ``[..., N]``, or
    ``None`` where the native kernel does not apply (the caller pools in PyTorch)."""
    lib = bf16_lib(x)
    if lib is None or not x.is_contiguous() or not x.numel():
        return None
    N = x.shape[-1]
    R = x.numel() // N
    mean = torch.empty(x.shape[:-1], dtype=torch.float32)
    peak = torch.empty_like(mean)
    for_native(R, lambda parts, count, _: lib.row_mean_max_bf16(
        data_ptr(x), data_ptr(mean), data_ptr(peak), N, parts, count), unit=N, align=1)
    return mean, peak


def col_mean_max(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Float32 mean and max over dim 1 of contiguous bfloat16 ``x`` ``[B, R, N]`` (``[B, N]``
    each), or ``None`` where the native kernel does not apply."""
    lib = bf16_lib(x)
    if lib is None or not x.is_contiguous() or x.dim() != 3 or not x.numel():
        return None
    B, R, N = x.shape
    mean = torch.empty(B, N, dtype=torch.float32)
    peak = torch.empty_like(mean)
    for_native(B * N, lambda parts, count, _: lib.col_mean_max_bf16(
        data_ptr(x), data_ptr(mean), data_ptr(peak), R, N, parts, count), unit=R)
    return mean, peak


def max_first(x: torch.Tensor, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """``x.max(dim=-1)`` (values and indices: the first of tied maxima, the first NaN where there
    is one); the native kernel for contiguous float32 CPU ``x``, about 3x faster (it needs no index
    bookkeeping outside the one block that holds the maximum)."""
    lib = native_lib(backend, x)
    if lib is None or not x.is_contiguous() or not x.numel():
        return x.max(dim=-1)
    N = x.shape[-1]
    R = x.numel() // N
    peak = torch.empty(x.shape[:-1], dtype=x.dtype)
    at = torch.empty(x.shape[:-1], dtype=torch.int64)
    for_native(R, lambda parts, count, _: lib.row_max_first(
        data_ptr(x), data_ptr(peak), data_ptr(at), N, parts, count), unit=N, align=1)
    return peak, at


def max_first_over_rows(x: torch.Tensor, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """``x.max(dim=1)`` of ``x`` ``[B, R, N]`` (values and indices ``[B, N]``, as :func:`max_first`);
    the native kernel for contiguous float32 CPU ``x``, one pass instead of PyTorch's strided one."""
    lib = native_lib(backend, x)
    if lib is None or not x.is_contiguous() or x.dim() != 3 or not x.numel():
        return x.max(dim=1)
    B, R, N = x.shape
    peak = torch.empty(B, N, dtype=x.dtype)
    at = torch.empty(B, N, dtype=torch.int64)
    for_native(B * N, lambda parts, count, _: lib.col_max_first(
        data_ptr(x), data_ptr(peak), data_ptr(at), R, N, parts, count), unit=R)
    return peak, at


class GatePool(torch.autograd.Function):
    """Mean and max of the attention's ``[T, B, C, H, W]`` input as one of its gates pools it,
    with one pass backward.

    The gates see the ``[B, T, C, H, W]`` view and pool over ``(C, H, W)`` (``time``: mean and
    max ``[B, T, 1, 1, 1]``), ``(T, H, W)`` (``channel``: ``[B, C, 1, 1, 1]``) or ``(T, C)``
    (``spatial``: ``[B, 1, H, W]``). The forward values are those of the gates' own pooling
    (the same PyTorch calls for the mean; the max is exact). PyTorch's backward writes a
    full-size gradient for the mean, zero-fills and scatters another for the max, and autograd
    adds them; here one tensor holds the mean's share and the max's gradient is added at the
    first maximal element of each group (where adaptive max pooling and ``max`` put it).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, axis: str, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        T, B, C, H, W = x.shape
        view, planes = x.transpose(0, 1), x.view(T, B, C, H * W)
        index = dict(device=x.device)  # the groups' indices, on x's device
        if axis == "time":
            mean = F.adaptive_avg_pool3d(view, 1)
            peak, at = max_first(planes.view(T, B, -1), backend)  # [T, B]
            first = (torch.arange(T * B, **index).view(T, B) * (C * H * W) + at).t()  # [B, T], as the peak
            peak = peak.t()[..., None, None, None].to(mean.dtype)  # float32 under autocast, as adaptive pooling
        elif axis == "channel":
            mean = F.adaptive_avg_pool3d(view.transpose(1, 2), 1)
            step_peak, step_at = max_first(planes, backend)  # [T, B, C] over H*W, then over T
            peak, t = step_peak.max(0)  # [B, C]
            at = step_at.gather(0, t[None])[0]
            b, c = torch.arange(B, **index)[:, None], torch.arange(C, **index)
            first = ((t * B + b) * C + c) * (H * W) + at
            peak = peak[..., None, None, None].to(mean.dtype)
        elif axis == "spatial":
            stacked = view.flatten(1, 2)  # [B, T*C, H, W], the gate's own copy
            mean = stacked.mean(dim=1, keepdim=True)
            peak, tc = max_first_over_rows(stacked.view(B, T * C, H * W), backend)  # [B, H*W]
            peak = peak.view(B, 1, H, W)
            b, hw = torch.arange(B, **index)[:, None], torch.arange(H * W, **index)
            first = (((tc // C) * B + b) * C + tc % C) * (H * W) + hw
        else:
            raise ValueError(f"GatePool: axis must be one of {GATE_AXES}, got {axis!r}")
        ctx.axis, ctx.shape, ctx.dtype = axis, x.shape, x.dtype
        ctx.save_for_backward(first)
        return mean, peak

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_mean: torch.Tensor, grad_peak: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (first,) = ctx.saved_tensors
        T, B, C, H, W = ctx.shape
        grad = grad_peak.new_empty(ctx.shape, dtype=ctx.dtype)
        planes = grad.view(T, B, C, H * W)
        if ctx.axis == "time":
            planes.copy_((grad_mean.view(B, T).t() / (C * H * W))[..., None, None].expand_as(planes))
        elif ctx.axis == "channel":
            planes.copy_((grad_mean.view(B, C) / (T * H * W))[None, ..., None].expand_as(planes))
        else:
            planes.copy_((grad_mean.view(B, H * W) / (T * C))[None, :, None].expand_as(planes))
        grad.view(-1).index_add_(0, first.reshape(-1), grad_peak.reshape(-1).to(grad.dtype))
        return grad, None, None


def gate_mean_max(x: torch.Tensor, axis: str, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`GatePool` of contiguous ``x`` ``[T, B, C, H, W]`` for the gate ``axis``; its maxima
    from the native kernels (:func:`max_first`) unless ``backend`` is ``torch``."""
    return GatePool.apply(x, axis, backend)
