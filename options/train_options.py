"""Command line of ``train.py``. Defaults are the released recipe (SPEC 6), flag names the released ones.

Precedence, lowest first: these defaults, ``--preset``, the arguments stored in a ``--resume``
checkpoint, flags given on the command line.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

from utils.metrics import PROTOCOLS

from .common import (DE_NUM_BLOCKS, EN_NUM_BLOCKS, HelpFormatter, add_inference_args, add_network_args,
                     check_network_args, full_block_counts, non_negative_int, positive_int)
from .presets import PRESETS

# Per-invocation flags that a resumed run does not inherit from the checkpoint.
SESSION_KEYS = ("resume", "weights", "max_steps", "num_workers", "device", "progress")
AUTO = "auto"  # --resume auto: the newest valid checkpoint in --model_save_dir, or a new run


def non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def resume_path(text: str) -> Path | str:
    """argparse type of ``--resume``: a checkpoint path, or ``auto``."""
    return AUTO if text == AUTO else Path(text)


def default_num_workers() -> int:
    """4 data-loader workers, or as many as the CPUs this process may use if fewer (more make
    torch warn and only compete for the cores)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(4, cpus)


def add_data_args(p: argparse.ArgumentParser) -> None:
    """Training and validation folders, crops, batches, loader workers."""
    d = p.add_argument_group("data")
    d.add_argument("--train_dir", type=Path, default=None,
                   help="folder holding input/ and target/ (required unless --preset gives it)")
    d.add_argument("--val_dir", type=Path, default=None,
                   help="validation folder (input/, target/); not given = no validation")
    d.add_argument("--patch_size_train", type=positive_int, default=64, help="side of the random training crop")
    d.add_argument("--batch_size", type=positive_int, default=12,
                   help="training batch size per process (with torchrun the global batch is N times this)")
    d.add_argument("--num_workers", type=non_negative_int, default=default_num_workers(),
                   help=f"data-loader worker processes (default: 4, or the CPUs available if fewer: "
                        f"{default_num_workers()} here)")
    d.add_argument("--flips", action=argparse.BooleanOptionalAction, default=False,
                   help="random horizontal/vertical flips (not in the released recipe)")
    d.add_argument("--val_crop", type=non_negative_int, default=0,
                   help="validate on one fixed random crop of this side per image (the release used 64); "
                        "0 = full images")


