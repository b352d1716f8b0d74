"""Checks that stop a training run with a message saying why and what to do: the error types,
the non-finite loss guard and the finite-weights check before every save."""
from __future__ import annotations

import logging
import math
from typing import Sequence

import torch
import torch.nn as nn

__all__ = ["RunError", "NonFiniteLossError", "NonFiniteGuard", "check_finite_weights"]

log = logging.getLogger(__name__)


class RunError(RuntimeError):
    """The run cannot start or go on; the message says why and what to do."""


class NonFiniteLossError(RunError):
    """The loss was NaN/inf for ``--max_nonfinite`` steps in a row."""


class NonFiniteGuard:
    """Skip steps whose loss is NaN/inf; stop after ``limit`` of them in a row."""

    def __init__(self, limit: int):
        self.limit, self.in_row = limit, 0

    def check(self, value: float, step: int, names: Sequence[str] = ()) -> bool:
        """True if ``value`` is finite (take the step); False to skip it, with a warning.

        Raises :class:`NonFiniteLossError` at the ``limit``-th non-finite loss in a row.
        """
        if math.isfinite(value):
            self.in_row = 0
            return True
        self.in_row += 1
        batch = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        if self.in_row >= self.limit:
            raise NonFiniteLossError(
                f"the loss was {value} for {self.in_row} steps in a row (steps {step - self.in_row + 1} to {step}; "
                f"last batch: {batch}); training stopped without saving, so the checkpoints in --model_save_dir "
                "are from before. Try a lower --lr, --grad_clip 1.0, or --amp off, and check those images; "
                "--max_nonfinite sets how many such steps in a row are tolerated"
            )
        log.warning("step %d: the loss is %s (batch: %s): optimiser step skipped (%d in a row; the run stops at %d)",
                    step, value, batch, self.in_row, self.limit)
        return False


def check_finite_weights(model: nn.Module, step: int) -> None:
    """:class:`RunError` naming the first parameter or buffer that holds NaN/inf (never saved)."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise RunError(f"at step {step} the weights hold NaN/inf (first: {name}); nothing was saved, the "
                           "checkpoints in --model_save_dir are from before. Resume from them with a lower --lr "
                           "or --grad_clip 1.0")
