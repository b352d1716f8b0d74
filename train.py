"""Train VLIFNet or ESDNet on paired rainy/clean folders with the released recipe (SPEC 6).

    python train.py --train_dir datasets/Rain200H/train --val_dir datasets/Rain200H/test
    python train.py --preset rain200l                  # dataset paths + refinement on
    python train.py --preset demo --max_steps 20       # tiny net on built-in synthetic rain
    python train.py --resume checkpoints/run/last.pth  # continue where it stopped
    python train.py --preset rain200h --resume auto    # continue the run if it has a checkpoint
    torchrun --nproc_per_node 4 train.py --preset rain200h --batch_size 3 --sync_bn   # 4 GPUs

Checkpoints (``last.pth`` every epoch and ``epoch_<n>.pth`` with ``--save_every``, both
resumable; ``best.pth`` with the weights only), ``train.log``, ``train_steps.csv`` (loss and lr
of every step), ``val_metrics.csv`` (one row per validation: the learning curve) and TensorBoard logs (``tb/``) go to ``--model_save_dir``, written by process 0
only, and only once data, options and checkpoint have been checked: a run that fails to start
writes nothing. SIGTERM/SIGINT save ``last.pth`` at the end of the current step. Exit status:
0 done, 2 bad input, checkpoint or options, 3 the loss stayed NaN/inf, 128 + signal number
(143 SIGTERM, 130 SIGINT) stopped by a signal, resumable (docs/reliability.md).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.dataset import EpochBatchSampler, PairedImageDataset
from data.io import DataError, check_output_dir, to_uint8
from data.synthetic_rain import make_demo_dataset
from models import build_model
from models.neurons import set_neuron_impl
from options.common import network_overrides
from options.presets import DEMO_DATA_ROOT
from options.train_options import AUTO, args_to_dict, parse_train_args, peek_resume
from utils.training import distributed
from utils.checkpoint import CheckpointError, atomic_save, load_model, load_state_dict_strict
from utils.training.device import Amp, pick_device, setup_amp
from utils.training.ema import ModelEMA
from utils.evaluation import score, summarise
from utils.training.firing import firing_rate
from utils.fuse import resolve_tile_batch
from utils.training.guards import NonFiniteGuard, NonFiniteLossError, RunError, check_finite_weights
from utils.inference import restore
from utils.metrics import PROTOCOLS
from utils.allocator import keep_freed_memory
from utils.logger import (NullWriter, make_writer, open_step_log, record_validation, setup_logging,
                          start_log_file)
from utils.losses import build_loss
from utils.training.rng import seed_everything
from utils.training.schedule import build_scheduler
from utils.training.signals import GracefulStop, ignore_stop_signals, signal_exit_code
from utils.training.resume import (TrainState, find_resume_checkpoint, load_training_state, read_training_checkpoint,
                                    remove_stale_temp_files, training_checkpoint, weights_only)

EXIT_BAD_INPUT, EXIT_NONFINITE = 2, 3

log = logging.getLogger("train")


@dataclass
class Run:
    """What a training run works with; built by :func:`set_up` before anything is written."""

    args: argparse.Namespace
    dist: distributed.DistInfo
    device: torch.device
    model: nn.Module  # the network; its weights are saved
    forward: nn.Module  # ``model``, or its DistributedDataParallel wrapper: the training forward pass
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler  # per epoch
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ema: ModelEMA | None
    amp: Amp
    loader: DataLoader
    sampler: EpochBatchSampler
    val_set: PairedImageDataset | None
    guard: NonFiniteGuard
    stop: GracefulStop
    writer: Any = field(default_factory=NullWriter)  # TensorBoard, from open_outputs on
    step_log: Any = None  # csv writer of train_steps.csv, during train()


def start_run(argv: list[str]) -> tuple[argparse.Namespace, dict | None, distributed.DistInfo, torch.device]:
    """Arguments, checkpoint to resume (or None), process group and device."""
    resume = peek_resume(argv)
    ckpt = read_training_checkpoint(resume) if isinstance(resume, Path) else None
    args = parse_train_args(argv, saved=ckpt.get("args") if ckpt else None)
    device = pick_device(args.device)
    dinfo = distributed.setup(device.type)
    if dinfo.enabled and device.type == "cuda":
        device = torch.device("cuda", dinfo.local_rank)
    if not dinfo.is_main:
        setup_logging(None, logging.WARNING)  # process 0 logs; the others report warnings and errors
    elif args.model_save_dir.exists():
        check_output_dir(args.model_save_dir, "--model_save_dir")  # fail fast; creates nothing
    if resume == AUTO:
        args, ckpt = resume_auto(argv, args, dinfo)
    elif ckpt is None and dinfo.is_main and (args.model_save_dir / "last.pth").is_file():
        log.warning("starting a new run in %s, which holds last.pth of an earlier run: it is overwritten at the "
                    "first save (use --resume auto to continue that run instead)", args.model_save_dir)
    if args.preset == "demo" and (args.train_dir is None or args.val_dir is None):
        if not dinfo.is_main:
            distributed.barrier()  # process 0 builds the set once
        demo = make_demo_dataset(DEMO_DATA_ROOT, splits=("train", "val"))
        args.train_dir, args.val_dir = args.train_dir or Path(demo["train"]), args.val_dir or Path(demo["val"])
        if dinfo.is_main:
            distributed.barrier()
    if args.train_dir is None:
        raise DataError("no training data: pass --train_dir <folder with input/ and target/> or --preset")
    return args, ckpt, dinfo, device


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


def set_up(args: argparse.Namespace, ckpt: dict | None, dinfo: distributed.DistInfo, device: torch.device,
           stop: GracefulStop) -> tuple[Run, TrainState]:
    """Data, network, optimiser, schedule, loss, EMA, precision, and where to continue; bad data,
    options or checkpoints fail here, before anything is written."""
    amp = setup_amp(args.amp, device)
    seed_everything(args.seed)
    loader, sampler, val_set = make_data(args, dinfo)
    net = set_neuron_impl(build_network(args, ckpt), args.neuron_impl)
    if args.sync_bn:
        distributed.sync_batchnorm(net, dinfo.world_size)
    net = net.to(device)
    forward = net
    if dinfo.enabled:
        forward = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=args.weight_decay)
    run = Run(args, dinfo, device, net, forward, optimizer,
              scheduler=build_scheduler(optimizer, args.lr, args.min_lr, args.warmup_epochs, args.num_epochs),
              criterion=build_loss(args.loss), ema=ModelEMA(net, args.ema_decay) if args.ema_decay > 0 else None,
              amp=amp, loader=loader, sampler=sampler, val_set=val_set, guard=NonFiniteGuard(args.max_nonfinite),
              stop=stop)
    state = TrainState()
    if ckpt is not None:
        state = load_training_state(ckpt, args.resume, optimizer, run.scheduler, amp.scaler, run.ema,
                                    dinfo.world_size)
    if dinfo.rank > 0:
        seed_everything(args.seed + dinfo.rank)  # own random streams per process; weights come from rank 0
    log.info("%s %s on %s, %d parameters; epoch %d of %d%s", type(net).__name__, getattr(net, "config", {}),
             device, sum(p.numel() for p in net.parameters()), state.epoch, args.num_epochs,
             f"; mixed precision {args.amp}" if args.amp != "off" else "")
    return run, state


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


def train(run: Run, state: TrainState) -> int:
    """Open the outputs, run the epochs; returns the exit status."""
    open_outputs(run)
    try:
        with open_step_log(run.args.model_save_dir / "train_steps.csv", state.global_step,
                           run.dist.is_main) as run.step_log:
            return run_epochs(run, state)
    finally:
        run.writer.close()


def open_outputs(run: Run) -> None:
    """Process 0 creates ``--model_save_dir`` and starts ``train.log`` (beginning with the records
    held since the start) and TensorBoard: the first files this run writes."""
    folder, error = run.args.model_save_dir, None
    if run.dist.is_main:
        try:
            check_output_dir(folder, "--model_save_dir")
        except DataError as exc:
            error = exc
    if distributed.any_process(error is not None, run.device):  # all stop, none waits for process 0
        raise error or RunError(f"process 0 cannot write to {folder} (--model_save_dir); its log says why")
    if run.dist.is_main:
        start_log_file(folder / "train.log")
        remove_stale_temp_files(folder)
    run.writer = make_writer(folder / "tb", run.args.tensorboard and run.dist.is_main)


def run_epochs(run: Run, state: TrainState) -> int:
    """The epoch loop: train, step the schedule, validate when due, checkpoint; returns the exit status."""
    args, last = run.args, run.args.model_save_dir / "last.pth"
    if args.max_steps is not None and state.global_step >= args.max_steps:
        log.info("already at step %d >= --max_steps %d: nothing to do", state.global_step, args.max_steps)
        return 0
    while state.epoch <= args.num_epochs:
        start = time.time()
        run.writer.add_scalar("train/lr", run.optimizer.param_groups[0]["lr"], state.epoch)
        reason = train_epoch(run, state)
        epoch_done = state.batch_in_epoch >= run.sampler.batches_per_epoch()
        finish_epoch(run, state, epoch_done, reason)
        log.info("epoch %d %s at step %d (%.1f s)", state.epoch, "done" if epoch_done else "interrupted",
                 state.global_step, time.time() - start)
        if reason is None and distributed.any_process(run.stop.requested, run.device):
            reason = "signal"  # the signal came during validation or saving
        if reason == "signal":
            signum = distributed.max_over_processes(run.stop.signum, run.device) or 15
            log.warning("stopped by signal %d at step %d (epoch %d, %d of %d batches done); %s saved: continue "
                        "with --resume auto", signum, state.global_step, state.epoch, state.batch_in_epoch,
                        run.sampler.batches_per_epoch(), last)
            return signal_exit_code(signum)
        if reason == "max_steps":
            log.info("stopped at --max_steps %d; continue with --resume %s", args.max_steps, last)
            return 0
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    return 0


def train_epoch(run: Run, state: TrainState) -> str | None:
    """Train on the rest of ``state.epoch``; returns why it ended early (``max_steps``, ``signal``) or None."""
    args, model, optimizer, scaler = run.args, run.model, run.optimizer, run.amp.scaler
    run.sampler.set_epoch(state.epoch, state.batch_in_epoch)
    run.forward.train()
    lr = optimizer.param_groups[0]["lr"]
    bar = tqdm(run.loader, desc=f"epoch {state.epoch}/{args.num_epochs}", leave=False, dynamic_ncols=True,
               disable=not (args.progress and run.dist.is_main))
    for batch in bar:
        x, y = batch["input"].to(run.device), batch["target"].to(run.device)  # [B, 3, p, p]
        with run.amp.autocast():
            out = run.forward(x)
        loss = run.criterion(out.float(), y)  # float32 loss also under mixed precision
        value, stop = distributed.sync_step(loss, run.stop.requested)  # mean over processes
        state.global_step += 1
        state.batch_in_epoch += 1
        run.step_log.writerow([state.global_step, state.epoch, repr(value), repr(lr)])
        run.writer.add_scalar("train/loss", value, state.global_step)
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
        if run.guard.check(value, state.global_step, batch["name"]):  # NaN/inf: skip the step, or stop at the limit
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # scaled under float16 only; the scaler passes it through otherwise
            if args.grad_clip > 0:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                norm = nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
                run.writer.add_scalar("train/grad_norm", float(norm), state.global_step)
            scaler.step(optimizer)  # skipped by the scaler when float16 gradients overflowed
            scaler.update()
            if run.ema is not None:
                run.ema.update(model)
        if stop:
            return "signal"
        if args.max_steps is not None and state.global_step >= args.max_steps:
            return "max_steps"
    return None


def finish_epoch(run: Run, state: TrainState, epoch_done: bool, reason: str | None) -> None:
    """Step the schedule, validate when due, save (process 0; the others wait)."""
    args = run.args
    if epoch_done:
        run.scheduler.step()
    if run.dist.world_size > 1:
        distributed.check_replicas(run.model, state.global_step)
    if run.dist.is_main:
        due = epoch_done and (state.epoch % args.val_epochs == 0 or state.epoch == args.num_epochs)
        is_best = run.val_set is not None and (due or reason == "max_steps") and validate_and_log(run, state)
        save_checkpoints(run, state, epoch_done, is_best)
    distributed.barrier()


def validate_and_log(run: Run, state: TrainState) -> bool:
    """Validate, log, and update ``state.best``; returns True for a new best model."""
    net = run.ema.model if run.ema is not None else run.model
    result = validate(net, run.val_set, run.args, run.device)
    m = result["metrics"]  # {"psnr_<protocol>": dB, "ssim_<protocol>": value}
    for key, v in m.items():
        run.writer.add_scalar(f"val/{key}", v, state.epoch)
    run.writer.add_scalar("val/firing_rate", result["firing_rate"], state.epoch)
    record_validation(run.args.model_save_dir / "val_metrics.csv", {
        "epoch": state.epoch, "step": state.global_step, **{k: round(v, 4) for k, v in m.items()},
        "firing_rate": round(result["firing_rate"], 5)})
    value = m[f"psnr_{run.args.val_metric}"]
    table = ", ".join(f"{p} {m[f'psnr_{p}']:.2f} dB / {m[f'ssim_{p}']:.4f}" for p in PROTOCOLS)
    log.info("epoch %d step %d validation: %s; firing rate %.4f", state.epoch, state.global_step, table,
             result["firing_rate"])
    best = state.best["value"]
    if best is None or value > best:
        state.best = {"metric": f"psnr_{run.args.val_metric}", "value": value, "epoch": state.epoch}
        log.info("new best %s PSNR %.3f dB", run.args.val_metric, value)
        return True
    return False


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


def save_checkpoints(run: Run, state: TrainState, epoch_done: bool, is_best: bool) -> None:
    """Write ``last.pth``, and ``best.pth`` (weights only) / ``epoch_<n>.pth`` when due, atomically;
    never NaN weights."""
    args = run.args
    check_finite_weights(run.model, state.global_step)
    ckpt = training_checkpoint(run.model, run.ema, run.optimizer, run.scheduler, run.amp.scaler, state,
                               args_to_dict(args), epoch_done, run.dist.world_size)
    atomic_save(ckpt, args.model_save_dir / "last.pth")
    if is_best:
        atomic_save(weights_only(ckpt), args.model_save_dir / "best.pth")
    if epoch_done and args.save_every and state.epoch % args.save_every == 0:
        atomic_save(ckpt, args.model_save_dir / f"epoch_{state.epoch}.pth")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, prepare the data folders and train; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    keep_freed_memory()  # no page-fault churn between steps (utils/allocator.py)
    setup_logging(hold=True)  # records wait in memory until open_outputs starts train.log
    try:
        with GracefulStop() as stop:
            args, ckpt, dinfo, device = start_run(argv)
            log.info("command: train.py %s", " ".join(argv))
            run, state = set_up(args, ckpt, dinfo, device, stop)
            return train(run, state)
    except NonFiniteLossError as exc:
        log.error("%s", exc)
        return EXIT_NONFINITE
    except (DataError, CheckpointError, RunError) as exc:
        log.error("%s", exc)
        return EXIT_BAD_INPUT
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    status = main()
    distributed.end_worker(status)  # torchrun workers end here (see its docstring); one process goes on
    sys.exit(status)
