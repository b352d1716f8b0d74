"""Where a script computes: the device (``--device``) and mixed precision on it (``--amp``)."""
from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from typing import ContextManager

import torch

from utils.training.guards import RunError

__all__ = ["pick_device", "Amp", "setup_amp", "bf16_is_emulated", "warn_if_bf16_is_emulated"]
log = logging.getLogger(__name__)


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, CPU otherwise; any other value is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def bf16_is_emulated(device: torch.device) -> bool:
    """Whether bfloat16 convolutions on ``device`` run without bfloat16 instructions: a CPU
    with neither AVX512-BF16 nor AMX, where oneDNN converts every operand in software. On
    such a CPU (an AMD EPYC with AVX2 only, 2026-12-07) a 3x3 convolution 48 -> 48 on
    ``[48, 48, 64, 64]`` took 7.2 s under bf16 autocast against 60 ms in float32."""
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    return not (cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())


def warn_if_bf16_is_emulated(device: torch.device) -> None:
    """Say so, loudly, where ``--amp bf16`` will run orders of magnitude slower than float32."""
    if bf16_is_emulated(device):
        log.warning("--amp bf16: this CPU has no bfloat16 instructions (neither AVX512-BF16 nor AMX), so its "
                    "bfloat16 convolutions are emulated and run about 100x slower than float32 (docs/speed.md); "
                    "the results are the usual approximate ones, fit for checks only: use --amp off for speed")


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

    bfloat16 runs on CUDA (Ampere and newer) and on CPU (fast where the CPU has bfloat16
    instructions; elsewhere emulated, about 100x slower, and said so in a warning); float16
    needs CUDA and gets an enabled gradient scaler.
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
        warn_if_bf16_is_emulated(device)
        return Amp(device.type, torch.bfloat16)
    raise RunError(f"unknown --amp {mode!r}; choose off, bf16 or fp16")
