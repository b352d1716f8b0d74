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


def mda(channels: int, T: int = 4) -> layer.MultiDimensionalAttention:
    """Multi-dimensional attention (time, channel, spatial gating, then ReLU).

    The released model uses ``reduction_t=4`` with T=4; for T < 4 the time MLP keeps one
    hidden unit so that other T still build.
    """
    return layer.MultiDimensionalAttention(
        T=T, C=channels, reduction_t=min(4, T), reduction_c=16, kernel_size=3
    )


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
        self.sharedMLP = nn.Sequential(
            nn.Conv3d(steps, hidden, 1, bias=False),
            nn.ReLU(),
            nn.Conv3d(hidden, steps, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = F.adaptive_avg_pool3d(x, 1)  # [B, L, 1, 1, 1]
        peak = F.adaptive_max_pool3d(x, 1)  # [B, L, 1, 1, 1]
        return torch.sigmoid(self.sharedMLP(avg) + self.sharedMLP(peak))
