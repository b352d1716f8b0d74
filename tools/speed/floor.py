"""The convolution floor of a case: the same convolutions, on the same inputs, run alone.

Most of a VLIFNet step is convolutions (oneDNN on a CPU, cuDNN on a GPU); what the neurons,
the element-wise mixing and the attention add comes on top. Replaying exactly the
convolutions a case ran, with nothing between them, gives the time that case cannot beat
without faster convolutions: a reader sees how far each case is from the machine's limit.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def record_convs(model: nn.Module, run: Callable[[], object]) -> list[tuple[nn.Module, torch.Tensor]]:
    """Every convolution call of ``run()`` as ``(module, copy of its input)``, in call order."""
    calls: list[tuple[nn.Module, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda mod, inputs, _out: calls.append((mod, inputs[0].detach().clone())))
               for m in model.modules() if isinstance(m, CONVS)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return calls


def replay_convs(calls: list[tuple[nn.Module, torch.Tensor]], backward: bool, repeat: int = 1,
                 autocast: torch.dtype | None = None) -> Callable[[], None]:
    """A callable running the recorded convolutions ``repeat`` times: forward only (inference
    mode), or forward and backward (input and weight gradients, as a training step computes)."""
    device = calls[0][1].device.type if calls else "cpu"

    def run() -> None:
        with torch.autocast(device, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            for _ in range(repeat):
                for module, x in calls:
                    if backward:
                        y = module(x.requires_grad_(True))
                        y.backward(torch.ones_like(y))
                    else:
                        with torch.inference_mode():
                            module(x)
        if backward:
            for module, x in calls:
                module.zero_grad(set_to_none=True)
                x.grad = None
    return run
