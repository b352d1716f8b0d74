"""Train VLIFNet or ESDNet on paired rainy/clean folders with the released recipe (SPEC 6).

    python train.py --train_dir datasets/Rain200H/train --val_dir datasets/Rain200H/test
    python train.py --preset rain200l                  # dataset paths + refinement on
    python train.py --preset demo --max_steps 20       # tiny net on built-in synthetic rain
    python train.py --resume checkpoints/run/last.pth  # continue where it stopped
    python train.py --preset rain200h --resume auto    # continue the run if it has a checkpoint
    torchrun --nproc_per_node 4 train.py --preset rain200h --batch_size 3 --sync_bn   # 4 GPUs

Checkpoints (``last.pth`` every epoch, ``best.pth``, ``epoch_<n>.pth`` with ``--save_every``),
``train.log``, ``train_steps.csv`` (loss and lr of every step) and TensorBoard logs (``tb/``)
go to ``--model_save_dir``, written by process 0 only. SIGTERM/SIGINT save ``last.pth`` at the
end of the current step. Exit status: 0 done, 2 bad input, checkpoint or options, 3 the loss
stayed NaN/inf, 128 + signal number (143 SIGTERM, 130 SIGINT) stopped by a signal, resumable
(docs/reliability.md).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.dataset import EpochBatchSampler, PairedImageDataset
from data.io import DataError, check_output_dir, to_uint8
from models import build_model
from models.neurons import neuron_impl
from options.common import network_overrides
from options.presets import DEMO_DATA_ROOT
from options.train_options import AUTO, args_to_dict, parse_train_args, peek_resume
from utils import distributed
from utils.checkpoint import (CheckpointError, atomic_save, load_model, load_state_dict_strict, make_checkpoint,
                              read_checkpoint)
from utils.evaluation import score, summarise
from utils.fuse import resolve_tile_batch
from utils.logger import make_writer, setup_logging
from utils.losses import build_loss
from utils.signals import GracefulStop, ignore_stop_signals, signal_exit_code
from utils.inference import restore
from utils.training import (ModelEMA, NonFiniteGuard, NonFiniteLossError, RunError, build_scheduler,
                            check_finite_weights, find_resume_checkpoint, firing_rate, get_rng_state,
                            has_training_state, open_step_log, optimizer_step, pick_device, remove_stale_temp_files,
                            seed_everything, set_rng_state, setup_amp)

EXIT_BAD_INPUT, EXIT_NONFINITE = 2, 3

log = logging.getLogger("train")


@dataclass
class TrainState:
    """Where the run stands; saved in every checkpoint."""

    epoch: int = 1  # the epoch being run (1-based)
    batch_in_epoch: int = 0  # batches of ``epoch`` already done (per process)
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


def sync_batchnorm(net: nn.Module, world_size: int) -> None:
    """``--sync_bn``: every tdBN computes its statistics over the batches of all processes."""
    distributed.convert_sync_tdbn(net)
    left = distributed.unsynced_batchnorms(net)
    if left:
        raise RunError(f"--sync_bn: {len(left)} batch-norm layers were not converted (first: {left[0]})")
    n = sum(isinstance(m, distributed.SyncThresholdDependentBatchNorm2d) for m in net.modules())
    log.info("--sync_bn: %d tdBN layers synchronised over %d processes", n, world_size)


def make_data(args: argparse.Namespace,
              dinfo: distributed.DistInfo) -> tuple[DataLoader, EpochBatchSampler, PairedImageDataset | None]:
    """Training loader over ``(epoch, index)`` keys, this process's shard, and the validation set (or None)."""
    train_set = PairedImageDataset(args.train_dir, args.patch_size_train, args.seed, args.flips)
    sampler = EpochBatchSampler(len(train_set), args.batch_size, args.seed, rank=dinfo.rank,
                                world_size=dinfo.world_size)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=args.num_workers,
                        pin_memory=torch.cuda.is_available(), worker_init_fn=ignore_stop_signals)
    val_set = None
    if args.val_dir is not None:
        val_set = PairedImageDataset(args.val_dir, args.val_crop, args.seed, size_flag="--val_crop")
    log.info("training on %d pairs from %s%s", len(train_set), args.train_dir,
             f"; validating on {len(val_set)} pairs from {args.val_dir}" if val_set else "; no validation")
    log.info("%d process%s x batch %d = global batch %d; %d steps per epoch", dinfo.world_size,
             "es" if dinfo.enabled else "", args.batch_size, args.batch_size * dinfo.world_size,
             sampler.batches_per_epoch())
    return loader, sampler, val_set


