"""ESDNet, the in-house baseline (SPEC section 4; Song et al., IJCAI 2024).

Sequential indices of parameter-free modules (the LIFs, ReLUs, pools) stay in place so the
checkpoint keys (``residual.1.weight``, ``maxpool_conv.2.bias``, ...) match the release.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .base import SpikingRestorationNet
from .layers import conv1x1, conv3x3, mda, tdbn, upsample_seq
from .neurons import LIF_THRESHOLD, Switchable, lif



class SRB(nn.Module):
    """Spiking residual block: ``attn(residual(x) + shortcut(x)) + x``."""

    def __init__(self, dim: int, T: int = 4):
        super().__init__()
        self.residual = nn.Sequential(
            lif(), conv3x3(dim, dim), tdbn(dim, LIF_THRESHOLD),
            lif(), conv3x3(dim, dim), tdbn(dim, LIF_THRESHOLD * 0.2),
        )
        self.shortcut = nn.Sequential(conv3x3(dim, dim), tdbn(dim, LIF_THRESHOLD))
        self.attn = mda(dim, T)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return self.attn(self.residual(x_seq) + self.shortcut(x_seq)) + x_seq


class Down(nn.Module):
    """LIF -> 3x3 stride-2 conv (dim -> 2 dim) -> tdBN (no pooling, despite the key name)."""

    def __init__(self, dim: int):
        super().__init__()
        self.maxpool_conv = nn.Sequential(lif(), conv3x3(dim, dim * 2, stride=2), tdbn(dim * 2, LIF_THRESHOLD))

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x_seq)


class Up(Switchable, nn.Module):
    """Bilinear x2 -> LIF -> 3x3 conv (dim -> dim / 2) -> tdBN."""

    def __init__(self, dim: int):
        super().__init__()
        self.up = nn.Sequential(lif(), conv3x3(dim, dim // 2), tdbn(dim // 2, LIF_THRESHOLD))

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return self.up(upsample_seq(x_seq, 2, self.fast_backend))


class FRB(nn.Module):
    """Feature refinement on the time-averaged features: ``(1 - sa) * ca + sa * x``."""

    def __init__(self, channel: int, reduction: int = 8):
        super().__init__()
        hidden = channel // reduction
        self.ca = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channel, hidden, 1, bias=True), nn.ReLU(),
            nn.Conv2d(hidden, channel, 1, bias=True), nn.Sigmoid(),
        )
        self.sa = nn.Sequential(
            nn.Conv2d(channel, channel, 3, padding=1, bias=True),
            nn.Conv2d(channel, hidden, 3, padding=1, bias=True), nn.ReLU(),
            nn.Conv2d(hidden, channel, 3, padding=1, bias=True), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sa = self.sa(x)
        return (1 - sa) * self.ca(x) + sa * x


class ESDNet(SpikingRestorationNet):
    """ESDNet (SPEC 4): ``[B, 3, H, W]`` in [0, 1] -> derained ``[B, 3, H, W]``.

    Indices 0-2 of the block-count tuples are used; the last decoder level runs at 2 dim
    channels (the concatenation is not reduced).
    """

    size_multiple = 4

    def __init__(self, dim: int = 48, en_num_blocks: Sequence[int] = (4, 4, 8, 8),
                 de_num_blocks: Sequence[int] = (2, 2, 2, 2), T: int = 4):
        super().__init__()
        self.config = dict(dim=dim, en_num_blocks=list(en_num_blocks), de_num_blocks=list(de_num_blocks), T=T)
        self.T = T

        def srbs(n: int, channels: int) -> nn.Sequential:
            return nn.Sequential(*[SRB(channels, T) for _ in range(n)])

        self.patch_embed = nn.Module()
        self.patch_embed.proj = conv3x3(3, dim)
        self.encoder_level1 = srbs(en_num_blocks[0], dim)
        self.down1_2 = Down(dim)
        self.encoder_level2 = srbs(en_num_blocks[1], dim * 2)
        self.down2_3 = Down(dim * 2)
        self.encoder_level3 = srbs(en_num_blocks[2], dim * 4)
        self.decoder_level3 = srbs(de_num_blocks[2], dim * 4)
        self.up3_2 = Up(dim * 4)
        self.reduce_chan_level2 = nn.Sequential(lif(), conv1x1(dim * 4, dim * 2), tdbn(dim * 2, LIF_THRESHOLD))
        self.decoder_level2 = srbs(de_num_blocks[1], dim * 2)
        self.up2_1 = Up(dim * 2)
        self.decoder_level1 = srbs(de_num_blocks[0], dim * 2)
        self.refinement = FRB(dim * 2)
        self.output = nn.Sequential(nn.Conv2d(dim * 2, 3, 3, padding=1, bias=True))

    def forward_aligned(self, img: torch.Tensor) -> torch.Tensor:
        e1, d2 = self.descend(img)  # [T, B, dim, H, W], [T, B, 4 dim, H/2, W/2]
        d2 = self.decoder_level2(self.reduce_chan_level2(d2))

        d1 = torch.cat([self.up2_1(d2), e1], dim=2)  # [T, B, 2 dim, H, W]
        d1 = self.decoder_level1(d1)
        return self.output(self.refinement(d1.mean(0))) + img
