"""Honest energy and spike accounting for the spiking derainers (SPEC section 9).

:class:`EnergyMeter` hooks every layer that multiplies (``Conv1d/2d/3d``, transposed
convolutions, ``Linear``, spikingjelly's multi-step wrappers included, since they subclass
them) and every spiking neuron layer (spikingjelly ``BaseNode``, :class:`models.neurons.NILIF`,
which is also the node inside every VLIF) while a model runs, and accumulates over as many
forward calls as you like::

    with EnergyMeter(model) as meter, torch.no_grad():
        model(img)
    print(utils.energy_report.format_table(meter.summary()))

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
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from spikingjelly.activation_based import neuron

import models.neurons as neurons_module
from models.neurons import NILIF, NILIF_LEVELS, VLIF

log = logging.getLogger(__name__)

E_MAC_PJ = 4.6  # 32-bit float multiply-add, 45 nm (Horowitz, ISSCC 2014)
E_AC_PJ = 0.9  # 32-bit float add, 45 nm
MAC_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)
KINDS = ("binary", "multi-level", "real")
PJ_PER_MJ = 1e9


def classify_input(x: torch.Tensor) -> tuple[str, float]:
    """Kind of a layer input from its values, and the mean events per element.

    ``binary`` (all in {0, 1}: events = value), ``multi-level`` (all multiples of 1/4 in
    [0, 1], not all binary: events = 4 x value) or ``real`` (events 0: it costs MACs).
    """
    with torch.no_grad():
        x = x.detach()
        if x.numel() == 0 or not x.is_floating_point():
            return "real", 0.0
        if bool(((x == 0) | (x == 1)).all()):
            return "binary", float(x.float().mean())
        q = x * NILIF_LEVELS
        if bool(((q == torch.round(q)) & (x >= 0) & (x <= 1)).all()):
            return "multi-level", float(q.float().mean())
    return "real", 0.0


def layer_macs(
    module: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int | None = None
) -> tuple[int, int]:
    """Dense multiply-accumulates of one call and the number of time steps it covered.

    Convolution: ``outputs x (C_in / groups) x prod(kernel)`` (transposed: ``inputs x (C_out /
    groups) x prod(kernel)``); linear: ``outputs x in_features``. Batch, time and sub-pixel
    axes are all in ``outputs``. Steps = the independent maps per image of the model's
    ``batch``: ``T`` for a multi-step layer (``[T, B, ...]``) or a plain layer on a flattened
    ``[T*B, ...]``, the output depth for a Conv3d, 1 for layers after the time mean.
    """
    if isinstance(module, nn.Linear):
        macs = y.numel() * module.in_features
    elif module.transposed:
        macs = x.numel() * (module.out_channels // module.groups) * math.prod(module.kernel_size)
    else:
        macs = y.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    lead = y.shape[0] if y.dim() > 1 else 1
    if getattr(module, "step_mode", "s") == "m" and y.dim() > 2:
        lead *= y.shape[1]  # y_seq [T, B, ...]
    if isinstance(module, nn.Conv3d) and y.dim() == 5:
        lead *= y.shape[2]  # [N, C, D, h, w]: D steps out
    steps = max(1, lead // batch) if batch else 1
    return int(macs), int(steps)


def neuron_levels(module: nn.Module) -> int | None:
    """Events per unit of output for a neuron layer (1 binary, 4 NI-LIF), None for others."""
    if isinstance(module, NILIF):
        return NILIF_LEVELS
    if isinstance(module, neuron.BaseNode):
        return 1
    return None


def count_parameters(model: nn.Module) -> tuple[int, dict[str, int]]:
    """Total parameter count (every ``nn.Parameter``, spikingjelly layers included) and per block."""
    per_block: dict[str, int] = defaultdict(int)
    for name, p in model.named_parameters():
        per_block[name.split(".")[0]] += p.numel()
    return sum(per_block.values()), dict(per_block)


@dataclass
class LayerStats:
    """What one multiplying layer did, summed over calls (divide by images for averages)."""

    name: str
    type: str
    calls: int = 0
    dense_macs: int = 0
    mac_ops: int = 0  # dense MACs on real-valued input
    sops: float = 0.0
    ann_macs: float = 0.0
    kind_macs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    zero_macs: int = 0  # dense MACs whose whole input was zero (a silent upstream)
    convention_macs: int = 0  # SNN-paper convention: ops at E_MAC (first layer)
    convention_acs: float = 0.0  # and ops at E_AC (dense x upstream rate)
    upstream: str | None = None
    rated_calls: int = 0
    upstream_rate_sum: float = 0.0


@dataclass
class NeuronStats:
    """Spikes of one neuron layer, summed over calls."""

    name: str
    type: str
    levels: int
    calls: int = 0
    elements: int = 0
    value_sum: float = 0.0  # sum of outputs (k/4 for NI-LIF)
    nonzero: int = 0


def _block(name: str) -> str:
    return name.split(".")[0] if name else "(root)"


class EnergyMeter:
    """Context manager that records MACs, SOPs and firing rates of every forward call of
    ``model`` while active; hooks are removed on exit. Use :meth:`summary` afterwards (or
    in between: it reads the running totals).

    ``e_mac_pj`` / ``e_ac_pj``: energy per multiply-accumulate and per accumulate, picojoule.
    While active, the neurons run the reference implementation of :mod:`models.neurons` (same
    spikes; slower than the fast kernels, whose VLIF has no separate node to hook).
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
        self._impl: Any = None
        self.vlif_calls: dict[str, int] = defaultdict(int)
        self._last_neuron: tuple[str, float] | None = None
        self._batch: int | None = None

    # hooks -----------------------------------------------------------------------------
    def __enter__(self) -> "EnergyMeter":
        # every neuron layer must be a module call for its hook to fire; the fast VLIF kernel
        # fuses its NI-LIF node away, so meter with the reference neurons (bit-identical spikes)
        switch = getattr(neurons_module, "neuron_impl", None)
        self._impl = switch("reference") if switch else contextlib.nullcontext()
        self._impl.__enter__()
        self._handles.append(self.model.register_forward_pre_hook(self._on_model_start))
        for name, module in self.model.named_modules():
            if isinstance(module, MAC_LAYERS):
                self._handles.append(module.register_forward_hook(self._mac_hook(name)))
            elif neuron_levels(module) is not None:
                self._handles.append(module.register_forward_hook(self._neuron_hook(name)))
            if isinstance(module, VLIF):
                self._handles.append(module.register_forward_hook(self._vlif_hook(name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._impl.__exit__(*exc)

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
            x = args[0]
            stats = self.layers.get(name)
            if stats is None:
                stats = self.layers[name] = LayerStats(name, type(module).__name__)
            macs, steps = layer_macs(module, x, out, self._batch)
            kind, events = classify_input(x)
            stats.calls += 1
            stats.dense_macs += macs
            stats.kind_macs[kind] += macs
            stats.ann_macs += macs / steps
            if kind == "real":
                stats.mac_ops += macs
            else:
                stats.sops += macs * events
                stats.zero_macs += macs if events == 0 else 0
            if self._last_neuron is None:
                stats.convention_macs += macs
            else:
                stats.upstream, rate = self._last_neuron
                stats.rated_calls += 1
                stats.upstream_rate_sum += rate
                stats.convention_acs += macs * rate

        return hook

    def _neuron_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            stats = self.neurons.get(name)
            if stats is None:
                levels = neuron_levels(module)
                kind = "NI-LIF" if levels > 1 else type(module).__name__
                stats = self.neurons[name] = NeuronStats(name, kind, levels)
            with torch.no_grad():
                s = out.detach()
                total, nonzero, n = float(s.sum()), int((s != 0).sum()), s.numel()
            stats.calls += 1
            stats.elements += n
            stats.value_sum += total
            stats.nonzero += nonzero
            self._last_neuron = (name, total / max(n, 1))

        return hook

    # results ---------------------------------------------------------------------------
    def summary(self, num_images: int | None = None) -> dict[str, Any]:
        """Totals, blocks, layers and neurons, averaged per image (JSON-serialisable).

        ``num_images`` defaults to the batch items seen by the model's forward; pass the
        number of images when one image takes several calls (tiles).
        """
        n = num_images or self.samples or 1
        unmeasured = self.unmeasured_neurons()
        if unmeasured:
            log.warning("%d VLIF layers ran without a measurable NI-LIF node (first: %s): their "
                        "spikes are missing from the firing rates", len(unmeasured), unmeasured[0])
        e_mac, e_ac = self.e_mac_pj, self.e_ac_pj
        params, block_params = count_parameters(self.model)
        layers = [self._layer_row(s, n) for s in self.layers.values()]
        neurons = [self._neuron_row(s) for s in self.neurons.values()]
        blocks: dict[str, dict[str, Any]] = {}
        for row in layers + neurons:
            b = blocks.setdefault(row["block"], _empty_block(row["block"], block_params.get(row["block"], 0)))
            if "dense_macs" in row:
                for key in ("dense_macs", "mac_ops", "sops", "ann_macs", "energy_mj", "snn_convention_energy_mj"):
                    b[key] += row[key]
                b["mac_layers"] += 1
            else:
                b["neuron_layers"] += 1
                b["_spikes"] += row["firing_rate"] * row["elements"]
                b["_elements"] += row["elements"]
        order = {name: i for i, (name, _) in enumerate(self.model.named_children())}
        blocks = dict(sorted(blocks.items(), key=lambda item: order.get(item[0], len(order))))
        for b in blocks.values():
            b["firing_rate"] = b.pop("_spikes") / b["_elements"] if b["_elements"] else None
            b.pop("_elements")
        dense = sum(r["dense_macs"] for r in layers)
        mac_ops = sum(r["mac_ops"] for r in layers)
        sops = sum(r["sops"] for r in layers)
        energy = (e_mac * mac_ops + e_ac * sops) / PJ_PER_MJ
        conv_mac = sum(s.convention_macs for s in self.layers.values()) / n
        conv_ac = sum(s.convention_acs for s in self.layers.values()) / n
        conv_energy = (e_mac * conv_mac + e_ac * conv_ac) / PJ_PER_MJ
        ann_macs = sum(r["ann_macs"] for r in layers)
        kind_macs = {k: sum(s.kind_macs[k] for s in self.layers.values()) / n for k in KINDS}
        kind_macs["all-zero"] = sum(s.zero_macs for s in self.layers.values()) / n
        spikes = sum(s.value_sum for s in self.neurons.values())
        elements = sum(s.elements for s in self.neurons.values())
        return {
            "constants": {"e_mac_pj": e_mac, "e_ac_pj": e_ac},
            "images": n,
            "forward_calls": self.forward_calls,
            "input_sizes": [list(s) for s in self.input_sizes],
            "params": params,
            "dense_macs": dense,
            "mac_ops": mac_ops,
            "sops": sops,
            "input_kind_fraction": {k: (v / dense if dense else 0.0) for k, v in kind_macs.items()},
            "energy_mj": energy,
            "energy_mac_mj": e_mac * mac_ops / PJ_PER_MJ,
            "energy_ac_mj": e_ac * sops / PJ_PER_MJ,
            "ann_macs": ann_macs,
            "ann_energy_mj": e_mac * ann_macs / PJ_PER_MJ,
            "mean_firing_rate": spikes / elements if elements else None,
            "snn_convention": {
                "energy_mj": conv_energy,
                "first_layer_macs": conv_mac,
                "rate_weighted_acs": conv_ac,
                "rule": "first layer at E_MAC; every other layer: dense MACs x firing rate of the "
                "last neuron layer that ran before it x E_AC, whatever its actual input",
                "measured_over_convention": energy / conv_energy if conv_energy else None,
            },
            "unmeasured_neurons": unmeasured,
            "blocks": list(blocks.values()),
            "layers": layers,
            "neurons": neurons,
        }

    def _layer_row(self, s: LayerStats, n: int) -> dict[str, Any]:
        kinds = [k for k in KINDS if s.kind_macs[k]]
        spike_macs = s.dense_macs - s.mac_ops
        return {
            "name": s.name,
            "block": _block(s.name),
            "type": s.type,
            "calls": s.calls / n,
            "input_kind": kinds[0] if len(kinds) == 1 else ("mixed" if kinds else "none"),
            "dense_macs": s.dense_macs / n,
            "mac_ops": s.mac_ops / n,
            "sops": s.sops / n,
            "events_per_input": s.sops / spike_macs if spike_macs else 0.0,
            "ann_macs": s.ann_macs / n,
            "energy_mj": (self.e_mac_pj * s.mac_ops + self.e_ac_pj * s.sops) / n / PJ_PER_MJ,
            "upstream_neuron": s.upstream,
            "upstream_rate": s.upstream_rate_sum / s.rated_calls if s.rated_calls else None,
            "snn_convention_energy_mj": (self.e_mac_pj * s.convention_macs + self.e_ac_pj * s.convention_acs)
            / n / PJ_PER_MJ,
        }

    @staticmethod
    def _neuron_row(s: NeuronStats) -> dict[str, Any]:
        rate = s.value_sum / s.elements if s.elements else 0.0
        return {
            "name": s.name,
            "block": _block(s.name),
            "type": s.type,
            "firing_rate": rate,
            "mean_events": rate * s.levels,
            "nonzero_fraction": s.nonzero / s.elements if s.elements else 0.0,
            "elements": s.elements,
        }


def _empty_block(name: str, params: int) -> dict[str, Any]:
    return dict(
        name=name, params=params, dense_macs=0.0, mac_ops=0.0, sops=0.0, ann_macs=0.0, energy_mj=0.0,
        snn_convention_energy_mj=0.0, mac_layers=0, neuron_layers=0, _spikes=0.0, _elements=0,
    )


def measure(
    model: nn.Module, x: torch.Tensor, e_mac_pj: float = E_MAC_PJ, e_ac_pj: float = E_AC_PJ
) -> dict[str, Any]:
    """Run ``model(x)`` once without gradients under an :class:`EnergyMeter`; return its summary."""
    with EnergyMeter(model, e_mac_pj, e_ac_pj) as meter, torch.no_grad():
        model(x)
    return meter.summary()