def validate(net: nn.Module, val_set: PairedImageDataset, args: argparse.Namespace,
             device: torch.device) -> dict[str, Any]:
    """Mean PSNR/SSIM (all conventions) over ``val_set`` via test.py's inference path, and the
    mean firing rate of the first image."""
    was_training = net.training
    net.eval()
    rows = []
    rate: dict[str, float] = {}
    tile_batch = resolve_tile_batch(net, args.crop_size, args.tile_batch, device)
    for i in range(len(val_set)):
        item = val_set[i]
        x = item["input"][None].to(device)  # [1, 3, H, W]
        if i == 0:
            with firing_rate(net) as rate:
                out = restore(net, x, args.crop_size, args.overlap_size, tile_batch)
        else:
            out = restore(net, x, args.crop_size, args.overlap_size, tile_batch)
        rows.append(score(to_uint8(out[0]), to_uint8(item["target"])))
    net.train(was_training)
    return {"metrics": summarise(rows), "firing_rate": rate.get("rate", float("nan"))}


def save_checkpoints(state: TrainState, parts: dict[str, Any], args: argparse.Namespace,
                     epoch_done: bool, is_best: bool) -> None:
    """Write ``last.pth``, and ``best.pth`` / ``epoch_<n>.pth`` when due, atomically; never NaN weights."""
    model, ema = parts["model"], parts["ema"]
    check_finite_weights(model, state.global_step)
    extra = dict(
        args=args_to_dict(args), optimizer=parts["optimizer"].state_dict(), scheduler=parts["scheduler"].state_dict(),
        rng=get_rng_state(), epoch_done=epoch_done, world_size=parts["world_size"], **asdict(state),
    )
    if parts["amp"].scaler is not None:
        extra["scaler"] = parts["amp"].scaler.state_dict()
    if ema is not None:
        ckpt = make_checkpoint(ema.model, raw_state_dict=model.state_dict(), **extra)
    else:
        ckpt = make_checkpoint(model, **extra)
    atomic_save(ckpt, args.model_save_dir / "last.pth")
    if is_best:
        atomic_save(ckpt, args.model_save_dir / "best.pth")
    if epoch_done and args.save_every and state.epoch % args.save_every == 0:
        atomic_save(ckpt, args.model_save_dir / f"epoch_{state.epoch}.pth")


def restore_state(ckpt: dict, parts: dict[str, Any], source: Path) -> TrainState:
    """Load optimiser, scheduler, EMA, gradient-scaler and RNG state; return where to continue."""
    try:
        parts["optimizer"].load_state_dict(ckpt["optimizer"])
        parts["scheduler"].load_state_dict(ckpt["scheduler"])
        if parts["ema"] is not None:
            load_state_dict_strict(parts["ema"].model, ckpt["state_dict"], "EMA weights")
        if parts["amp"].scaler is not None and "scaler" in ckpt:
            parts["amp"].scaler.load_state_dict(ckpt["scaler"])
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
    if saved_world != parts["world_size"] and not epoch_done:
        log.warning("%s was written by %d processes and is resumed on %d: the rest of epoch %d is split "
                    "differently, so it does not repeat an uninterrupted run exactly", source, saved_world,
                    parts["world_size"], state.epoch)
    if epoch_done:
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    return state


def run_epoch(state: TrainState, parts: dict[str, Any], args: argparse.Namespace) -> str | None:
    """Train on the rest of ``state.epoch``; returns why it ended early (``max_steps``, ``signal``) or None."""
    net, optimizer, amp, device = parts["model"], parts["optimizer"], parts["amp"], parts["device"]
    parts["sampler"].set_epoch(state.epoch, state.batch_in_epoch)
    parts["forward"].train()
    lr = optimizer.param_groups[0]["lr"]
    bar = tqdm(parts["loader"], desc=f"epoch {state.epoch}/{args.num_epochs}", leave=False, dynamic_ncols=True,
               disable=not (args.progress and parts["is_main"]))
    for batch in bar:
        x, y = batch["input"].to(device), batch["target"].to(device)  # [B, 3, p, p]
        with amp.autocast():
            out = parts["forward"](x)
        loss = parts["criterion"](out.float(), y)  # float32 loss also under mixed precision
        value, stop = distributed.sync_step(loss, parts["stop"].requested)  # mean over processes
        state.global_step += 1
        state.batch_in_epoch += 1
        parts["steps_csv"].writerow([state.global_step, state.epoch, repr(value), repr(lr)])
        parts["writer"].add_scalar("train/loss", value, state.global_step)
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
        if parts["guard"].check(value, state.global_step, batch["name"]):  # NaN/inf: skip, or stop at the limit
            norm = optimizer_step(loss, net, optimizer, amp.scaler, args.grad_clip)
            if parts["ema"] is not None:
                parts["ema"].update(net)
            if norm is not None:
                parts["writer"].add_scalar("train/grad_norm", norm, state.global_step)
        if stop:
            return "signal"
        if args.max_steps is not None and state.global_step >= args.max_steps:
            return "max_steps"
    return None


