"""Mean and max pooling of the attention gates in bfloat16 inference, one pass for both.

Under mixed precision PyTorch's CPU reductions of bfloat16 tensors run at a third of their
float32 speed (``mean`` converts its input first); the attention gates pool every activation
twice (mean and max) in each of their three gates. These C kernels read a bfloat16 tensor once
and return both statistics in float32. Used only where :func:`models.kernels.backend.runs_bf16_natively`
holds; the float32 path keeps PyTorch's pooling, whose rounding the golden vectors pin.
"""
from __future__ import annotations

import torch

from .backend import data_ptr, for_native, native_lib, runs_bf16_natively


def row_mean_max(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Float32 mean and max over the last dim of contiguous bfloat16 ``x`` ``[..., N]``, or
    ``None`` where the native kernel does not apply (the caller pools in PyTorch)."""
    if not (runs_bf16_natively(x, "auto") and x.is_contiguous() and x.numel()):
        return None
    lib = native_lib("auto", x, bf16=True)
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
    if not (runs_bf16_natively(x, "auto") and x.is_contiguous() and x.dim() == 3 and x.numel()):
        return None
    lib = native_lib("auto", x, bf16=True)
    B, R, N = x.shape
    mean = torch.empty(B, N, dtype=torch.float32)
    peak = torch.empty_like(mean)
    for_native(B * N, lambda lo, hi: lib.col_mean_max_bf16(data_ptr(x), data_ptr(mean), data_ptr(peak), R, N, lo, hi),
               unit=R)
    return mean, peak
