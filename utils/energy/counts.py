"""What one call of a layer costs (SPEC section 9): the counting rules behind :mod:`utils.energy.meter`.

The per-call rules (input kind, dense MACs, events) and the running totals per layer and per
neuron layer. Binary inputs are recognised with spikingjelly's ``op_counter.is_binary_tensor``
(the test its MAC and synaptic-operation counters use); the rest is ours because op_counter
has no equivalent: multi-level NI-LIF spikes (k/4 counted as k events), dense MACs of
spike-driven layers and the time steps they cover. docs/energy.md compares the two counters.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from spikingjelly.activation_based import neuron
from spikingjelly.activation_based.op_counter import is_binary_tensor

from models.neurons import NILIF, NILIF_LEVELS

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
        if is_binary_tensor(x):
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

    def record(self, macs: int, steps: int, kind: str, events: float, upstream: tuple[str, float] | None) -> None:
        """Add one call: ``macs`` dense MACs over ``steps`` time steps on an input of ``kind``
        with ``events`` mean events per element; ``upstream`` = (name, firing rate) of the last
        neuron layer that ran before it in this forward call, None for the first layer."""
        self.calls += 1
        self.dense_macs += macs
        self.kind_macs[kind] += macs
        self.ann_macs += macs / steps
        if kind == "real":
            self.mac_ops += macs
        else:
            self.sops += macs * events
            self.zero_macs += macs if events == 0 else 0
        if upstream is None:
            self.convention_macs += macs
        else:
            self.upstream, rate = upstream
            self.rated_calls += 1
            self.upstream_rate_sum += rate
            self.convention_acs += macs * rate


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

    def record(self, out: torch.Tensor) -> float:
        """Add one call's output spikes; returns their firing rate (mean output)."""
        with torch.no_grad():
            s = out.detach()
            total, nonzero, n = float(s.sum()), int((s != 0).sum()), s.numel()
        self.calls += 1
        self.elements += n
        self.value_sum += total
        self.nonzero += nonzero
        return total / max(n, 1)