def log_validation(state: TrainState, parts: dict[str, Any], args: argparse.Namespace) -> bool:
    """Validate, log, and update ``state.best``; returns True for a new best model."""
    net = parts["ema"].model if parts["ema"] is not None else parts["model"]
    result = validate(net, parts["val_set"], args, parts["device"])
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


def train(args: argparse.Namespace, ckpt: dict | None, dinfo: distributed.DistInfo, device: torch.device,
          stop: GracefulStop) -> int:
    """Set up data, model, optimiser and logs, then run epochs; returns the exit status."""
    amp = setup_amp(args.amp, device)
    seed_everything(args.seed)
    loader, sampler, val_set = make_data(args, dinfo)  # bad data fails here, before anything is written
    net = build_network(args, ckpt)
    if args.sync_bn:
        sync_batchnorm(net, dinfo.world_size)
    net = net.to(device)
    forward = net
    if dinfo.enabled:
        forward = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=args.weight_decay)
    parts: dict[str, Any] = dict(
        model=net, forward=forward, loader=loader, sampler=sampler, val_set=val_set, optimizer=optimizer,
        scheduler=build_scheduler(optimizer, args.lr, args.min_lr, args.warmup_epochs, args.num_epochs),
        criterion=build_loss(args.loss), ema=ModelEMA(net, args.ema_decay) if args.ema_decay > 0 else None,
        amp=amp, guard=NonFiniteGuard(args.max_nonfinite), stop=stop, device=device, is_main=dinfo.is_main,
        world_size=dinfo.world_size,
    )
    state = restore_state(ckpt, parts, args.resume) if ckpt is not None else TrainState()
    parts["writer"] = make_writer(args.model_save_dir / "tb", args.tensorboard and dinfo.is_main)
    if dinfo.rank > 0:
        seed_everything(args.seed + dinfo.rank)  # own random streams per process; weights come from rank 0
    log.info("%s %s on %s, %d parameters; epoch %d of %d%s", type(net).__name__, getattr(net, "config", {}),
             device, sum(p.numel() for p in net.parameters()), state.epoch, args.num_epochs,
             f"; mixed precision {args.amp}" if args.amp != "off" else "")
    try:
        with open_step_log(args.model_save_dir / "train_steps.csv", state.global_step, dinfo.is_main) as steps:
            parts["steps_csv"] = steps
            return run_epochs(state, parts, args)
    finally:
        parts["writer"].close()


def finish_epoch(state: TrainState, parts: dict[str, Any], args: argparse.Namespace, epoch_done: bool,
                 reason: str | None) -> None:
    """Step the schedule, validate when due, save (process 0; the others wait)."""
    if epoch_done:
        parts["scheduler"].step()
    if parts["world_size"] > 1:
        check_replicas(parts["model"], state.global_step)
    if parts["is_main"]:
        due = epoch_done and (state.epoch % args.val_epochs == 0 or state.epoch == args.num_epochs)
        is_best = (parts["val_set"] is not None and (due or reason == "max_steps")
                   and log_validation(state, parts, args))
        save_checkpoints(state, parts, args, epoch_done, is_best)
    distributed.barrier()


def check_replicas(net: nn.Module, step: int) -> None:
    """Every process holds the same weights (DDP's promise, checked at every save); RunError if not."""
    digests = distributed.replica_digests(net)
    if len(set(digests)) != 1:
        differ = [rank for rank, d in enumerate(digests) if d != digests[0]]
        raise RunError(f"step {step}: the weights of process(es) {differ} differ from process 0's; the replicas "
                       "drifted apart (a failed all-reduce or a faulty device): resume from the last checkpoint")
    log.info("step %d: %d processes hold identical weights (sha256 %s)", step, len(digests), digests[0][:16])


def run_epochs(state: TrainState, parts: dict[str, Any], args: argparse.Namespace) -> int:
    """The epoch loop: train, step the schedule, validate when due, checkpoint; returns the exit status."""
    if args.max_steps is not None and state.global_step >= args.max_steps:
        log.info("already at step %d >= --max_steps %d: nothing to do", state.global_step, args.max_steps)
        return 0
    last = args.model_save_dir / "last.pth"
    while state.epoch <= args.num_epochs:
        start = time.time()
        parts["writer"].add_scalar("train/lr", parts["optimizer"].param_groups[0]["lr"], state.epoch)
        reason = run_epoch(state, parts, args)
        epoch_done = state.batch_in_epoch >= parts["sampler"].batches_per_epoch()
        finish_epoch(state, parts, args, epoch_done, reason)
        log.info("epoch %d %s at step %d (%.1f s)", state.epoch, "done" if epoch_done else "interrupted",
                 state.global_step, time.time() - start)
        if reason is None and distributed.any_process(parts["stop"].requested, parts["device"]):
            reason = "signal"  # the signal came during validation or saving
        if reason == "signal":
            signum = distributed.max_over_processes(parts["stop"].signum, parts["device"]) or 15
            log.warning("stopped by signal %d at step %d (epoch %d, %d of %d batches done); %s saved: continue "
                        "with --resume auto", signum, state.global_step, state.epoch, state.batch_in_epoch,
                        parts["sampler"].batches_per_epoch(), last)
            return signal_exit_code(signum)
        if reason == "max_steps":
            log.info("stopped at --max_steps %d; continue with --resume %s", args.max_steps, last)
            return 0
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    return 0


