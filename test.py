"""Derain a folder with a checkpoint and score it in the three conventions of SPEC 7.

    python test.py --data_path rainy/ --target_path clean/ --weights model.pth --save_path out/
    python test.py --data_path rainy/ --weights model.pth --crop_size 0      # whole images
    python test.py --metrics_only --data_path out/ --target_path clean/       # score results
    python test.py --benchmark --data_root datasets --weights_dir pretrained_models  # paper table
    python test.py                                                            # the demo

One lossless PNG per input (named by its stem); with targets, ``metrics.csv`` (per image) and
``metrics.json`` (means) in ``--save_path``, and a table on stdout. ``--metrics_only`` names its
reports ``scores.csv`` / ``scores.json``, so that scoring a results folder in place keeps the
report of the run that wrote it.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from data.dataset import check_pairs, pair_by_name
from data.io import DataError, check_images, list_images, output_dir, read_image, write_png
from models.neurons import set_neuron_impl
from options.common import network_overrides
from options.presets import DEMO_DATA_ROOT
from options.test_options import parse_test_args
from data.registry import BenchmarkError
from data.synthetic_rain import make_demo_dataset
from utils.benchmark import run_benchmark
from utils.checkpoint import CheckpointError, load_model
from utils.energy.meter import EnergyMeter
from utils.energy.report import format_table as format_energy
from utils.evaluation import format_table, score, summarise, write_csv, write_json
from utils.figures import contact_sheet, side_by_side
from utils.cuda_graphs import GraphedForward
from utils.fuse import prepare_for_inference, resolve_tile_batch
from utils.inference import restore_stream
from utils.allocator import keep_freed_memory
from utils.logger import setup_logging
from utils.metrics import psnr
from utils.training.device import pick_device, warn_if_bf16_is_emulated
from utils.training.guards import RunError

log = logging.getLogger("test")
SHEET_IMAGES = 32  # the contact sheet shows the first images of a folder, at most this many
SHEET_SIDE = 160  # longer side of each panel on the contact sheet, in pixels (the demo images: as they are)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # --amp


def load_network(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The checkpoint's network (``--arch`` and network flags override), ready for inference on
    ``device`` (eval mode, no gradients, batch norm folded and VLIF mixing before resizing unless
    ``--no-fold_bn``)."""
    model, ckpt = load_model(args.weights, arch=args.arch, map_location="cpu", **network_overrides(args))
    log.info("%s: %s %s", args.weights, type(model).__name__, model.config)
    fold = args.fold_bn and not args.energy  # --energy meters the network as trained (its parameters, its layers)
    amp = AMP_DTYPES.get(args.amp)  # convolution weights stored in it: autocast would cast them at every call
    if amp == torch.bfloat16:
        warn_if_bf16_is_emulated(device)
    model = set_neuron_impl(prepare_for_inference(model.to(device), fold=fold, amp=amp), args.neuron_impl)
    args.tile_batch = resolve_tile_batch(model, args.crop_size, args.tile_batch, device)
    log.info("inference: %s neurons, batch norm %s, %s", args.neuron_impl,
             "folded into the convolutions, VLIF mixing before resizing" if fold else "as trained",
             "whole images" if args.crop_size == 0 else
             f"{args.crop_size}x{args.crop_size} tiles (overlap {args.overlap_size}), {args.tile_batch} per call")
    return model, ckpt


def collect(args: argparse.Namespace) -> list[tuple[Path, Path | None]]:
    """``(image, target or None)`` for every image of ``--data_path``, paired by name.

    Every file is decoded in full here, before any output is written: a truncated file (whose
    header still reads) or a NaN image stops the run with its name, not half-way through it.
    """
    if args.target_path is None:
        paths = list_images(args.data_path)
        check_images(paths)
        return [(p, None) for p in paths]
    pairs = pair_by_name(args.data_path, args.target_path)
    check_pairs(pairs)  # sizes from the headers: a mismatch is reported before the slow decode
    check_images([path for pair in pairs for path in pair])
    return pairs


