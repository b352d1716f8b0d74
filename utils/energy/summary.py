"""From the running totals of :class:`utils.energy.meter.EnergyMeter` to the per-image summary:
energy by each layer's actual input, the ANN-equivalent and the SNN-paper convention (SPEC
section 9), per layer, per block and in total. Plain, JSON-ready dicts; tables and figures of
them are :mod:`utils.energy.report`.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch.nn as nn

from utils.energy.counts import KINDS, PJ_PER_MJ, LayerStats, NeuronStats, count_parameters

CONVENTION_RULE = ("first layer at E_MAC; every other layer: dense MACs x firing rate of the last neuron "
                   "layer that ran before it x E_AC, whatever its actual input")
_BLOCK_SUMS = ("dense_macs", "mac_ops", "sops", "ann_macs", "energy_mj", "snn_convention_energy_mj")


def _block(name: str) -> str:
    return name.split(".")[0] if name else "(root)"


def _mj(e_mac_pj: float, macs: float, e_ac_pj: float, acs: float, n: int = 1) -> float:
    return (e_mac_pj * macs + e_ac_pj * acs) / n / PJ_PER_MJ


def layer_row(s: LayerStats, n: int, e_mac_pj: float, e_ac_pj: float) -> dict[str, Any]:
    """One multiplying layer, per image over ``n`` images."""
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
        "energy_mj": _mj(e_mac_pj, s.mac_ops, e_ac_pj, s.sops, n),
        "upstream_neuron": s.upstream,
        "upstream_rate": s.upstream_rate_sum / s.rated_calls if s.rated_calls else None,
        "snn_convention_energy_mj": _mj(e_mac_pj, s.convention_macs, e_ac_pj, s.convention_acs, n),
    }


def neuron_row(s: NeuronStats) -> dict[str, Any]:
    """One neuron layer: firing rate (mean output, k/4 for NI-LIF), mean events, non-zero share."""
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


def block_rows(model: nn.Module, layers: Iterable[dict], neurons: Iterable[dict]) -> list[dict[str, Any]]:
    """Layer and neuron rows summed by top-level block, in the model's order of children."""
    _, block_params = count_parameters(model)
    blocks: dict[str, dict[str, Any]] = {}
    for row in [*layers, *neurons]:
        b = blocks.setdefault(row["block"], _empty_block(row["block"], block_params.get(row["block"], 0)))
        if "dense_macs" in row:
            for key in _BLOCK_SUMS:
                b[key] += row[key]
            b["mac_layers"] += 1
        else:
            b["neuron_layers"] += 1
            b["_spikes"] += row["firing_rate"] * row["elements"]
            b["_elements"] += row["elements"]
    order = {name: i for i, (name, _) in enumerate(model.named_children())}
    rows = [b for _, b in sorted(blocks.items(), key=lambda item: order.get(item[0], len(order)))]
    for b in rows:
        b["firing_rate"] = b.pop("_spikes") / b["_elements"] if b["_elements"] else None
        b.pop("_elements")
    return rows


def _snn_convention(stats: list[LayerStats], n: int, e_mac_pj: float, e_ac_pj: float, energy: float) -> dict:
    macs = sum(s.convention_macs for s in stats) / n
    acs = sum(s.convention_acs for s in stats) / n
    conv_energy = _mj(e_mac_pj, macs, e_ac_pj, acs)
    return {
        "energy_mj": conv_energy,
        "first_layer_macs": macs,
        "rate_weighted_acs": acs,
        "rule": CONVENTION_RULE,
        "measured_over_convention": energy / conv_energy if conv_energy else None,
    }


def build_summary(
    model: nn.Module, layers: dict[str, LayerStats], neurons: dict[str, NeuronStats], *, images: int,
    forward_calls: int, input_sizes: list[tuple[int, ...]], unmeasured: list[str], e_mac_pj: float,
    e_ac_pj: float,
) -> dict[str, Any]:
    """Totals, blocks, layers and neurons per image (``images`` of them), JSON-serialisable."""
    n = images
    stats = list(layers.values())
    layer_rows = [layer_row(s, n, e_mac_pj, e_ac_pj) for s in stats]
    neuron_rows = [neuron_row(s) for s in neurons.values()]
    dense = sum(r["dense_macs"] for r in layer_rows)
    mac_ops = sum(r["mac_ops"] for r in layer_rows)
    sops = sum(r["sops"] for r in layer_rows)
    energy = _mj(e_mac_pj, mac_ops, e_ac_pj, sops)
    ann_macs = sum(r["ann_macs"] for r in layer_rows)
    kind_macs = {k: sum(s.kind_macs[k] for s in stats) / n for k in KINDS}
    kind_macs["all-zero"] = sum(s.zero_macs for s in stats) / n
    spikes = sum(s.value_sum for s in neurons.values())
    elements = sum(s.elements for s in neurons.values())
    return {
        "constants": {"e_mac_pj": e_mac_pj, "e_ac_pj": e_ac_pj},
        "images": n,
        "forward_calls": forward_calls,
        "input_sizes": [list(s) for s in input_sizes],
        "params": count_parameters(model)[0],
        "dense_macs": dense,
        "mac_ops": mac_ops,
        "sops": sops,
        "input_kind_fraction": {k: (v / dense if dense else 0.0) for k, v in kind_macs.items()},
        "energy_mj": energy,
        "energy_mac_mj": e_mac_pj * mac_ops / PJ_PER_MJ,
        "energy_ac_mj": e_ac_pj * sops / PJ_PER_MJ,
        "ann_macs": ann_macs,
        "ann_energy_mj": e_mac_pj * ann_macs / PJ_PER_MJ,
        "mean_firing_rate": spikes / elements if elements else None,
        "snn_convention": _snn_convention(stats, n, e_mac_pj, e_ac_pj, energy),
        "unmeasured_neurons": unmeasured,
        "blocks": block_rows(model, layer_rows, neuron_rows),
        "layers": layer_rows,
        "neurons": neuron_rows,
    }