def add_optimisation_args(p: argparse.ArgumentParser) -> None:
    """Epochs, the optimiser and its schedule, the loss, EMA, precision and the step's safeguards."""
    o = p.add_argument_group("optimisation")
    o.add_argument("--num_epochs", type=positive_int, default=1000, help="epochs (one crop per image each)")
    o.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate")
    o.add_argument("--min_lr", type=float, default=1e-7, help="learning rate at the end of the cosine")
    o.add_argument("--warmup_epochs", type=non_negative_int, default=3, help="linear warm-up epochs, from 0")
    o.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay")
    o.add_argument("--loss", choices=("ssim", "l1", "charbonnier", "mse"), default="ssim",
                   help="training loss (released: 1 - SSIM; mse: the squared error PSNR measures)")
    o.add_argument("--ema_decay", type=float, default=0.0,
                   help="keep an exponential moving average of the weights, used for validation and "
                        "saved as the weights (e.g. 0.999); 0 = off")
    o.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off",
                   help="mixed precision of the forward pass: bf16 (CUDA, or CPU for checks), fp16 (CUDA, "
                        "with gradient scaling); the loss is computed in float32")
    o.add_argument("--grad_clip", type=non_negative_float, default=0.0,
                   help="clip the gradients to this total L2 norm; 0 = off (released)")
    o.add_argument("--max_nonfinite", type=positive_int, default=5,
                   help="a NaN/inf loss skips its step with a warning; this many in a row stop the run")
    o.add_argument("--sync_bn", action=argparse.BooleanOptionalAction, default=False,
                   help="with torchrun: tdBN statistics over the batches of all processes")


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Seed, output folder, validation and saving cadence, resuming and fine-tuning, logs."""
    r = p.add_argument_group("run")
    r.add_argument("--seed", type=int, default=1234, help="seed of the weights, crops and shuffling")
    r.add_argument("--model_save_dir", type=Path, default=Path("checkpoints/run"),
                   help="checkpoints, log file and TensorBoard logs go here")
    r.add_argument("--val_epochs", type=positive_int, default=10, help="validate every this many epochs")
    r.add_argument("--val_metric", choices=PROTOCOLS, default="matlab-y",
                   help="PSNR convention that picks the best model")
    r.add_argument("--save_every", type=non_negative_int, default=0,
                   help="also keep epoch_<n>.pth every this many epochs; 0 = only last and best")
    r.add_argument("--max_steps", type=positive_int, default=None,
                   help="stop after this many optimiser steps in total (short runs; resumable); "
                        "not given = run all epochs")
    r.add_argument("--resume", type=resume_path, default=None,
                   help="continue a run from its checkpoint (weights, optimiser, schedule, RNG, args), e.g. "
                        "last.pth; 'auto' = the newest resumable checkpoint in --model_save_dir, or a new run if "
                        "there is none; not given = a new run")
    r.add_argument("--weights", type=Path, default=None,
                   help="start from these weights (fine-tuning; any checkpoint, best.pth included); network read "
                        "from the file; not given = random initialisation")
    r.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="write TensorBoard logs to <model_save_dir>/tb")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The full ``train.py`` parser with the released defaults."""
    p = argparse.ArgumentParser(prog="train.py", formatter_class=HelpFormatter,
                                description="Train VLIFNet/ESDNet on paired rainy/clean folders (released recipe).")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="dataset preset (paths, refinement flag; 'demo' = tiny net on synthetic rain); "
                        "not given = the released recipe as is")
    add_data_args(p)
    add_network_args(p)
    add_optimisation_args(p)
    add_run_args(p)
    add_inference_args(p)
    return p


def peek_resume(argv: Sequence[str] | None) -> Path | str | None:
    """The ``--resume`` path (or ``auto``), if any, before the full parse (its args become defaults)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--resume", type=resume_path, default=None)
    return p.parse_known_args(argv)[0].resume


def parse_train_args(argv: Sequence[str] | None = None, saved: dict[str, Any] | None = None) -> argparse.Namespace:
    """Parse ``argv``; ``saved`` are the arguments of a checkpoint being resumed."""
    parser = build_parser()
    preset = parser.parse_args(argv).preset
    if preset is None and saved:
        preset = saved.get("preset")
    if preset is not None:
        parser.set_defaults(**PRESETS[preset])
    if saved:
        known = {a.dest for a in parser._actions}
        parser.set_defaults(**{k: v for k, v in saved.items() if k in known and k not in SESSION_KEYS})
    args = parser.parse_args(argv)
    for key in ("train_dir", "val_dir", "model_save_dir", "weights"):
        value = getattr(args, key)
        setattr(args, key, Path(value) if value is not None else None)
    if args.resume not in (None, AUTO) and args.weights is not None:
        parser.error("--resume and --weights exclude each other (resume continues a run; weights start one); "
                     "--resume auto --weights W starts from W unless the run folder has a checkpoint")
    if args.overlap_size >= args.crop_size > 0:
        parser.error(f"--overlap_size ({args.overlap_size}) must be smaller than --crop_size ({args.crop_size})")
    check_network_args(parser, args)
    args.en_num_blocks = full_block_counts(args.en_num_blocks, EN_NUM_BLOCKS)  # saved with the run as 4 numbers
    args.de_num_blocks = full_block_counts(args.de_num_blocks, DE_NUM_BLOCKS)
    return args


def args_to_dict(args: argparse.Namespace) -> dict[str, Any]:
    """Arguments as plain primitives (paths as strings, tuples as lists) for the checkpoint."""
    out: dict[str, Any] = {}
    for key, value in vars(args).items():
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out