def run(args: argparse.Namespace, items: list[tuple[Path, Path | None]], net: nn.Module | None,
        device: torch.device) -> tuple[list[dict], list[dict]]:
    """Derain (unless ``net`` is None: metrics only) and score; returns result and input rows.

    Images are read as the network needs them: tiles of consecutive images share network calls.
    """
    inputs = (read_image(path) for path, _ in items)
    forward = GraphedForward(net) if args.cuda_graphs and net is not None else net
    pairs = ((img, img) for img in inputs) if net is None else restore_stream(
        forward, inputs, args.crop_size, args.overlap_size, args.tile_batch, device)
    bar = tqdm(zip(items, pairs), total=len(items), desc="derain" if net is not None else "score",
               dynamic_ncols=True)
    amp = AMP_DTYPES.get(args.amp)
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None and net is not None):
        return _write_and_score(args, bar)


def _write_and_score(args: argparse.Namespace, bar) -> tuple[list[dict], list[dict]]:
    """Consume ``(item, (input, output))`` pairs: write each output, score it and the input,
    and with ``--compare`` write its side-by-side picture and, at the end, the contact sheet."""
    derained = not args.metrics_only
    compare = args.compare and derained
    rows, input_rows, sheet_rows = [], [], []
    for (path, target_path), (img, out) in bar:
        if derained:
            write_png(args.save_path / f"{path.stem}.png", out)
        target = None if target_path is None else read_image(target_path)
        if target is not None:
            if out.shape != target.shape:
                raise DataError(f"{path} is {out.shape[1]}x{out.shape[0]} but {target_path} is "
                                f"{target.shape[1]}x{target.shape[0]}: results and targets must match in size")
            rows.append({"name": path.stem, **score(out, target, args.protocols)})
            if args.score_input and derained:
                input_rows.append({"name": path.stem, **score(img, target, args.protocols)})
        if compare:
            panels = compare_panels(img, out, target, args.protocols[0])
            write_png(args.save_path / "compare" / f"{path.stem}.png", side_by_side(panels))
            if len(sheet_rows) < SHEET_IMAGES:
                sheet_rows.append(side_by_side(panels, SHEET_SIDE))
    if sheet_rows:
        write_png(args.save_path / "compare_sheet.png", contact_sheet(sheet_rows))
        log.info("side-by-side pictures in %s, contact sheet of %d image(s): %s", args.save_path / "compare",
                 len(sheet_rows), args.save_path / "compare_sheet.png")
    return rows, input_rows


def compare_panels(rainy: np.ndarray, derained: np.ndarray, clean: np.ndarray | None,
                   protocol: str) -> list[tuple[np.ndarray, str]]:
    """rainy | derained | clean (when there is one), each rainy and derained labelled with its
    PSNR against the clean image in ``protocol``."""
    if clean is None:
        return [(rainy, "rainy"), (derained, "derained")]
    return [(rainy, f"rainy {psnr(rainy, clean, protocol):.2f} dB"),
            (derained, f"derained {psnr(derained, clean, protocol):.2f} dB"), (clean, "clean")]


def report_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """Per-image CSV and means JSON in ``--save_path``: ``metrics.*`` for a derain run,
    ``scores.*`` for ``--metrics_only`` (whose default folder holds a derain run's ``metrics.*``)."""
    stem = "scores" if args.metrics_only else "metrics"
    return args.save_path / f"{stem}.csv", args.save_path / f"{stem}.json"


