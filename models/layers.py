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

from .kernels import interpolate2x, upsample_spikes
from .kernels.backend import needs_grad, runs_bf16_natively
from .kernels.common import GATE_AXES, LOW_PRECISION
from .kernels.gating import gated_product
from .kernels.pooling import col_mean_max, gate_mean_max, row_mean_max
from .neurons import LIF_THRESHOLD, Switchable

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


def global_avg(x: torch.Tensor) -> torch.Tensor:
    """``F.adaptive_avg_pool3d(x, 1)``: the mean over the last three dims, kept.

    Gradient-free bfloat16 / float16 input (mixed-precision inference) takes ``mean`` in the
    input's dtype (accumulated in float32, rounded once) instead: autocast runs the pooling in
    float32, which converts the whole tensor first and turns every gated activation after it
    into float32. Otherwise the pooling itself, whose rounding the golden vectors pin.
    """
    if x.dtype in LOW_PRECISION and not needs_grad(x):
        return x.mean(dim=(-3, -2, -1), keepdim=True)
    return F.adaptive_avg_pool3d(x, 1)


class GlobalAvgPool(nn.Module):
    """``nn.AdaptiveAvgPool3d(1)`` computed by :func:`global_avg`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return global_avg(x)


class GlobalMaxPool(nn.Module):
    """``nn.AdaptiveMaxPool3d(1)`` computed by :func:`global_max`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return global_max(x)


def _planes(x: torch.Tensor) -> tuple[torch.Tensor, bool] | None:
    """``x`` ``[B, L, C, H, W]`` as a contiguous ``[B, L, C, H*W]`` view (and ``True``) or, for the
    attention's transposed views of ``[L, B, C, H, W]`` tensors, ``[L, B, C, H*W]`` (``False``)."""
    if x.is_contiguous():
        return x.flatten(3), True
    if x.transpose(0, 1).is_contiguous():
        return x.transpose(0, 1).flatten(3), False
    return None


