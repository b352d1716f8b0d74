"""VLIFNet, the paper's network (SPEC section 3).

Attribute names are the released checkpoint's keys; the released class names are given in
each docstring so the code reads against the authors' release and the paper's figure.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .base import SpikingRestorationNet
from .kernels.backend import needs_grad
from .kernels.common import LOW_PRECISION
from .kernels.mixing import sdem_mix, sdem_mix_one_pass
from .layers import TimeAttention, conv1x1, conv3x3, mda, tdbn, upsample_seq
from .neurons import LIF_THRESHOLD, NILIF, Switchable, build_neuron, lif, patch_to_time


def decompose(u: torch.Tensor, h: torch.Tensor, high: torch.Tensor, low: torch.Tensor,
              fast: bool = False, backend: str = "auto") -> torch.Tensor:
    """SDEM's mixing ``high * h + low * (u - h) + u * h`` of an input ``u`` and its spikes ``h``.

    In gradient-free mixed precision (bfloat16 / float16 ``u``) the mix stays in ``u``'s dtype
    (float32 scalars would promote it to a float32 tensor, which the next convolution converts
    back): bfloat16 in one pass of a C kernel (:func:`models.kernels.mixing.sdem_mix`, float32
    arithmetic rounded once), otherwise with the scalars cast to that dtype. ``fast`` float32
    (the ``fast`` implementation) takes one pass of a C kernel, the same bits, and with gradients
    one autograd node with a one-pass backward (:func:`models.kernels.mixing.sdem_mix_one_pass`);
    ``fast`` bfloat16 training too (float32 arithmetic rounded once to bfloat16, as in inference,
    where autograd's expression rounds ``u - h`` and ``u * h`` to bfloat16 on the way).
    """
    if u.dtype in LOW_PRECISION and not needs_grad(u):
        mixed = sdem_mix(u, h, high, low)
        if mixed is not None:
            return mixed
        high, low = high.to(u.dtype), low.to(u.dtype)
    elif fast and u.dtype in (torch.float32, torch.bfloat16):
        mixed = sdem_mix_one_pass(u, h, high, low, backend)
        if mixed is not None:
            return mixed
    return high * h + low * (u - h) + u * h


class SDEM(Switchable, nn.Module):
    """Spiking Decomposition and Enhancement Module (released ``Spiking_Residual_Block``).

    Each group splits its input ``u`` with a neuron into a high-frequency part ``h`` (the
    neuron's output), a low-frequency part ``u - h`` and an enhancement ``u * h``, mixes them
    with learnt scalars (:func:`decompose`; its one-pass kernel with ``impl == "fast"``), then
    convolves. ``[T, B, dim, H, W]`` -> same.
    """

    def __init__(self, dim: int, T: int = 4, r: int = 2, neuron: str = "vlif"):
        super().__init__()
        self.high_freq_scale_1 = nn.Parameter(torch.ones(1))
        self.low_freq_scale_1 = nn.Parameter(torch.ones(1))
        self.high_freq_scale_2 = nn.Parameter(torch.ones(1))
        self.low_freq_scale_2 = nn.Parameter(torch.ones(1))
        self.lif_1 = lif()
        self.conv1 = conv3x3(dim, dim)
        self.bn1 = tdbn(dim, LIF_THRESHOLD)
        self.lif_2 = build_neuron(neuron, dim, r)
        self.conv2 = conv3x3(dim, dim)
        self.bn2 = tdbn(dim, LIF_THRESHOLD * 0.2)
        self.shortcut = nn.Sequential(conv3x3(dim, dim), tdbn(dim, LIF_THRESHOLD))
        self.attn = mda(dim, T)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        fast, backend = self.impl == "fast", self.kernel_backend
        h1 = self.lif_1(x_seq)
        o = self.bn1(self.conv1(decompose(x_seq, h1, self.high_freq_scale_1, self.low_freq_scale_1, fast, backend)))
        h2 = self.lif_2(o)
        o = self.bn2(self.conv2(decompose(o, h2, self.high_freq_scale_2, self.low_freq_scale_2, fast, backend)))
        return self.attn(o + self.shortcut(x_seq)) + x_seq


class SMU(Switchable, nn.Module):
    """Spiking Multi-scale Unit (released ``SUNet_Level1_Block``).

    An SDEM, then patch-to-time at half resolution (T*r*r steps of NI-LIF), attention over
    those steps, a strided Conv3d back to T steps, two LIF-conv-tdBN-MDA groups and a
    bilinear upsampling added to the SDEM output. ``[T, B, dim, H, W]`` -> same.
    """

    def __init__(self, dim: int, T: int = 4, r: int = 2, neuron: str = "vlif"):
        super().__init__()
        self.T, self.r = T, r
        steps = T * r * r
        self.initial_residual = SDEM(dim, T, r, neuron)
        self.node = NILIF()
        self.time_attention = TimeAttention(steps, ratio=4)
        self.temporal_compress = nn.Sequential(
            nn.Conv3d(dim, dim, kernel_size=(r * r, 1, 1), stride=(r * r, 1, 1), bias=False),
            nn.ReLU(),
        )
        self.lif_1 = lif()
        self.conv_1 = conv3x3(dim, dim)
        self.bn_1 = tdbn(dim, LIF_THRESHOLD)
        self.attn_1 = mda(dim, T)
        self.lif_2 = lif()
        self.conv_2 = conv3x3(dim, dim)
        self.bn_2 = tdbn(dim, LIF_THRESHOLD)
        self.attn_2 = mda(dim, T)
        self.final_attn = mda(dim, T)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        skip = self.initial_residual(x_seq)
        s = self.node(patch_to_time(skip, self.r))  # [T*r*r, B, C, h, w]
        s = s.transpose(0, 1)  # [B, T*r*r, C, h, w]
        s = s * self.time_attention(s)
        s = self.temporal_compress(s.transpose(1, 2))  # [B, C, T, h, w]
        o = s.permute(2, 0, 1, 3, 4).contiguous()  # [T, B, C, h, w]
        o = self.attn_1(self.bn_1(self.conv_1(self.lif_1(o))))
        o = self.attn_2(self.bn_2(self.conv_2(self.lif_2(o))))
        return self.final_attn(upsample_seq(o, self.r, self.fast_backend) + skip)


class DownSampling(nn.Module):
    """LIF -> 3x3 stride-2 conv (dim -> 2 dim) -> tdBN."""

    def __init__(self, dim: int):
        super().__init__()
        self.lif = lif()
        self.conv = conv3x3(dim, dim * 2, stride=2)
        self.bn = tdbn(dim * 2, LIF_THRESHOLD)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.lif(x_seq)))


class UpSampling(Switchable, nn.Module):
    """Bilinear x2 -> LIF -> 3x3 conv (dim -> dim / 2) -> tdBN."""

    def __init__(self, dim: int):
        super().__init__()
        self.lif = lif()
        self.conv = conv3x3(dim, dim // 2)
        self.bn = tdbn(dim // 2, LIF_THRESHOLD)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.lif(upsample_seq(x_seq, 2, self.fast_backend))))


class VLIFNet(SpikingRestorationNet):
    """VLIFNet (SPEC 3): ``[B, 3, H, W]`` rainy image in [0, 1] -> derained image, same shape.

    Only indices 1 and 2 of the block-count tuples are used (released behaviour); level 1 is
    built from SMUs. ``neuron`` picks SDEM's second neuron (``vlif``, ``lif``, ``nilif``) for
    ablations; ``T`` and ``r`` default to the released 4 and 2.
    """

    def __init__(
        self,
        dim: int = 48,
        en_num_blocks: Sequence[int] = (4, 4, 8, 8),
        de_num_blocks: Sequence[int] = (2, 2, 2, 2),
        T: int = 4,
        use_refinement: bool = False,
        neuron: str = "vlif",
        r: int = 2,
    ):
        super().__init__()
        self.config = dict(
            dim=dim, en_num_blocks=list(en_num_blocks), de_num_blocks=list(de_num_blocks),
            T=T, use_refinement=use_refinement, neuron=neuron, r=r,
        )
        self.T = T
        self.size_multiple = 4 * r  # two stride-2 levels, then patch-to-time by r

        def sdems(n: int, channels: int) -> nn.Sequential:
            return nn.Sequential(*[SDEM(channels, T, r, neuron) for _ in range(n)])

        self.patch_embed = nn.Module()
        self.patch_embed.proj = conv3x3(3, dim)
        self.encoder_level1 = SMU(dim, T, r, neuron)
        self.down1_2 = DownSampling(dim)
        self.encoder_level2 = sdems(en_num_blocks[1], dim * 2)
        self.down2_3 = DownSampling(dim * 2)
        self.encoder_level3 = sdems(en_num_blocks[2], dim * 4)
        self.decoder_level3 = sdems(de_num_blocks[2], dim * 4)
        self.up3_2 = UpSampling(dim * 4)
        self.lif_level2 = lif()
        self.reduce_conv_level2 = conv1x1(dim * 4, dim * 2)
        self.reduce_bn_level2 = tdbn(dim * 2, LIF_THRESHOLD)
        self.decoder_level2 = sdems(de_num_blocks[1], dim * 2)
        self.up2_1 = UpSampling(dim * 2)
        self.lif_level1 = lif()
        self.reduce_conv_level1 = conv1x1(dim * 2, dim)
        self.reduce_bn_level1 = tdbn(dim, LIF_THRESHOLD)
        self.decoder_level1 = SMU(dim, T, r, neuron)
        self.additional_sunet_level1 = SMU(dim, T, r, neuron)
        if use_refinement:
            self.refinement_blocks = sdems(4, dim)
        self.output = nn.Sequential(nn.Conv2d(dim, 3, 3, padding=1, bias=True))

    def forward_aligned(self, img: torch.Tensor) -> torch.Tensor:
        e1, d2 = self.descend(img)  # [T, B, dim, H, W], [T, B, 4 dim, H/2, W/2]
        d2 = self.reduce_bn_level2(self.reduce_conv_level2(self.lif_level2(d2)))
        d2 = self.decoder_level2(d2)

        d1 = torch.cat([self.up2_1(d2), e1], dim=2)  # [T, B, 2 dim, H, W]
        d1 = self.reduce_bn_level1(self.reduce_conv_level1(self.lif_level1(d1)))
        d1 = self.additional_sunet_level1(self.decoder_level1(d1))
        if self.config["use_refinement"]:
            d1 = self.refinement_blocks(d1)
        return self.output(d1.mean(0)) + img