def report(args: argparse.Namespace, rows: list[dict], input_rows: list[dict], seconds: float) -> str:
    """Write the per-image CSV and the means JSON of :func:`report_paths`; return the table."""
    summaries = {("scored" if args.metrics_only else "derained"): summarise(rows, args.protocols)}
    csv_rows = [dict(r) for r in rows]
    if input_rows:
        summaries["rainy input"] = summarise(input_rows, args.protocols)
        for row, inp in zip(csv_rows, input_rows):
            row.update({f"input_{k}": v for k, v in inp.items() if k != "name"})
    csv_path, json_path = report_paths(args)
    write_csv(csv_path, csv_rows)
    write_json(json_path, {
        "num_images": len(rows), "protocols": list(args.protocols), "means": summaries,
        "data_path": str(args.data_path), "target_path": str(args.target_path),
        "weights": None if args.metrics_only else str(args.weights),
        "crop_size": args.crop_size, "overlap_size": args.overlap_size, "amp": args.amp,
        "seconds": round(seconds, 3),
    })
    return format_table(summaries, len(rows))


def prepare_demo(args: argparse.Namespace) -> None:
    """Point the paths at the synthetic demo test set (built on first use)."""
    test_dir = Path(make_demo_dataset(DEMO_DATA_ROOT, splits=("test",))["test"])
    args.data_path, args.target_path = test_dir / "input", test_dir / "target"
    args.save_path = args.save_path or Path("results/demo/derained")
    log.info("demo: held-out synthetic rain in %s, weights %s", test_dir, args.weights)


def evaluate_folder(args: argparse.Namespace) -> tuple[list[dict], list[dict], dict | None]:
    """Derain (or only score) ``args.data_path`` and write the reports; returns the per-image rows,
    the rainy inputs' rows and the energy summary (``--energy``) or ``None``.

    Inputs and the checkpoint are checked before ``--save_path`` is created; if the run fails
    anyway, the folders it created are removed again while they are empty.
    """
    items = collect(args)
    device = pick_device(args.device)
    if args.cuda_graphs and device.type != "cuda" and not args.metrics_only:
        raise RunError(f"--cuda_graphs needs a CUDA device; this run is on {device} (see --device)")
    net = None if args.metrics_only else load_network(args, device)[0]
    with output_dir(args.save_path, "--save_path"):
        meter = EnergyMeter(net) if args.energy and net is not None else contextlib.nullcontext()
        start = time.time()
        with meter:
            rows, input_rows = run(args, items, net, device)
        seconds = time.time() - start
        if not args.metrics_only:
            log.info("%d images derained in %.1f s -> %s", len(items), seconds, args.save_path)
        energy = None
        if isinstance(meter, EnergyMeter):
            energy = meter.summary(num_images=len(items))
            energy.update(arch=type(net).__name__.lower(), config=net.config, weights=str(args.weights))
            write_json(args.save_path / "energy.json", energy)
        if rows:
            print(report(args, rows, input_rows, seconds))
            csv_path, json_path = report_paths(args)
            print(f"metrics per image: {csv_path}; means: {json_path}")
    if energy is not None:
        print(format_energy(energy))
    return rows, input_rows, energy


def benchmark(args: argparse.Namespace) -> int:
    """``--benchmark``: every prepared dataset with its weights; results.md in ``--save_path``."""
    def evaluate(input_dir: Path, target_dir: Path | None, weights: Path, save_dir: Path) -> dict:
        run_args = copy.copy(args)
        run_args.data_path, run_args.target_path, run_args.weights, run_args.save_path = (
            input_dir, target_dir, weights, save_dir)
        rows = evaluate_folder(run_args)[0]
        return summarise(rows, args.protocols) if rows else {}

    result = run_benchmark(args.data_root, args.weights_dir, args.save_path, evaluate,
                           weights_map=args.weights_map, names=args.datasets, protocols=args.protocols)
    print(Path(result["results_md"]).read_text(encoding="utf-8"))
    return 1 if result["failed"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, derain and/or score; returns the exit status."""
    args = parse_test_args(argv)
    keep_freed_memory()  # no page-fault churn between steps (utils/allocator.py)
    setup_logging()
    try:
        if args.benchmark:
            return benchmark(args)
        if args.demo:
            prepare_demo(args)
        if args.save_path is None:
            args.save_path = args.data_path if args.metrics_only else Path("results") / args.weights.stem
        evaluate_folder(args)
    except (DataError, CheckpointError, BenchmarkError, RunError) as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