def read_training_checkpoint(path: Path) -> dict:
    """A checkpoint written by this script (weights and training state); :class:`CheckpointError` otherwise."""
    ckpt = read_checkpoint(path)
    if not has_training_state(ckpt):
        raise CheckpointError(f"{path} holds weights but no training state; use --weights to fine-tune from it")
    return ckpt


def start_logging(folder: Path, dinfo: distributed.DistInfo) -> None:
    """Process 0 logs to the console and ``<folder>/train.log`` (after checking it can write there);
    the others log warnings and errors to the console only."""
    if dinfo.is_main:
        check_output_dir(folder, "--model_save_dir")
        setup_logging(folder / "train.log")
    else:
        setup_logging(None, logging.WARNING)


def resume_auto(argv: list[str], args: argparse.Namespace,
                dinfo: distributed.DistInfo) -> tuple[argparse.Namespace, dict | None]:
    """``--resume auto``: the arguments and checkpoint of the run in ``--model_save_dir``, if any."""
    folder = args.model_save_dir
    found = find_resume_checkpoint(folder) if dinfo.is_main else None
    path = distributed.broadcast_object(found[0] if found else None)  # every process resumes the same file
    if path is None:
        log.info("--resume auto: no checkpoint with training state in %s: starting a new run", folder)
        return args, None
    ckpt = found[1] if found else read_training_checkpoint(path)
    args = parse_train_args(argv, saved=ckpt.get("args"))
    args.model_save_dir, args.resume = folder, path
    if args.weights is not None:
        log.info("--resume auto: %s continues the run; --weights %s is not used", path, args.weights)
        args.weights = None
    log.info("--resume auto: continuing from %s (epoch %d, step %d)", path, ckpt["epoch"], ckpt["global_step"])
    return args, ckpt


def start_run(argv: list[str]) -> tuple[argparse.Namespace, dict | None, distributed.DistInfo, torch.device]:
    """Arguments, checkpoint to resume (or None), process group and device; logging set up."""
    resume = peek_resume(argv)
    ckpt = read_training_checkpoint(resume) if isinstance(resume, Path) else None
    args = parse_train_args(argv, saved=ckpt.get("args") if ckpt else None)
    device = pick_device(args.device)
    dinfo = distributed.setup(device.type)
    if dinfo.enabled and device.type == "cuda":
        device = torch.device("cuda", dinfo.local_rank)
    start_logging(args.model_save_dir, dinfo)
    if resume == AUTO:
        args, ckpt = resume_auto(argv, args, dinfo)
    elif ckpt is None and dinfo.is_main and (args.model_save_dir / "last.pth").is_file():
        log.warning("starting a new run in %s, which holds last.pth of an earlier run: it is overwritten at the "
                    "first save (use --resume auto to continue that run instead)", args.model_save_dir)
    if dinfo.is_main:
        remove_stale_temp_files(args.model_save_dir)
    if args.train_dir is None and args.preset == "demo":
        from data.synthetic_rain import make_demo_dataset

        if not dinfo.is_main:
            distributed.barrier()  # process 0 builds the set once
        args.train_dir = Path(make_demo_dataset(DEMO_DATA_ROOT)["train"])
        if dinfo.is_main:
            distributed.barrier()
    if args.train_dir is None:
        raise DataError("no training data: pass --train_dir <folder with input/ and target/> or --preset")
    return args, ckpt, dinfo, device


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, prepare the data folders and train; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    setup_logging()
    try:
        with GracefulStop() as stop:
            args, ckpt, dinfo, device = start_run(argv)
            log.info("command: train.py %s", " ".join(argv))
            with neuron_impl(args.neuron_impl):
                return train(args, ckpt, dinfo, device, stop)
    except NonFiniteLossError as exc:
        log.error("%s", exc)
        return EXIT_NONFINITE
    except (DataError, CheckpointError, RunError) as exc:
        log.error("%s", exc)
        return EXIT_BAD_INPUT
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    sys.exit(main())
