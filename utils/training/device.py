"""Where a script computes: the device (``--device``) and mixed precision on it (``--amp``)."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import ContextManager

import torch

from utils.training.guards import RunError

__all__ = ["pick_device", "Amp", "setup_amp"]


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, CPU otherwise; any other value is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Amp:
    """Mixed precision: ``autocast()`` for the forward pass, and the gradient ``scaler``.

    The scaler is enabled for float16 only; otherwise it is PyTorch's disabled scaler, which
    passes the loss and the optimiser step through unchanged, so one training step serves all.
    """

    device_type: str
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    def __post_init__(self) -> None:
        if self.scaler is None:
            self.scaler = torch.amp.GradScaler(self.device_type, enabled=False)

    def autocast(self) -> ContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def setup_amp(mode: str, device: torch.device) -> Amp:
    """``--amp off|bf16|fp16`` on ``device``; :class:`RunError` where it cannot run.

    bfloat16 runs on CUDA (Ampere and newer) and on CPU (slowly: for checks, not for speed);
    float16 needs CUDA and gets an enabled gradient scaler.
    """
    if mode == "off":
        return Amp(device.type)
    if mode == "fp16":
        if device.type != "cuda":
            raise RunError(f"--amp fp16 needs a CUDA device, the run is on {device}: "
                           "use --amp bf16 or --amp off")
        return Amp(device.type, torch.float16, torch.amp.GradScaler("cuda"))
    if mode == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise RunError("--amp bf16: this GPU has no bfloat16 support; use --amp fp16 or --amp off")
        return Amp(device.type, torch.bfloat16)
    raise RunError(f"unknown --amp {mode!r}; choose off, bf16 or fp16")
