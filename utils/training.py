"""Training helpers: seeding, the released learning-rate schedule, RNG state, EMA, firing rates,
mixed precision, the optimiser step with clipping, the non-finite loss guard, and finding the
checkpoint to resume from."""
from __future__ import annotations

import copy
import csv
import logging
import math
import os
import random
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
from spikingjelly.activation_based import neuron

from data.io import atomic_write
from utils.checkpoint import CheckpointError, atomic_save, read_checkpoint

__all__ = [
    "seed_everything", "lr_at_epoch", "build_scheduler", "get_rng_state", "set_rng_state",
    "ModelEMA", "firing_rate", "export_weights", "pick_device", "RunError", "NonFiniteLossError",
    "Amp", "setup_amp", "optimizer_step", "NonFiniteGuard", "check_finite_weights",
    "has_training_state", "find_resume_checkpoint", "remove_stale_temp_files", "open_step_log",
]

log = logging.getLogger(__name__)


class RunError(RuntimeError):
    """The run cannot start or go on; the message says why and what to do."""


class NonFiniteLossError(RunError):
    """The loss was NaN/inf for ``--max_nonfinite`` steps in a row."""


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


# ----------------------------------------------------------------------------- mixed precision
@dataclass
class Amp:
    """Mixed precision: ``autocast()`` for the forward pass, ``scaler`` (float16 only)."""

    device_type: str
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    def autocast(self) -> ContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def setup_amp(mode: str, device: torch.device) -> Amp:
    """``--amp off|bf16|fp16`` on ``device``; :class:`RunError` where it cannot run.

    bfloat16 runs on CUDA (Ampere and newer) and on CPU (slowly: for checks, not for speed);
    float16 needs CUDA and gets a gradient scaler.
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


def optimizer_step(loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler | None = None, grad_clip: float = 0.0) -> float | None:
    """Backward pass and one optimiser step; gradients clipped to total norm ``grad_clip``
    (0 = no clipping, the released recipe). Returns the norm before clipping, or None."""
    optimizer.zero_grad(set_to_none=True)
    norm = None
    if scaler is None:
        loss.backward()
        if grad_clip > 0:
            norm = float(nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
        optimizer.step()
        return norm
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        norm = float(nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    scaler.step(optimizer)  # skipped by the scaler when the float16 gradients overflowed
    scaler.update()
    return norm


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


# ----------------------------------------------------------------------------- resuming
def has_training_state(ckpt: dict[str, Any]) -> bool:
    """Whether a checkpoint can be resumed (written by train.py), not just loaded as weights."""
    return "optimizer" in ckpt and "rng" in ckpt


def find_resume_checkpoint(folder: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint that ``--resume auto`` continues from, read, or None for a new run.

    ``last.pth`` is written at every save (``best.pth`` and ``epoch_<n>.pth`` are copies of
    the same moment), so it is the newest state; if it is missing, unreadable or holds no
    training state, the other ``*.pth`` files are tried, newest first, each skip logged.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    others = sorted((p for p in folder.glob("*.pth") if p.name != "last.pth"), key=lambda p: p.stat().st_mtime,
                    reverse=True)
    for path in [folder / "last.pth", *others]:
        if not path.is_file():
            continue
        try:
            ckpt = read_checkpoint(path)
        except CheckpointError as exc:
            log.warning("--resume auto: skipping %s: %s", path, exc)
            continue
        if not has_training_state(ckpt):
            log.warning("--resume auto: skipping %s: it holds weights but no training state", path)
            continue
        return path, ckpt
    return None


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of checkpoint saves cut short by a crash (``.<name>.pth.*.tmp``)."""
    stale = sorted(Path(folder).glob(".*.pth.*.tmp"))
    for path in stale:
        log.warning("removing %s, left by a save that was cut short (the checkpoint itself is intact)", path)
        path.unlink(missing_ok=True)
    return stale


class _NoLog:
    def writerow(self, row: Sequence[Any]) -> None:
        return None


@contextmanager
def open_step_log(path: str | os.PathLike, start_step: int, enabled: bool = True) -> Iterator[Any]:
    """A ``csv.writer`` appending to ``train_steps.csv`` (a no-op writer where not ``enabled``).

    Rows after ``start_step`` (steps logged after the checkpoint being resumed, by a run that
    then crashed, or by an older run in the same folder) are dropped first, so the file always
    lists each step once.
    """
    if not enabled:
        yield _NoLog()
        return
    path = Path(path)
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        keep = [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= start_step]
        if len(keep) != len(rows) - 1:
            log.info("%s: dropping %d rows logged after step %d", path, len(rows) - 1 - len(keep), start_step)
            with atomic_write(path, "w", newline="", encoding="utf-8") as fh:
                csv.writer(fh).writerows(rows[:1] + keep)
    with open(path, "a", newline="", encoding="utf-8", buffering=1) as fh:
        writer = csv.writer(fh)
        if fh.tell() == 0:
            writer.writerow(["step", "epoch", "loss", "lr"])
        yield writer
