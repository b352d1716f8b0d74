"""Train VLIFNet or ESDNet on paired rainy/clean folders with the released recipe (SPEC 6).

    python train.py --train_dir datasets/Rain200H/train --val_dir datasets/Rain200H/test
    python train.py --preset rain200l                  # dataset paths + refinement on
    python train.py --preset demo --max_steps 20       # tiny net on built-in synthetic rain
    python train.py --resume checkpoints/run/last.pth  # continue where it stopped

Checkpoints (``last.pth`` every epoch, ``best.pth``, ``epoch_<n>.pth`` with ``--save_every``),
``train.log``, ``train_steps.csv`` (loss and lr of every step) and TensorBoard logs (``tb/``)
go to ``--model_save_dir``.
"""
from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.dataset import DataError, EpochBatchSampler, PairedImageDataset, to_uint8
from models import build_model
from options.common import network_overrides
from options.presets import DEMO_DATA_ROOT
from options.train_options import args_to_dict, parse_train_args, peek_resume
from utils.checkpoint import (CheckpointError, atomic_save, load_model, load_state_dict_strict, make_checkpoint,
                              read_checkpoint)
from utils.evaluation import score, summarise
from utils.logger import make_writer, setup_logging
from utils.losses import build_loss
from utils.tiling import restore
from utils.training import (ModelEMA, build_scheduler, firing_rate, get_rng_state, pick_device, seed_everything,
                            set_rng_state)

log = logging.getLogger("train")


@dataclass
class TrainState:
    """Where the run stands; saved in every checkpoint."""

    epoch: int = 1  # the epoch being run (1-based)
    batch_in_epoch: int = 0  # batches of ``epoch`` already done
    global_step: int = 0
    best: dict[str, Any] = field(default_factory=lambda: {"metric": None, "value": None, "epoch": None})


def build_network(args: argparse.Namespace, ckpt: dict | None) -> nn.Module:
    """The network: from the resumed checkpoint, from ``--weights``, or new from the flags."""
    if ckpt is not None:
        model = build_model(ckpt["arch"], **ckpt["config"])
        load_state_dict_strict(model, ckpt.get("raw_state_dict", ckpt["state_dict"]), f"checkpoint {args.resume}")
        return model
    if args.weights is not None:
        model, wckpt = load_model(args.weights)
        log.info("fine-tuning from %s (%s %s; network flags ignored)", args.weights, wckpt["arch"], wckpt["config"])
        return model.train()
    return build_model(args.arch, **network_overrides(args))


def make_data(args: argparse.Namespace) -> tuple[DataLoader, EpochBatchSampler, PairedImageDataset | None]:
    """Training loader over ``(epoch, index)`` keys and the validation dataset (or ``None``)."""
    train_set = PairedImageDataset(args.train_dir, args.patch_size_train, args.seed, args.flips)
    sampler = EpochBatchSampler(len(train_set), args.batch_size, args.seed)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=args.num_workers,
                        pin_memory=torch.cuda.is_available())
    val_set = None
    if args.val_dir is not None:
        val_set = PairedImageDataset(args.val_dir, args.val_crop, args.seed, size_flag="--val_crop")
    log.info("training on %d pairs from %s%s", len(train_set), args.train_dir,
             f"; validating on {len(val_set)} pairs from {args.val_dir}" if val_set else "; no validation")
    return loader, sampler, val_set


def validate(net: nn.Module, val_set: PairedImageDataset, args: argparse.Namespace,
             device: torch.device) -> dict[str, Any]:
    """Mean PSNR/SSIM (all conventions) over ``val_set`` via test.py's inference path, and the
    mean firing rate of the first image."""
    was_training = net.training
    net.eval()
    rows = []
    rate: dict[str, float] = {}
    for i in range(len(val_set)):
        item = val_set[i]
        x = item["input"][None].to(device)  # [1, 3, H, W]
        if i == 0:
            with firing_rate(net) as rate:
                out = restore(net, x, args.crop_size, args.overlap_size, args.tile_batch)
        else:
            out = restore(net, x, args.crop_size, args.overlap_size, args.tile_batch)
        rows.append(score(to_uint8(out[0]), to_uint8(item["target"])))
    net.train(was_training)
    return {"metrics": summarise(rows), "firing_rate": rate.get("rate", float("nan"))}


