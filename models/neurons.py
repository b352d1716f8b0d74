"""Spiking neurons of VLIFNet and ESDNet (SPEC section 1).

- ``lif``: spikingjelly's LIFNode with the released hyper-parameters (binary spikes).
- ``NILIF``: normalised integer LIF, multi-level spikes in {0, 1/4, ..., 1}.
- ``VLIF``: visual LIF; NI-LIF walked over the r*r sub-pixels of every time step
  (patch-to-time), resized back and mixed by a 1x1 ``channel_adjust`` convolution.

All neurons are multi-step: they take ``x_seq`` ``[T, B, C, H, W]``. NI-LIF and VLIF keep
no state between calls; the LIF state is cleared by the network at every forward.

Two implementations compute the same thing (:func:`set_neuron_impl`):
- ``reference``: the plain code in this file (and spikingjelly's LIF), pinned by the golden
  vectors;
- ``fast`` (default): the kernels of :mod:`models.kernels` - identical spikes and outputs,
  gradients equal to float rounding, less memory; small C kernels built on first use
  (in-place PyTorch loops where no C compiler works, and on CUDA).
The switch is global and changes no module or state-dict key, so it can be flipped at any
time, also on a built or loaded network.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import neuron, surrogate

from . import kernels
from .kernels.common import NILIF_DECAY, NILIF_LEVELS, patch_to_time, time_to_patch

LIF_THRESHOLD = 0.15

NEURON_IMPLS = ("reference", "fast")
_neuron_impl = "fast"


def set_neuron_impl(name: str) -> str:
    """Select the neuron implementation for every network: ``reference`` or ``fast``.

    Returns the previous choice. Global and stateless: no keys, parameters or buffers change.
    """
    global _neuron_impl
    if name not in NEURON_IMPLS:
        raise ValueError(f"unknown neuron implementation {name!r}; choose one of {', '.join(NEURON_IMPLS)}")
    previous, _neuron_impl = _neuron_impl, name
    return previous


def get_neuron_impl() -> str:
    """The implementation in use, ``reference`` or ``fast``."""
    return _neuron_impl


@contextlib.contextmanager
def neuron_impl(name: str) -> Iterator[None]:
    """``with neuron_impl("reference"): ...`` runs the block with that implementation."""
    previous = set_neuron_impl(name)
    try:
        yield
    finally:
        set_neuron_impl(previous)


class LIF(neuron.LIFNode):
    """spikingjelly's LIFNode; under the ``fast`` implementation its multi-step CPU forward
    runs :func:`models.kernels.lif_multi_step` (same spikes and membranes, bit for bit).

    The fast kernel covers this project's configuration (tau 2, no input decay, hard reset to
    0 not detached, sigmoid surrogate, float32) from a freshly reset or gradient-free state;
    anything else, and CUDA (where spikingjelly already runs a fused kernel), goes to
    spikingjelly.
    """

    def _fast_ok(self, x_seq: torch.Tensor) -> bool:
        v = self.v
        fresh = isinstance(v, float) or not (torch.is_grad_enabled() and v.requires_grad)
        return (
            _neuron_impl == "fast"
            and fresh
            and x_seq.device.type == "cpu"
            and x_seq.dtype == torch.float32
            and self.tau == 2.0
            and not self.decay_input
            and self.v_reset == 0.0
            and not self.detach_reset
            and not self.store_v_seq
            and self._neuron_precision is None
            and type(self.surrogate_function) is surrogate.Sigmoid
            and self.surrogate_function.spiking
        )

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or not self._fast_ok(x_seq):
            return super().multi_step_forward(x_seq, *args, **kwargs)
        v0 = self.v
        if isinstance(v0, float) or v0.shape != x_seq.shape[1:]:
            v0 = torch.full_like(x_seq[0], float(v0) if isinstance(v0, float) else self.v_reset)
        spikes, v = kernels.lif_multi_step(
            x_seq, v0, self.tau, float(self.v_threshold), float(self.surrogate_function.alpha)
        )
        self.v = v
        return spikes


def lif(v_threshold: float = LIF_THRESHOLD) -> LIF:
    """The released LIF: tau 2, no input decay, hard reset to 0, sigmoid surrogate (alpha 4)."""
    return LIF(
        tau=2.0,
        decay_input=False,
        v_threshold=v_threshold,
        v_reset=0.0,
        surrogate_function=surrogate.Sigmoid(alpha=4.0),
        detach_reset=False,
        step_mode="m",
    )


class QuantizeSpike(torch.autograd.Function):
    """``s = round(clamp(m, 0, 4)) / 4`` with a straight-through gradient of 1/4 on [0, 4].

    ``torch.round`` rounds half to even (0.5 -> 0, 1.5 -> 2, 2.5 -> 2), as the released code.
    """

    @staticmethod
    def forward(ctx, m: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(m)
        return torch.round(torch.clamp(m, 0, NILIF_LEVELS)) / NILIF_LEVELS

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (m,) = ctx.saved_tensors
        inside = (m >= 0) & (m <= NILIF_LEVELS)
        return grad_output * inside.to(grad_output.dtype) / NILIF_LEVELS


def ni_lif_reference(x_seq: torch.Tensor) -> torch.Tensor:
    """NI-LIF over the first axis of ``x_seq`` ``[L, ...]``; returns spikes of the same shape.

    ``m_0 = x_0``; ``m_t = (m_{t-1} - stopgrad(s_{t-1})) * 0.25 + x_t``, where ``m_{t-1}`` is the
    membrane before reset and the reset subtracts the normalised spike (SPEC 1.2, released
    behaviour). This plain loop is the reference the golden vectors pin.
    """
    spikes = []
    m = x_seq[0]
    s = QuantizeSpike.apply(m)
    spikes.append(s)
    for t in range(1, x_seq.shape[0]):
        m = (m - s.detach()) * NILIF_DECAY + x_seq[t]
        s = QuantizeSpike.apply(m)
        spikes.append(s)
    return torch.stack(spikes)


def ni_lif(x_seq: torch.Tensor) -> torch.Tensor:
    """NI-LIF over the first axis of ``x_seq`` ``[L, ...]`` with the selected implementation."""
    if _neuron_impl == "fast":
        return kernels.ni_lif(x_seq)
    return ni_lif_reference(x_seq)


class NILIF(nn.Module):
    """Multi-step NI-LIF layer (no parameters, no state between calls)."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return ni_lif(x_seq)