def plane_mean_max(x: torch.Tensor, over: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Float32 mean and max of ``x`` ``[B, L, C, H, W]`` over ``(C, H, W)`` (``over=2``) or
    ``(L, H, W)`` (``over=1``), shaped ``[B, L or C, 1, 1, 1]``, from one pass of the bfloat16
    pooling kernel (:mod:`models.kernels.pooling`); ``None`` where it does not apply (not
    gradient-free bfloat16 in one of :func:`_planes`' layouts), and the caller pools in PyTorch."""
    planes = _planes(x)
    stats = None if planes is None else row_mean_max(planes[0])  # over H*W: [B, L, C] or [L, B, C]
    if stats is None:
        return None
    mean, peak = (t if planes[1] else t.transpose(0, 1) for t in stats)
    return mean.mean(over)[..., None, None, None], peak.amax(over)[..., None, None, None]


def spatial_mean_max(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Float32 mean and max of ``x`` ``[B, L, C, H, W]`` over ``(L, C)``, shaped ``[B, H*W]``, from
    one pass of the bfloat16 pooling kernel; ``None`` where it does not apply (as :func:`plane_mean_max`)."""
    planes = _planes(x)
    stats = None if planes is None else col_mean_max(planes[0].flatten(0, 1))  # over C: [B*L or L*B, H*W]
    if stats is None:
        return None
    B, L = x.shape[:2]
    axis = 1 if planes[1] else 0
    mean, peak = (t.view(B, L, -1) if planes[1] else t.view(L, B, -1) for t in stats)
    return mean.mean(axis), peak.amax(axis)


class AxisGate(nn.Module):
    """The time or channel gate of spikingjelly's ``MultiDimensionalAttention`` (its private
    ``_AxisAttention``: mean and max over the other axes, a shared MLP, sigmoid of the sum) with
    the same keys. Its pooling is :class:`GlobalAvgPool` / :class:`GlobalMaxPool` (the same
    values), or in bfloat16 inference one pass of :func:`plane_mean_max`; its MLP is
    :class:`Float32MLP`."""

    def __init__(self, mlp: nn.Sequential, channel_axis: bool):
        super().__init__()
        self.channel_axis = channel_axis
        self.avg_pool = GlobalAvgPool()
        self.max_pool = GlobalMaxPool()
        self.sharedMLP = Float32MLP(*mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, C, H, W] -> [B, L, 1, 1, 1] or [B, 1, C, 1, 1]
        stats = plane_mean_max(x, over=1 if self.channel_axis else 2)
        if stats is not None:
            return self.score(*stats).to(x.dtype)
        pooled = x.transpose(1, 2) if self.channel_axis else x
        return self.score(self.avg_pool(pooled), self.max_pool(pooled))

    def score(self, mean: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
        """The gate from its pooled statistics (``[B, L or C, 1, 1, 1]`` each)."""
        score = torch.sigmoid(self.sharedMLP(mean) + self.sharedMLP(peak))
        return score.transpose(1, 2) if self.channel_axis else score


class SpatialGate(nn.Module):
    """The spatial gate of spikingjelly's ``MultiDimensionalAttention`` (its private
    ``_SpatialAttention``: mean and max over ``(L, C)``, a 2->1 convolution, sigmoid), holding the
    same convolution; the max without gradients is ``amax`` (see :func:`global_max`), and in
    bfloat16 inference mean and max come from one pass of the pooling kernel."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C, H, W = x.shape
        stats = spatial_mean_max(x)
        if stats is not None:
            return self.score(*(t.view(B, 1, H, W).to(x.dtype) for t in stats))
        x = x.flatten(1, 2)
        peak = x.max(dim=1, keepdim=True).values if needs_grad(x) else x.amax(dim=1, keepdim=True)
        return self.score(x.mean(dim=1, keepdim=True), peak)

    def score(self, mean: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
        """The gate ``[B, 1, 1, H, W]`` from its pooled statistics (``[B, 1, H, W]`` each)."""
        return torch.sigmoid(self.conv(torch.cat((mean, peak), dim=1))).unsqueeze(1)


class Float32MLP(nn.Sequential):
    """An attention gate's shared MLP (1x1x1 Conv3d, ReLU, 1x1x1 Conv3d on pooled
    ``[B, L, 1, 1, 1]`` values), run in float32 outside autocast and returned in its input's
    dtype. In float32 and float64 it is plain ``nn.Sequential`` (same keys, same values); under bf16
    autocast it spares a few hundred tiny bf16 convolutions per tile, whose set-up cost more
    than their arithmetic (about 9% of a bf16 inference tile; docs/speed.md)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in LOW_PRECISION and not torch.is_autocast_enabled(x.device.type):
            return super().forward(x)  # nothing to switch off (entering the context costs more than the MLP)
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float() if x.dtype in LOW_PRECISION else x).to(x.dtype)


class MultiDimensionalAttention(Switchable, layer.MultiDimensionalAttention):
    """spikingjelly's module, with the gated products of the ``fast`` implementation formed in
    the ``[T, B, C, H, W]`` layout of its input.

    spikingjelly gates a transposed ``[B, T, C, H, W]`` view and transposes the result back (the
    ``reference`` implementation): with ``B > 1`` every product, and in training each of their
    gradients, walks memory with mismatched strides, and the output is a non-contiguous view that
    the next layer copies. ``fast`` still shows each gate the ``[B, T, C, H, W]`` view (the same
    pooling, the same scores) and transposes the score instead, so that every product and the
    output are contiguous ``[T, B, C, H, W]`` tensors with the same values; the gradients are the
    same sums in another memory order (equal to float rounding). With gradients the operands
    keep spikingjelly's order ``gate * out`` (autograd sums the two gradient terms of ``out`` in
    that order), and the gates pool through :class:`~models.kernels.pooling.GatePool` (the same
    statistics; one gradient tensor for mean and max); without them ``out * gate`` (the same
    product), which also keeps the reference implementation's output contiguous in inference.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl != "fast":
            out = x.transpose(0, 1)
            for attention in (self.ta, self.ca, self.sa):
                if attention is not None:
                    out = attention(out) * out if needs_grad(out) else out * attention(out)
            return self.relu(out).transpose(0, 1)
        out = x
        for attention, axis in zip((self.ta, self.ca, self.sa), GATE_AXES):
            if attention is None:
                continue
            if needs_grad(out) and out.is_contiguous() and hasattr(attention, "score"):
                gate = attention.score(*gate_mean_max(out, axis, self.kernel_backend))
            else:
                gate = attention(out.transpose(0, 1))
            gate = gate.transpose(0, 1).contiguous()
            out = gated_product(gate, out, axis, self.kernel_backend) if needs_grad(out) else out * gate
        return self.relu(out)


def mda(channels: int, T: int = 4) -> layer.MultiDimensionalAttention:
    """Multi-dimensional attention (time, channel, spatial gating, then ReLU).

    The released model uses ``reduction_t=4`` with T=4; for T < 4 the time MLP keeps one
    hidden unit so that other T still build. spikingjelly's module (its products in the order
    of :class:`MultiDimensionalAttention`) with three parts swapped for ones that compute the
    same values (same keys): the time and channel gates (:class:`AxisGate`) and the spatial
    gate (:class:`SpatialGate`).
    """
    attn = MultiDimensionalAttention(T=T, C=channels, reduction_t=min(4, T), reduction_c=16, kernel_size=3)
    attn.ta = AxisGate(attn.ta.sharedMLP, channel_axis=False)
    attn.ca = AxisGate(attn.ca.sharedMLP, channel_axis=True)
    attn.sa = SpatialGate(attn.sa.conv)
    return attn


def upsample_seq(x_seq: torch.Tensor, scale: int = 2, backend: str | None = None) -> torch.Tensor:
    """Bilinear upsampling of every time step, ``align_corners=False``.

    Gradient-free bfloat16 (mixed-precision inference) at ``scale`` 2 runs the native x2 kernel
    of VLIF's spike resize (float32 arithmetic, one rounding; PyTorch's bfloat16 bilinear kernel
    takes 1.7x the float32 time on a CPU). ``backend`` (given by the ``fast`` implementation of
    the calling layer, :class:`~models.neurons.Switchable`) gives float32 training at ``scale`` 2
    the native backward (:func:`~models.kernels.interpolate2x`: the same forward, the gradient to
    float rounding).
    """
    T, B = x_seq.shape[:2]
    x = x_seq.flatten(0, 1)
    if scale == 2 and runs_bf16_natively(x, "auto"):
        x = upsample_spikes(x, (2 * x.shape[-2], 2 * x.shape[-1]))
    elif scale == 2 and backend is not None:
        x = interpolate2x(x, backend)
    else:
        x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    return x.view(T, B, *x.shape[1:])  # [T, B, C, H*scale, W*scale]


class TimeAttention(AxisGate):
    """Gating weights over the L steps of ``[B, L, C, h, w]`` -> ``[B, L, 1, 1, 1]`` (SPEC 2): the
    time gate of the multi-dimensional attention (:class:`AxisGate`: mean and max over
    ``(C, h, w)``, a shared MLP of two 1x1x1 Conv3d, sigmoid of the sum) over the SMU's
    ``L = T r^2`` steps, hidden width ``L / ratio``."""

    def __init__(self, steps: int, ratio: int = 4):
        hidden = max(1, steps // ratio)
        super().__init__(nn.Sequential(
            nn.Conv3d(steps, hidden, 1, bias=False),
            nn.ReLU(),
            nn.Conv3d(hidden, steps, 1, bias=False),
        ), channel_axis=False)
