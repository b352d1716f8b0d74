"""Training helpers: seeding, the released learning-rate schedule, RNG state, EMA, firing rates."""
from __future__ import annotations

import copy
import math
import os
import random
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn
from spikingjelly.activation_based import neuron

from utils.checkpoint import atomic_save, read_checkpoint

__all__ = [
    "seed_everything", "lr_at_epoch", "build_scheduler", "get_rng_state", "set_rng_state",
    "ModelEMA", "firing_rate", "export_weights", "pick_device",
]


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, CPU otherwise; any other value is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_at_epoch(epoch: int, lr: float, min_lr: float, warmup_epochs: int, num_epochs: int) -> float:
    """Learning rate of 1-based ``epoch`` in the released schedule (SPEC 6).

    Linear warm-up from 0: epoch ``e <= warmup_epochs`` runs at ``lr * (e - 1) / warmup_epochs``;
    then cosine from ``lr`` (epoch ``warmup_epochs + 1``) towards ``min_lr`` with period
    ``num_epochs - warmup_epochs`` (GradualWarmupScheduler + CosineAnnealingLR of the release).
    """
    if epoch <= warmup_epochs:
        return lr * (epoch - 1) / warmup_epochs
    t, period = epoch - 1 - warmup_epochs, max(num_epochs - warmup_epochs, 1)
    return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * t / period)) / 2


def build_scheduler(optimizer: torch.optim.Optimizer, lr: float, min_lr: float, warmup_epochs: int,
                    num_epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-epoch scheduler following :func:`lr_at_epoch`; call ``step()`` after every epoch."""
    def factor(last_epoch: int) -> float:
        return lr_at_epoch(last_epoch + 1, lr, min_lr, warmup_epochs, num_epochs) / lr

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def get_rng_state() -> dict[str, Any]:
    """Global RNG states as tensors and lists (loadable with ``torch.load(weights_only=True)``)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),  # uint8 tensor
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class ModelEMA:
    """Exponential moving average of a model's weights (opt-in; not in the released recipe).

    ``ema = decay * ema + (1 - decay) * weights`` after every optimiser step; buffers are copied.
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


def export_weights(src: str | os.PathLike, dst: str | os.PathLike, **meta: Any) -> None:
    """Write a small inference checkpoint (network, constructor args, weights, ``meta``) from ``src``.

    Drops the optimiser, scheduler and RNG state; keeps ``epoch``, ``global_step``, ``best``.
    """
    ckpt = read_checkpoint(src)
    keep = {k: ckpt[k] for k in ("format", "arch", "config", "state_dict", "epoch", "global_step", "best")
            if k in ckpt}
    atomic_save({**keep, **meta}, dst)
