"""``python -m tools.energy``: per-layer MACs, synaptic operations, firing rates and energy of
VLIFNet / ESDNet on one image (SPEC 9; the accounting is :mod:`utils.energy.meter`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from data.io import DataError, read_image, to_tensor, write_text_atomic
from data.synthetic_rain import demo_pair
from models import build_model
from utils.checkpoint import CheckpointError, load_model
from utils.energy.meter import E_AC_PJ, E_MAC_PJ, measure
from utils.energy.op_counter import measure_with_op_counter
from utils.energy.report import format_layers, format_op_counter, format_table, plot_summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.energy",
        description="Per-layer MACs, synaptic operations, firing rates and energy of VLIFNet / ESDNet.",
    )
    p.add_argument("--arch", choices=("vlifnet", "esdnet"), default=None,
                   help="network (default: read from --weights, else vlifnet)")
    p.add_argument("--weights", type=str, default=None, help="checkpoint; without it: random initialisation")
    p.add_argument("--use_refinement", action=argparse.BooleanOptionalAction, default=None,
                   help="VLIFNet with the 4 refinement SDEMs (released Rain200L model)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", type=str, help="image file (RGB, scaled to [0, 1])")
    src.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="random image of this size")
    src.add_argument("--demo", type=int, nargs="?", const=256, metavar="SIDE",
                     help="built-in photo with synthetic 'medium' rain, SIDE x SIDE (default 256)")
    p.add_argument("--batch_stats", action=argparse.BooleanOptionalAction, default=False,
                   help="normalise with batch statistics (train-mode tdBN) instead of running ones; "
                   "random weights are nearly silent in eval mode, their running statistics being the "
                   "initial 0 / 1")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights and the random image")
    p.add_argument("--e_mac", type=float, default=E_MAC_PJ, help="energy per MAC, pJ")
    p.add_argument("--e_ac", type=float, default=E_AC_PJ, help="energy per accumulate (SOP), pJ")
    p.add_argument("--device", type=str, default="cpu", help="torch device")
    p.add_argument("--json", type=str, default=None, help="write the full summary here")
    p.add_argument("--plot", type=str, default=None, help="write a PNG of firing rates and energy by block")
    p.add_argument("--layers", action=argparse.BooleanOptionalAction, default=False,
                   help="also print the per-layer table")
    p.add_argument("--op_counter", action=argparse.BooleanOptionalAction, default=False,
                   help="also count with spikingjelly's op_counter on the same forward and print both "
                   "(docs/energy.md says where they differ and why)")
    return p


def _model_from_args(args: argparse.Namespace) -> tuple[nn.Module, str]:
    overrides = {} if args.use_refinement is None else {"use_refinement": args.use_refinement}
    if args.weights:
        model, ckpt = load_model(args.weights, arch=args.arch, map_location=args.device, **overrides)
        return model, args.arch or ckpt["arch"]
    arch = args.arch or "vlifnet"
    if arch == "esdnet":
        overrides.pop("use_refinement", None)
    torch.manual_seed(args.seed)
    return build_model(arch, **overrides).to(args.device).eval(), arch


def _image_from_args(args: argparse.Namespace) -> tuple[torch.Tensor, str]:
    """The ``[1, 3, H, W]`` input in [0, 1] and a label for the report."""
    if args.input:
        return to_tensor(read_image(args.input))[None], args.input
    if args.demo is not None:
        rainy = demo_pair(args.demo)[1]  # H x W x 3 uint8
        return torch.from_numpy(rainy).permute(2, 0, 1).unsqueeze(0).float() / 255.0, f"demo {args.demo}"
    generator = torch.Generator().manual_seed(args.seed)
    return torch.rand(1, 3, *args.size, generator=generator), f"random {args.size[0]}x{args.size[1]}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tools.energy``: print the per-block table; optionally JSON and a figure."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.demo is not None and args.demo < 8:
        parser.error("--demo SIDE must be at least 8")
    try:
        model, arch = _model_from_args(args)
        img, label = _image_from_args(args)
    except (CheckpointError, DataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model.train(args.batch_stats)
    run = measure_with_op_counter if args.op_counter else measure
    summary = run(model, img.to(args.device), args.e_mac, args.e_ac)
    summary.update(arch=arch, config=dict(getattr(model, "config", {})), weights=args.weights, input=label,
                   batch_stats=args.batch_stats)
    print(format_table(summary))
    if args.layers:
        print(format_layers(summary))
    if args.op_counter:
        print(format_op_counter(summary))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.json, json.dumps(summary, indent=1))
    if args.plot:
        plot_summary(summary, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