def save_checkpoints(state: TrainState, parts: dict[str, Any], args: argparse.Namespace,
                     epoch_done: bool, is_best: bool) -> None:
    """Write ``last.pth``, and ``best.pth`` / ``epoch_<n>.pth`` when due, atomically."""
    model, ema = parts["model"], parts["ema"]
    extra = dict(
        args=args_to_dict(args), optimizer=parts["optimizer"].state_dict(), scheduler=parts["scheduler"].state_dict(),
        rng=get_rng_state(), epoch_done=epoch_done, **asdict(state),
    )
    if ema is not None:
        ckpt = make_checkpoint(ema.model, raw_state_dict=model.state_dict(), **extra)
    else:
        ckpt = make_checkpoint(model, **extra)
    atomic_save(ckpt, args.model_save_dir / "last.pth")
    if is_best:
        atomic_save(ckpt, args.model_save_dir / "best.pth")
    if epoch_done and args.save_every and state.epoch % args.save_every == 0:
        atomic_save(ckpt, args.model_save_dir / f"epoch_{state.epoch}.pth")


def restore_state(ckpt: dict, parts: dict[str, Any]) -> TrainState:
    """Load optimiser, scheduler, EMA and RNG state; return where to continue."""
    parts["optimizer"].load_state_dict(ckpt["optimizer"])
    parts["scheduler"].load_state_dict(ckpt["scheduler"])
    if parts["ema"] is not None:
        load_state_dict_strict(parts["ema"].model, ckpt["state_dict"], "EMA weights")
    set_rng_state(ckpt["rng"])
    state = TrainState(ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["global_step"], dict(ckpt["best"]))
    if ckpt["epoch_done"]:
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    return state


def run_epoch(state: TrainState, parts: dict[str, Any], args: argparse.Namespace, device: torch.device) -> bool:
    """Train on the rest of ``state.epoch``; returns True if ``--max_steps`` stopped it."""
    model, optimizer, criterion, sampler = parts["model"], parts["optimizer"], parts["criterion"], parts["sampler"]
    sampler.set_epoch(state.epoch, state.batch_in_epoch)
    model.train()
    lr = optimizer.param_groups[0]["lr"]
    bar = tqdm(parts["loader"], desc=f"epoch {state.epoch}/{args.num_epochs}", disable=not args.progress,
               leave=False, dynamic_ncols=True)
    for batch in bar:
        x, y = batch["input"].to(device), batch["target"].to(device)  # [B, 3, p, p]
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if parts["ema"] is not None:
            parts["ema"].update(model)
        state.global_step += 1
        state.batch_in_epoch += 1
        value = loss.item()
        parts["steps_csv"].writerow([state.global_step, state.epoch, repr(value), repr(lr)])
        parts["writer"].add_scalar("train/loss", value, state.global_step)
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
        if args.max_steps is not None and state.global_step >= args.max_steps:
            return True
    return False


def log_validation(state: TrainState, parts: dict[str, Any], args: argparse.Namespace,
                   device: torch.device) -> bool:
    """Validate, log, and update ``state.best``; returns True for a new best model."""
    net = parts["ema"].model if parts["ema"] is not None else parts["model"]
    result = validate(net, parts["val_set"], args, device)
    for protocol, m in result["metrics"].items():
        parts["writer"].add_scalar(f"val/psnr_{protocol}", m["psnr"], state.epoch)
        parts["writer"].add_scalar(f"val/ssim_{protocol}", m["ssim"], state.epoch)
    parts["writer"].add_scalar("val/firing_rate", result["firing_rate"], state.epoch)
    value = result["metrics"][args.val_metric]["psnr"]
    table = ", ".join(f"{p} {m['psnr']:.2f} dB / {m['ssim']:.4f}" for p, m in result["metrics"].items())
    log.info("epoch %d step %d validation: %s; firing rate %.4f", state.epoch, state.global_step, table,
             result["firing_rate"])
    best = state.best["value"]
    if best is None or value > best:
        state.best = {"metric": f"psnr_{args.val_metric}", "value": value, "epoch": state.epoch}
        log.info("new best %s PSNR %.3f dB", args.val_metric, value)
        return True
    return False


