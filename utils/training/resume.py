"""Training checkpoints: what ``train.py`` saves, how a run comes back from it, and which file
``--resume auto`` continues.

- ``last.pth`` (every save) and ``epoch_<n>.pth`` hold the weights and the whole training state
  (:func:`training_checkpoint`): they can be resumed.
- ``best.pth`` and exported files hold what inference and fine-tuning need (:func:`weights_only`):
  network name and constructor arguments, weights, epoch, step, best metric and the run's
  arguments; no optimiser, schedule, gradient-scaler or RNG state.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from utils.checkpoint import CheckpointError, atomic_save, load_state_dict_strict, make_checkpoint, read_checkpoint
from utils.training.ema import ModelEMA
from utils.training.rng import get_rng_state, set_rng_state

__all__ = [
    "TrainState", "has_training_state", "read_training_checkpoint", "training_checkpoint", "weights_only",
    "export_weights", "load_training_state", "find_resume_checkpoint", "remove_stale_temp_files",
]

log = logging.getLogger(__name__)

# What a weights-only checkpoint keeps of a training checkpoint.
WEIGHTS_KEYS = ("format", "arch", "config", "state_dict", "epoch", "global_step", "best")


@dataclass
class TrainState:
    """Where the run stands; saved in every checkpoint."""

    epoch: int = 1  # the epoch being run (1-based)
    batch_in_epoch: int = 0  # batches of ``epoch`` already done (per process)
    global_step: int = 0
    best: dict[str, Any] = field(default_factory=lambda: {"metric": None, "value": None, "epoch": None})


def has_training_state(ckpt: dict[str, Any]) -> bool:
    """Whether a checkpoint can be resumed (written by train.py), not just loaded as weights."""
    return "optimizer" in ckpt and "rng" in ckpt


def read_training_checkpoint(path: Path) -> dict:
    """A checkpoint written by train.py (weights and training state); :class:`CheckpointError` otherwise."""
    ckpt = read_checkpoint(path)
    if not has_training_state(ckpt):
        raise CheckpointError(f"{path} holds weights but no training state (best.pth and exported weights hold "
                              "only weights); use --weights to fine-tune from it, or resume from last.pth")
    return ckpt


def training_checkpoint(model: nn.Module, ema: ModelEMA | None, optimizer: torch.optim.Optimizer,
                        scheduler: Any, scaler: torch.amp.GradScaler, state: TrainState, args: dict[str, Any],
                        epoch_done: bool, world_size: int) -> dict[str, Any]:
    """Everything a resumed run needs. With EMA the averaged weights are ``state_dict`` (what
    inference uses) and the raw training weights ``raw_state_dict``."""
    extra = dict(args=args, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=get_rng_state(),
                 epoch_done=epoch_done, world_size=world_size, **asdict(state))
    if scaler.is_enabled():
        extra["scaler"] = scaler.state_dict()
    if ema is not None:
        return make_checkpoint(ema.model, raw_state_dict=model.state_dict(), **extra)
    return make_checkpoint(model, **extra)


def weights_only(ckpt: dict[str, Any], with_args: bool = True) -> dict[str, Any]:
    """The part of a training checkpoint that inference and fine-tuning read (see the module
    docstring); ``with_args`` keeps the run's arguments (``best.pth`` does)."""
    keys = WEIGHTS_KEYS + (("args",) if with_args else ())
    return {k: ckpt[k] for k in keys if k in ckpt}


def export_weights(src: str | os.PathLike, dst: str | os.PathLike, **meta: Any) -> None:
    """Write a small inference checkpoint from ``src``: :func:`weights_only` without the run's
    arguments (they name local paths), plus ``meta``, atomically."""
    atomic_save({**weights_only(read_checkpoint(src), with_args=False), **meta}, dst)


def load_training_state(ckpt: dict, source: Path, optimizer: torch.optim.Optimizer, scheduler: Any,
                        scaler: torch.amp.GradScaler, ema: ModelEMA | None, world_size: int) -> TrainState:
    """Load optimiser, scheduler, EMA, gradient-scaler and RNG state; return where to continue."""
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None:
            load_state_dict_strict(ema.model, ckpt["state_dict"], "EMA weights")
        if scaler.is_enabled() and "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        state = TrainState(ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["global_step"], dict(ckpt["best"]))
        epoch_done = bool(ckpt["epoch_done"])
    except CheckpointError:
        raise
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(
            f"checkpoint {source}: cannot restore the training state ({type(exc).__name__}: {exc}); it was not "
            "written by this train.py or was edited: resume from another checkpoint, or start a new run from its "
            "weights with --weights"
        ) from exc
    saved_world = ckpt.get("world_size", 1)
    if saved_world != world_size and not epoch_done:
        log.warning("%s was written by %d processes and is resumed on %d: the rest of epoch %d is split "
                    "differently, so it does not repeat an uninterrupted run exactly", source, saved_world,
                    world_size, state.epoch)
    if epoch_done:
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    return state


def find_resume_checkpoint(folder: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint that ``--resume auto`` continues from, read, or None for a new run.

    ``last.pth`` is written at every save (``epoch_<n>.pth`` are copies of the same moment), so
    it is the newest state; if it is missing, unreadable or holds no training state, the other
    ``*.pth`` files are tried, newest first, each skip logged (``best.pth`` holds no training state).
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
