"""Spiking neurons of VLIFNet and ESDNet (SPEC section 1), built by name from :data:`NEURONS`.

- ``lif`` (:class:`LIF`): spikingjelly's LIFNode with the released hyper-parameters (binary spikes).
- ``nilif`` (:class:`NILIF`): normalised integer LIF, multi-level spikes in {0, 1/4, ..., 1}.
- ``vlif`` (:class:`VLIF`): visual LIF; NI-LIF walked over the r*r sub-pixels of every time
  step (patch-to-time), resized back and mixed by a 1x1 ``channel_adjust`` convolution.

All neurons are multi-step: they take ``x_seq`` ``[T, B, C, H, W]``. NI-LIF and VLIF keep
no state between calls; the LIF state is cleared by the network at every forward.

Two implementations compute the same thing; each neuron module carries its own choice in
``impl`` (and ``kernel_backend``), set for a whole network by :func:`set_neuron_impl` or,
for a block of code, :func:`neuron_impl`:
- ``reference``: the plain code in this file (and spikingjelly's LIF), pinned by the golden
  vectors;
- ``fast`` (default): the kernels of :mod:`models.kernels` - identical spikes and outputs,
  gradients equal to float rounding, less memory; small C kernels built on first use
  (in-place PyTorch loops where no C compiler works, and on CUDA).
The choice changes no parameter, buffer or state-dict key. Where a fast kernel does not
cover a call (LIF on CUDA or in float64, say), the neuron runs the reference code and says
so once in the log.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import neuron, surrogate

from . import kernels
from .kernels.common import LOW_PRECISION, NILIF_DECAY, NILIF_LEVELS, patch_to_time, time_to_patch

log = logging.getLogger(__name__)

LIF_THRESHOLD = 0.15  # the released LIF threshold; tdBN normalises to it as well (SPEC 1.1)
NEURON_IMPLS = ("reference", "fast")
_fallbacks_logged: set[str] = set()


def _log_fallback_once(reason: str) -> None:
    if reason not in _fallbacks_logged:
        _fallbacks_logged.add(reason)
        log.info("fast LIF kernel not used for %s: running spikingjelly's LIF (same results)", reason)


class Switchable:
    """The implementation choice a module carries (see the module docstring): the neurons, and
    the layers between them whose fast path computes in another order or layout (SDEM's mixing,
    the attention's products, the bilinear upsampling's backward; :mod:`models.vlifnet`,
    :mod:`models.layers`, :mod:`models.esdnet`)."""

    impl: str = "fast"
    kernel_backend: str = "auto"

    @property
    def fast_backend(self) -> str | None:
        """The kernel backend under the ``fast`` implementation, ``None`` under ``reference``."""
        return self.kernel_backend if self.impl == "fast" else None


class LIF(Switchable, neuron.LIFNode):
    """spikingjelly's LIFNode; with ``impl == "fast"`` its multi-step CPU forward runs
    :func:`models.kernels.lif_multi_step` (same spikes and membranes, bit for bit; bfloat16 and
    float16 inputs charge and fire in float32).

    The kernel covers the released configuration that :meth:`released` builds (tau 2, no
    input decay, hard reset to 0 not detached, sigmoid surrogate), from a freshly reset or
    gradient-free state. CUDA (where spikingjelly runs its own fused kernel), float64 and
    other configurations run spikingjelly's code; the first such call is logged.
    """

    @classmethod
    def released(cls, v_threshold: float = LIF_THRESHOLD) -> LIF:
        """The released LIF: tau 2, no input decay, hard reset to 0, sigmoid surrogate (alpha 4)."""
        return cls(tau=2.0, decay_input=False, v_threshold=v_threshold, v_reset=0.0,
                   surrogate_function=surrogate.Sigmoid(alpha=4.0), detach_reset=False, step_mode="m")

    @classmethod
    def build(cls, channels: int, r: int) -> LIF:
        """The neuron for a layer of ``channels`` channels (LIF needs neither argument)."""
        return cls.released()

    def _kernel_fits(self) -> bool:
        return (self.tau == 2.0 and not self.decay_input and self.v_reset == 0.0 and not self.detach_reset
                and not self.store_v_seq and type(self.surrogate_function) is surrogate.Sigmoid
                and self.surrogate_function.spiking)

    def _fast_ok(self, x_seq: torch.Tensor) -> bool:
        if self.impl != "fast":
            return False
        v = self.v
        if not (isinstance(v, float) or not (torch.is_grad_enabled() and v.requires_grad)):
            return False  # a membrane that carries gradient from an earlier call: autograd must see it
        reason = ("CUDA" if x_seq.device.type != "cpu" else None) or (
            str(x_seq.dtype) if x_seq.dtype not in (torch.float32, *LOW_PRECISION) else None) or (
            None if self._kernel_fits() else "a non-released LIF configuration")
        if reason is not None:
            _log_fallback_once(reason)
        return reason is None

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or not self._fast_ok(x_seq):
            return super().multi_step_forward(x_seq, *args, **kwargs)
        v0 = self.v
        if isinstance(v0, float) or v0.shape != x_seq.shape[1:]:
            v0 = torch.full_like(x_seq[0], float(v0) if isinstance(v0, float) else self.v_reset,
                                 dtype=torch.float32 if x_seq.dtype in LOW_PRECISION else None)  # membranes: float32
        spikes, v = kernels.lif_multi_step(x_seq, v0, self.tau, float(self.v_threshold),
                                           float(self.surrogate_function.alpha), self.kernel_backend)
        self.v = v
        return spikes


def lif(v_threshold: float = LIF_THRESHOLD) -> LIF:
    """The released LIF (:meth:`LIF.released`)."""
    return LIF.released(v_threshold)


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


class NILIF(Switchable, nn.Module):
    """Multi-step NI-LIF layer (no parameters, no state between calls)."""

    @classmethod
    def build(cls, channels: int, r: int) -> NILIF:
        """The neuron for a layer of ``channels`` channels (NI-LIF needs neither argument)."""
        return cls()

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if self.impl == "fast":
            return kernels.ni_lif(x_seq, self.kernel_backend)
        return ni_lif_reference(x_seq)


class VLIF(Switchable, nn.Module):
    """Visual LIF (SPEC 1.3): real-valued output ``[T, B, C, H, W]`` for input of the same shape.

    ``adjust_first`` (default ``False``, the released order) runs the 1x1 ``channel_adjust``
    on the ``C r^2`` spike channels at ``H/r x W/r`` and resizes its ``C`` output channels,
    instead of resizing the spikes and mixing them at ``H x W``. Both maps are linear and the
    bilinear weights of every output pixel sum to one, so the two orders compute the same
    function; the first does ``1/r^2`` of the 1x1 and resize work and rounds differently.
    :func:`utils.fuse.prepare_for_inference` turns it on for inference.
    """

    def __init__(self, channels: int, r: int = 2):
        super().__init__()
        self.r = r
        self.adjust_first = False
        self.node = NILIF()
        self.channel_adjust = nn.Conv2d(channels * r * r, channels, 1, bias=False)

    @classmethod
    def build(cls, channels: int, r: int) -> VLIF:
        """The neuron for a layer of ``channels`` channels with patch factor ``r``."""
        return cls(channels, r)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        T, B, C, H, W = x_seq.shape
        if self.impl == "fast":
            y = kernels.vlif_spikes(x_seq, self.r, self.kernel_backend)  # [T*B, C*r*r, H/r, W/r], one kernel
        else:
            spikes = self.node(patch_to_time(x_seq, self.r))  # [T*r*r, B, C, H/r, W/r]
            y = time_to_patch(spikes, T, self.r)  # [T*B, C*r*r, H/r, W/r]
        if self.adjust_first:
            y = self._resize(self.channel_adjust(y), (H, W))
        else:
            y = self.channel_adjust(self._resize(y, (H, W)))
        return y.view(T, B, C, H, W)

    def _resize(self, y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.impl == "fast":
            return kernels.upsample_spikes(y, size, self.kernel_backend)  # exact on spikes (multiples of 1/4)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


def set_adjust_first(module: nn.Module, on: bool = True) -> nn.Module:
    """Set :attr:`VLIF.adjust_first` on every VLIF in ``module``; returns ``module``."""
    for m in module.modules():
        if isinstance(m, VLIF):
            m.adjust_first = on
    return module


NEURONS: dict[str, type[nn.Module]] = {"vlif": VLIF, "lif": LIF, "nilif": NILIF}


def build_neuron(name: str, channels: int, r: int) -> nn.Module:
    """The neuron ``name`` (a key of :data:`NEURONS`) for a layer of ``channels`` channels;
    ``r`` is VLIF's patch factor. SDEM's second group takes the paper's VLIF, or LIF / NI-LIF
    for ablations."""
    if name not in NEURONS:
        raise ValueError(f"unknown neuron {name!r}; choose one of {', '.join(NEURONS)}")
    return NEURONS[name].build(channels, r)


def set_neuron_impl(module: nn.Module, impl: str, kernel_backend: str = "auto") -> nn.Module:
    """Run every neuron in ``module`` with ``impl`` (``reference`` or ``fast``) and, for ``fast``,
    the kernel backend ``auto`` / ``native`` / ``torch``; returns ``module``."""
    if impl not in NEURON_IMPLS:
        raise ValueError(f"unknown neuron implementation {impl!r}; choose one of {', '.join(NEURON_IMPLS)}")
    kernels.check_backend(kernel_backend)
    for m in module.modules():
        if isinstance(m, Switchable):
            m.impl, m.kernel_backend = impl, kernel_backend
    return module


@contextlib.contextmanager
def neuron_impl(module: nn.Module, impl: str, kernel_backend: str = "auto") -> Iterator[nn.Module]:
    """``with neuron_impl(net, "reference"): ...`` runs the block with that implementation and
    restores every neuron's previous choice afterwards."""
    before = [(m, m.impl, m.kernel_backend) for m in module.modules() if isinstance(m, Switchable)]
    set_neuron_impl(module, impl, kernel_backend)
    try:
        yield module
    finally:
        for m, impl_before, backend_before in before:
            m.impl, m.kernel_backend = impl_before, backend_before