def train(args: argparse.Namespace, ckpt: dict | None) -> int:
    """Set up model, data, optimiser and logs, then run epochs until done or ``--max_steps``."""
    device = pick_device(args.device)
    seed_everything(args.seed)
    model = build_network(args, ckpt).to(device)
    loader, sampler, val_set = make_data(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=args.weight_decay)
    parts: dict[str, Any] = dict(
        model=model, loader=loader, sampler=sampler, val_set=val_set, optimizer=optimizer,
        scheduler=build_scheduler(optimizer, args.lr, args.min_lr, args.warmup_epochs, args.num_epochs),
        criterion=build_loss(args.loss), ema=ModelEMA(model, args.ema_decay) if args.ema_decay > 0 else None,
        writer=make_writer(args.model_save_dir / "tb", args.tensorboard),
    )
    state = restore_state(ckpt, parts) if ckpt is not None else TrainState()
    log.info("%s %s on %s, %d parameters; epoch %d of %d", type(model).__name__, getattr(model, "config", {}),
             device, sum(p.numel() for p in model.parameters()), state.epoch, args.num_epochs)
    with open(args.model_save_dir / "train_steps.csv", "a", newline="", encoding="utf-8", buffering=1) as fh:
        parts["steps_csv"] = csv.writer(fh)
        if fh.tell() == 0:
            parts["steps_csv"].writerow(["step", "epoch", "loss", "lr"])
        run_epochs(state, parts, args, device)
    parts["writer"].close()
    return 0


def run_epochs(state: TrainState, parts: dict[str, Any], args: argparse.Namespace, device: torch.device) -> None:
    """The epoch loop: train, step the schedule, validate when due, checkpoint."""
    if args.max_steps is not None and state.global_step >= args.max_steps:
        log.info("already at step %d >= --max_steps %d: nothing to do", state.global_step, args.max_steps)
        return
    while state.epoch <= args.num_epochs:
        start = time.time()
        parts["writer"].add_scalar("train/lr", parts["optimizer"].param_groups[0]["lr"], state.epoch)
        stopped = run_epoch(state, parts, args, device)
        epoch_done = state.batch_in_epoch >= parts["sampler"].batches_per_epoch()
        if epoch_done:
            parts["scheduler"].step()
        due = epoch_done and (state.epoch % args.val_epochs == 0 or state.epoch == args.num_epochs)
        is_best = parts["val_set"] is not None and (due or stopped) and log_validation(state, parts, args, device)
        save_checkpoints(state, parts, args, epoch_done, is_best)
        log.info("epoch %d %s at step %d (%.1f s)", state.epoch, "done" if epoch_done else "interrupted",
                 state.global_step, time.time() - start)
        if stopped:
            log.info("stopped at --max_steps %d; continue with --resume %s", args.max_steps,
                     args.model_save_dir / "last.pth")
            return
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, prepare the data folders and train; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    resume = peek_resume(argv)
    try:
        ckpt = read_checkpoint(resume) if resume is not None else None
        if ckpt is not None and "optimizer" not in ckpt:
            raise CheckpointError(f"{resume} holds weights but no training state; use --weights to fine-tune from it")
        args = parse_train_args(argv, saved=ckpt.get("args") if ckpt else None)
        args.model_save_dir.mkdir(parents=True, exist_ok=True)
        setup_logging(args.model_save_dir / "train.log")
        if args.train_dir is None and args.preset == "demo":
            from data.synthetic_rain import make_demo_dataset

            args.train_dir = Path(make_demo_dataset(DEMO_DATA_ROOT)["train"])
        if args.train_dir is None:
            raise DataError("no training data: pass --train_dir <folder with input/ and target/> or --preset")
        log.info("command: train.py %s", " ".join(argv))
        return train(args, ckpt)
    except (DataError, CheckpointError) as exc:
        logging.getLogger("train").error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
