"""SDEM's mixing ``high * h + low * (u - h) + u * h`` in bfloat16 inference, one pass.

PyTorch evaluates the expression as six element-wise operations, each reading and writing the
whole tensor and, in bfloat16, widening and rounding at every step. The C kernel reads ``u`` and
``h`` once, computes in float32 and rounds once: exactly the expression on the widened inputs,
rounded to bfloat16. Used only where :func:`models.kernels.backend.bf16_lib` holds.
"""
from __future__ import annotations

import torch

from .backend import bf16_lib, data_ptr, for_native


def sdem_mix(u: torch.Tensor, h: torch.Tensor, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor | None:
    """The mix of contiguous bfloat16 ``u`` and its spikes ``h`` (same shape) with the scalars
    ``high`` and ``low``, or ``None`` where the native kernel does not apply."""
    lib = bf16_lib(u)
    if (lib is None or h.dtype != u.dtype or h.shape != u.shape or not u.is_contiguous()
            or not h.is_contiguous() or high.numel() != 1 or low.numel() != 1):
        return None
    out = torch.empty_like(u)
    a, b = float(high), float(low)
    for_native(u.numel(), lambda lo, hi: lib.sdem_mix_bf16(data_ptr(u), data_ptr(h), data_ptr(out), a, b, lo, hi))
    return out
