"""Firing rate of a spiking network: the mean output of its neurons while a block of code runs."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn as nn
from spikingjelly.activation_based import neuron

__all__ = ["firing_rate"]


@contextmanager
def firing_rate(model: nn.Module) -> Iterator[dict[str, float]]:
    """Measure the mean output of every spikingjelly neuron while the block runs.

    Yields a dict that holds ``rate`` (mean spike value over all neuron outputs, weighted by
    element count) and ``neurons`` (how many neuron modules fired) once the block exits.
    """
    totals = {"sum": 0.0, "count": 0, "modules": set()}

    def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        totals["sum"] += float(output.detach().float().sum())
        totals["count"] += output.numel()
        totals["modules"].add(id(module))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, neuron.BaseNode)]
    result: dict[str, float] = {}
    try:
        yield result
    finally:
        for h in handles:
            h.remove()
        result["rate"] = totals["sum"] / max(totals["count"], 1)
        result["neurons"] = len(totals["modules"])
