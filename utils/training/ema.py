"""Exponential moving average of the weights (``--ema_decay``; opt-in, not in the released recipe)."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

__all__ = ["ModelEMA"]


class ModelEMA:
    """``ema = decay * ema + (1 - decay) * weights`` after every optimiser step; buffers are copied.

    ``model`` is the averaged copy (eval mode, no gradients): it is validated and saved as the weights.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._params = {name for name, _ in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_state = self.model.state_dict()
        for key, value in model.state_dict().items():
            if key in self._params:
                ema_state[key].lerp_(value, 1.0 - self.decay)
            else:
                ema_state[key].copy_(value)