class VLIF(nn.Module):
    """Visual LIF (SPEC 1.3): real-valued output ``[T, B, C, H, W]`` for input of the same shape."""

    def __init__(self, channels: int, r: int = 2):
        super().__init__()
        self.r = r
        self.node = NILIF()
        self.channel_adjust = nn.Conv2d(channels * r * r, channels, 1, bias=False)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        T, B, C, H, W = x_seq.shape
        if _neuron_impl == "fast":
            y = kernels.vlif_spikes(x_seq, self.r)  # [T*B, C*r*r, H/r, W/r], one fused kernel
            y = kernels.upsample_spikes(y, (H, W))  # exact: spikes are multiples of 1/4
        else:
            spikes = self.node(patch_to_time(x_seq, self.r))  # [T*r*r, B, C, H/r, W/r]
            y = time_to_patch(spikes, T, self.r)  # [T*B, C*r*r, H/r, W/r]
            y = F.interpolate(y, size=(H, W), mode="bilinear", align_corners=False)
        return self.channel_adjust(y).view(T, B, C, H, W)


SDEM_NEURONS = ("vlif", "lif", "nilif")


def sdem_neuron(kind: str, channels: int, r: int) -> nn.Module:
    """The neuron of SDEM's second group: the paper's VLIF, or LIF / NI-LIF for ablations."""
    if kind == "vlif":
        return VLIF(channels, r)
    if kind == "lif":
        return lif()
    if kind == "nilif":
        return NILIF()
    raise ValueError(f"unknown SDEM neuron {kind!r}; choose one of {', '.join(SDEM_NEURONS)}")
