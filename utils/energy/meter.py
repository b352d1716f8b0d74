"""Honest energy and spike accounting for the spiking derainers (SPEC section 9).

:class:`EnergyMeter` hooks every layer that multiplies (``Conv1d/2d/3d``, transposed
convolutions, ``Linear``, spikingjelly's multi-step wrappers included, since they subclass
them) and every spiking neuron layer (spikingjelly ``BaseNode``, :class:`models.neurons.NILIF`,
which is also the node inside every VLIF) while a model runs, and accumulates over as many
forward calls as you like::

    with EnergyMeter(model) as meter, torch.no_grad():
        model(img)
    print(utils.energy.report.format_table(meter.summary()))

Per multiplying layer and call it records the dense multiply-accumulates for the real input
size and T, and decides from the values it sees what the input was:

- ``binary``: every value in {0, 1}; one event per 1;
- ``multi-level``: every value a multiple of 1/4 in [0, 1], not all binary; k events per k/4;
- ``real``: anything else.

Spike inputs cost synaptic operations, ``SOPs = dense MACs x mean events per input element``
(this spreads zero padding like the interior, so border outputs are slightly over-counted:
with 3x3 / padding 1 about ``2/(3H) + 2/(3W)`` of the taps fall on padding, 0.5% at 256 x 256,
2% at 64 x 64); real inputs cost MACs. An all-zero input is binary without events (and
reported as ``all-zero``: a silent upstream).
``energy = E_MAC x MACs + E_AC x SOPs`` (defaults 4.6 pJ and 0.9 pJ, 45 nm, Horowitz ISSCC 2014).

Also reported, labelled as such:

- the ANN-equivalent energy: every dense MAC at E_MAC for one time step (a layer's dense MACs
  divided by the time steps it processed: T for per-step layers, whether spikingjelly
  multi-step or plain on a flattened ``[T*B, ...]``, the output depth of a Conv3d, 1 after the
  time mean);
- the convention of most SNN papers: the first layer (no spiking neuron ran before it in this
  forward call) at E_MAC x dense MACs, every other layer at E_AC x dense MACs x the firing
  rate (mean output, k/4 for NI-LIF) of the nearest upstream neuron layer, taken as the last
  neuron layer that ran before it, whatever the layer's actual input.

Not counted: bias additions, batch norm (foldable into the preceding convolution at
inference), pooling, interpolation, element-wise mixing and gating, the neuron updates.
Hooks see eager execution only (not a ``torch.compile``'d graph).

This module holds the hooks; the per-call counting rules are :mod:`utils.energy.counts`, the
per-image summary :mod:`utils.energy.summary`, and the cross-check against spikingjelly's
``op_counter`` :mod:`utils.energy.op_counter`.
"""
from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from typing import Any

import torch
import torch.nn as nn

from models.neurons import VLIF, neuron_impl
from utils.energy.counts import (
    E_AC_PJ, E_MAC_PJ, KINDS, MAC_LAYERS, LayerStats, NeuronStats, classify_input, count_parameters, layer_macs,
    neuron_levels,
)
from utils.energy.summary import build_summary

__all__ = [
    "E_AC_PJ", "E_MAC_PJ", "KINDS", "EnergyMeter", "LayerStats", "NeuronStats", "classify_input",
    "count_parameters", "layer_macs", "measure", "neuron_levels",
]

log = logging.getLogger(__name__)


