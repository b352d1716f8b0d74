"""Mean and max pooling of the attention gates in bfloat16 inference, one pass for both.

Under mixed precision PyTorch's CPU reductions of bfloat16 tensors run at a third of their
float32 speed (``mean`` converts its input first); the attention gates pool every activation
twice (mean and max) in each of their three gates. These C kernels read a bfloat16 tensor once
and return both statistics in float32. Used only where :func:`models.kernels.backend.bf16_lib`
holds; the float32 path keeps PyTorch's pooling, whose rounding the golden vectors pin.
"""
from __future__ import annotations

import torch

from .backend import bf16_lib, data_ptr, for_native


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
    for_native(R, lambda lo, hi: lib.row_mean_max_bf16(data_ptr(x), data_ptr(mean), data_ptr(peak), N, lo, hi),
               unit=N, align=1)
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
    for_native(B * N, lambda lo, hi: lib.col_mean_max_bf16(data_ptr(x), data_ptr(mean), data_ptr(peak), R, N, lo, hi),
               unit=R)
    return mean, peak
