"""Multi-step building layers shared by VLIFNet and ESDNet (SPEC section 2).

Convolutions and batch norms act per time step on ``x_seq`` ``[T, B, C, H, W]``
(spikingjelly flattens ``T*B``), so their checkpoint keys are plain ``weight``/``bias``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import layer

from .kernels.backend import needs_grad
from .kernels.common import LOW_PRECISION
from .neurons import LIF_THRESHOLD

TDBN_ALPHA = 1 / math.sqrt(2)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> layer.Conv2d:
    """Multi-step 3x3 convolution, padding 1, no bias."""
    return layer.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False, step_mode="m")


def conv1x1(in_ch: int, out_ch: int) -> layer.Conv2d:
    """Multi-step 1x1 convolution, no bias."""
    return layer.Conv2d(in_ch, out_ch, 1, bias=False, step_mode="m")


def tdbn(channels: int, v_th: float = LIF_THRESHOLD) -> layer.ThresholdDependentBatchNorm2d:
    """tdBN: BatchNorm2d over ``T*B`` with weight initialised to ``alpha * v_th``."""
    return layer.ThresholdDependentBatchNorm2d(alpha=TDBN_ALPHA, v_th=v_th, num_features=channels)


def global_max(x: torch.Tensor) -> torch.Tensor:
    """``F.adaptive_max_pool3d(x, 1)``: the max over the last three dims, kept.

    Without gradients it is ``amax`` (the same values, about 5x faster on a CPU: no indices);
    with them the pooling, whose gradient goes to one of tied maxima as in the released code
    (``amax`` would split it between them, and spikes tie often).
    """
    return F.adaptive_max_pool3d(x, 1) if needs_grad(x) else x.amax(dim=(-3, -2, -1), keepdim=True)


class GlobalMaxPool(nn.Module):
    """``nn.AdaptiveMaxPool3d(1)`` computed by :func:`global_max`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return global_max(x)


class SpatialGate(nn.Module):
    """The spatial gate of spikingjelly's ``MultiDimensionalAttention`` (its private
    ``_SpatialAttention``: mean and max over ``(L, C)``, a 2->1 convolution, sigmoid), holding the
    same convolution; the max without gradients is ``amax`` (see :func:`global_max`)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1, 2)
        peak = x.max(dim=1, keepdim=True).values if needs_grad(x) else x.amax(dim=1, keepdim=True)
        score = self.conv(torch.cat((x.mean(dim=1, keepdim=True), peak), dim=1))
        return torch.sigmoid(score).unsqueeze(1)


class Float32MLP(nn.Sequential):
    """An attention gate's shared MLP (1x1x1 Conv3d, ReLU, 1x1x1 Conv3d on pooled
    ``[B, L, 1, 1, 1]`` values), run in float32 outside autocast and returned in its input's
    dtype. In float32 and float64 it is plain ``nn.Sequential`` (same keys, same values); under bf16
    autocast it spares a few hundred tiny bf16 convolutions per tile, whose set-up cost more
    than their arithmetic (about 9% of a bf16 inference tile; docs/speed.md)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float() if x.dtype in LOW_PRECISION else x).to(x.dtype)


def mda(channels: int, T: int = 4) -> layer.MultiDimensionalAttention:
    """Multi-dimensional attention (time, channel, spatial gating, then ReLU).

    The released model uses ``reduction_t=4`` with T=4; for T < 4 the time MLP keeps one
    hidden unit so that other T still build. spikingjelly's module with three parts swapped
    for ones that compute the same values (same keys): the time and channel gates' max pooling
    (:class:`GlobalMaxPool`) and MLPs (:class:`Float32MLP`), and the spatial gate
    (:class:`SpatialGate`).
    """
    attn = layer.MultiDimensionalAttention(
        T=T, C=channels, reduction_t=min(4, T), reduction_c=16, kernel_size=3
    )
    for gate in (attn.ta, attn.ca):
        gate.max_pool = GlobalMaxPool()
        gate.sharedMLP = Float32MLP(*gate.sharedMLP)
    attn.sa = SpatialGate(attn.sa.conv)
    return attn


def upsample_seq(x_seq: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """Bilinear upsampling of every time step, ``align_corners=False``."""
    T, B = x_seq.shape[:2]
    x = F.interpolate(x_seq.flatten(0, 1), scale_factor=scale, mode="bilinear", align_corners=False)
    return x.view(T, B, *x.shape[1:])  # [T, B, C, H*scale, W*scale]


class TimeAttention(nn.Module):
    """Gating weights over the L steps of ``[B, L, C, h, w]`` -> ``[B, L, 1, 1, 1]`` (SPEC 2).

    Average- and max-pool over ``(C, h, w)``, a shared two-layer MLP of 1x1x1 Conv3d, sigmoid
    of the sum: the structure of spikingjelly's axis attention, written out because that class
    is private.
    """

    def __init__(self, steps: int, ratio: int = 4):
        super().__init__()
        hidden = max(1, steps // ratio)
        self.sharedMLP = Float32MLP(
            nn.Conv3d(steps, hidden, 1, bias=False),
            nn.ReLU(),
            nn.Conv3d(hidden, steps, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = F.adaptive_avg_pool3d(x, 1)  # [B, L, 1, 1, 1]
        peak = global_max(x)  # [B, L, 1, 1, 1]
        return torch.sigmoid(self.sharedMLP(avg) + self.sharedMLP(peak))
