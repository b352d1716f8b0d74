"""Constants and reshapes shared by the neurons (:mod:`models.neurons`) and their kernels."""
from __future__ import annotations

import torch
import torch.nn.functional as F

NILIF_LEVELS = 4  # spikes are k / 4, k in 0..4
NILIF_DECAY = 0.25
LOW_PRECISION = (torch.bfloat16, torch.float16)  # mixed-precision dtypes: spikes are decided in float32
GATE_AXES = ("time", "channel", "spatial")  # the attention's gates, in the order they apply

def patch_to_time(x_seq: torch.Tensor, r: int) -> torch.Tensor:
    """``[T, B, C, H, W]`` -> ``[T*r*r, B, C, H/r, W/r]``, index ``t*r*r + p`` (time-major).

    Sub-pixel ``p = i*r + j`` is the pixel-unshuffle channel offset (SPEC 1.3 steps 1-2).
    """
    T, B, C, H, W = x_seq.shape
    if H % r or W % r:
        raise ValueError(f"patch-to-time needs H and W divisible by r={r}, got {H}x{W}")
    y = F.pixel_unshuffle(x_seq.flatten(0, 1), r)  # [T*B, C*r*r, H/r, W/r]
    y = y.view(T, B, C, r * r, H // r, W // r)
    y = y.permute(0, 3, 1, 2, 4, 5)  # [T, r*r, B, C, H/r, W/r]
    return y.reshape(T * r * r, B, C, H // r, W // r)


def time_to_patch(y_seq: torch.Tensor, T: int, r: int) -> torch.Tensor:
    """Inverse of :func:`patch_to_time` up to the unshuffle: ``[T*r*r, B, C, h, w]`` ->
    ``[T*B, C*r*r, h, w]`` in the pixel-unshuffle channel layout (SPEC 1.3 step 4)."""
    _, B, C, h, w = y_seq.shape
    y = y_seq.view(T, r * r, B, C, h, w)
    y = y.permute(0, 2, 3, 1, 4, 5)  # [T, B, C, r*r, h, w]
    return y.reshape(T * B, C * r * r, h, w)