class EnergyMeter:
    """Context manager that records MACs, SOPs and firing rates of every forward call of
    ``model`` while active; hooks are removed on exit. Use :meth:`summary` afterwards (or
    in between: it reads the running totals).

    ``e_mac_pj`` / ``e_ac_pj``: energy per multiply-accumulate and per accumulate, picojoule.
    While active, VLIF layers run the reference implementation of :mod:`models.neurons` (same
    spikes; the fast VLIF kernel fuses its NI-LIF node away, so no hook would see it); every
    other neuron keeps its implementation, its kernel running inside the hooked module call.
    """

    def __init__(self, model: nn.Module, e_mac_pj: float = E_MAC_PJ, e_ac_pj: float = E_AC_PJ):
        self.model = model
        self.e_mac_pj, self.e_ac_pj = float(e_mac_pj), float(e_ac_pj)
        self.layers: dict[str, LayerStats] = {}
        self.neurons: dict[str, NeuronStats] = {}
        self.forward_calls = 0
        self.samples = 0
        self.input_sizes: list[tuple[int, ...]] = []
        self._handles: list[Any] = []
        self._impl = contextlib.ExitStack()
        self.vlif_calls: dict[str, int] = defaultdict(int)
        self._last_neuron: tuple[str, float] | None = None
        self._batch: int | None = None

    # hooks -----------------------------------------------------------------------------
    def __enter__(self) -> "EnergyMeter":
        self._impl = contextlib.ExitStack()
        self._handles.append(self.model.register_forward_pre_hook(self._on_model_start))
        for name, module in self.model.named_modules():
            if isinstance(module, MAC_LAYERS):
                self._handles.append(module.register_forward_hook(self._mac_hook(name)))
            elif neuron_levels(module) is not None:
                self._handles.append(module.register_forward_hook(self._neuron_hook(name)))
            if isinstance(module, VLIF):
                self._impl.enter_context(neuron_impl(module, "reference"))  # its node must be a module call
                self._handles.append(module.register_forward_hook(self._vlif_hook(name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._impl.close()

    def _vlif_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            self.vlif_calls[name] += 1

        return hook

    def unmeasured_neurons(self) -> list[str]:
        """VLIF layers that ran without any of their neuron children reporting spikes."""
        return [v for v in self.vlif_calls if not any(n.startswith(v + ".") for n in self.neurons)]

    def _on_model_start(self, module: nn.Module, args: tuple) -> None:
        self.forward_calls += 1
        self._last_neuron = None  # the first layer of every call has no upstream neuron
        self._batch = None
        if args and isinstance(args[0], torch.Tensor):
            self._batch = args[0].shape[0]
            self.samples += self._batch
            size = tuple(args[0].shape)
            if size not in self.input_sizes:
                self.input_sizes.append(size)

    def _mac_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                return
            stats = self.layers.get(name)
            if stats is None:
                stats = self.layers[name] = LayerStats(name, type(module).__name__)
            macs, steps = layer_macs(module, args[0], out, self._batch)
            stats.record(macs, steps, *classify_input(args[0]), self._last_neuron)

        return hook

    def _neuron_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            stats = self.neurons.get(name)
            if stats is None:
                levels = neuron_levels(module)
                kind = "NI-LIF" if levels > 1 else type(module).__name__
                stats = self.neurons[name] = NeuronStats(name, kind, levels)
            self._last_neuron = (name, stats.record(out))

        return hook

    # results ---------------------------------------------------------------------------
    def summary(self, num_images: int | None = None) -> dict[str, Any]:
        """Totals, blocks, layers and neurons, averaged per image (JSON-serialisable; keys in
        docs/energy.md).

        ``num_images`` defaults to the batch items seen by the model's forward; pass the
        number of images when one image takes several calls (tiles).
        """
        unmeasured = self.unmeasured_neurons()
        if unmeasured:
            log.warning("%d VLIF layers ran without a measurable NI-LIF node (first: %s): their "
                        "spikes are missing from the firing rates", len(unmeasured), unmeasured[0])
        return build_summary(
            self.model, self.layers, self.neurons, images=num_images or self.samples or 1,
            forward_calls=self.forward_calls, input_sizes=self.input_sizes, unmeasured=unmeasured,
            e_mac_pj=self.e_mac_pj, e_ac_pj=self.e_ac_pj,
        )


def measure(
    model: nn.Module, x: torch.Tensor, e_mac_pj: float = E_MAC_PJ, e_ac_pj: float = E_AC_PJ
) -> dict[str, Any]:
    """Run ``model(x)`` once without gradients under an :class:`EnergyMeter`; return its summary."""
    with EnergyMeter(model, e_mac_pj, e_ac_pj) as meter, torch.no_grad():
        model(x)
    return meter.summary()
