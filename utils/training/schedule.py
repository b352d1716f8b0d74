"""The released learning-rate schedule (SPEC 6): linear warm-up, then cosine, set once per epoch."""
from __future__ import annotations

import math

import torch

__all__ = ["lr_at_epoch", "build_scheduler"]


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
