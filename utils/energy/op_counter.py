"""Cross-check of :mod:`utils.energy.meter` against spikingjelly 2.0's ``op_counter`` on the same forward.

``op_counter`` counts at the ATen level (a ``TorchDispatchMode``): every convolution and matrix
product, whichever module or function issued it. Run together with an
:class:`~utils.energy.meter.EnergyMeter`, its ``MACCounter`` (batch norm ignored, as in SPEC 9) and
``SynOpCounter`` see exactly the tensors our hooks see, so the two can be compared layer by
layer. Where they count the same thing they agree to the operation; where they differ, by
design (docs/energy.md, "spikingjelly's op_counter"):

- multi-level NI-LIF spikes: op_counter has no such kind, it prices them as dense MACs; we
  count k events per k/4 (SPEC 9);
- binary spike inputs: op_counter counts the exact weight uses, skipping taps on zero
  padding; SPEC 9 defines SOPs as dense MACs x mean events per input, which counts them;
- anything op_counter counts outside the hooked layers (a functional convolution or
  ``matmul``) shows up as ``outside_layers``: work our module hooks would miss.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter
from torch.nn.modules.batchnorm import _BatchNorm

from utils.energy.meter import E_AC_PJ, E_MAC_PJ, EnergyMeter


def _scope_total(counter: Any, scope: str) -> int:
    return int(sum(counter.get_counts().get(scope, {}).values()))


def measure_with_op_counter(
    model: nn.Module, x: torch.Tensor, e_mac_pj: float = E_MAC_PJ, e_ac_pj: float = E_AC_PJ
) -> dict[str, Any]:
    """Like :func:`utils.energy.meter.measure`, with op_counter's counts of the same forward call added
    under ``"op_counter"``: totals, per layer beside ours, and what it counted outside them.

    All counts are per image of the batch ``x``, as in the rest of the summary.
    """
    mac = MACCounter(extra_ignore_modules=[_BatchNorm])  # SPEC 9: batch norm folds into the conv
    synop = SynOpCounter()
    with EnergyMeter(model, e_mac_pj, e_ac_pj) as meter, torch.no_grad():
        with DispatchCounterMode([mac, synop]):
            model(x)
    summary = meter.summary()
    n = summary["images"]
    root = type(model).__name__  # op_counter's scope of the model; layers are "<root>.<name>"
    rows = []
    for r in summary["layers"]:
        scope = f"{root}.{r['name']}" if r["name"] else root
        rows.append({
            "name": r["name"], "input_kind": r["input_kind"], "mac_ops": r["mac_ops"], "sops": r["sops"],
            "op_counter_mac": _scope_total(mac, scope) / n, "op_counter_synop": _scope_total(synop, scope) / n,
        })
    totals = {"mac": mac.get_total() / n, "synop": synop.get_total() / n}
    summary["op_counter"] = {
        **totals,
        "outside_layers": {
            "mac": totals["mac"] - sum(r["op_counter_mac"] for r in rows),
            "synop": totals["synop"] - sum(r["op_counter_synop"] for r in rows),
        },
        "layers": rows,
    }
    return summary
