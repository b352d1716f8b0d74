"""Command line of ``test.py`` (released flag names: ``--data_path``, ``--target_path``,
``--weights``, ``--save_path``). With no arguments at all, ``test.py`` runs the demo."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from utils.metrics import PROTOCOLS

from .common import add_inference_args, add_network_args

DEMO_WEIGHTS = Path(__file__).resolve().parents[1] / "pretrained_models" / "vlifnet_demo.pth"


def build_parser() -> argparse.ArgumentParser:
    """The full ``test.py`` parser."""
    p = argparse.ArgumentParser(
        prog="test.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Derain a folder of images and score it (PSNR/SSIM in three conventions, SPEC 7). "
                    "Without arguments: the demo on synthetic rain with the committed demo weights.",
    )
    io = p.add_argument_group("input and output")
    io.add_argument("--data_path", type=Path, default=None,
                    help="folder of rainy images (with --metrics_only: the folder of results to score)")
    io.add_argument("--target_path", type=Path, default=None, help="folder of clean images, paired by name")
    io.add_argument("--weights", type=Path, default=None, help="checkpoint (released .pth or this project's)")
    io.add_argument("--save_path", type=Path, default=None,
                    help="where the PNGs and metrics.{csv,json} go (default: results/<weights name>; "
                         "with --metrics_only: the --data_path folder)")
    io.add_argument("--metrics_only", action=argparse.BooleanOptionalAction, default=False,
                    help="only score the images in --data_path against --target_path (no network)")
    io.add_argument("--demo", action=argparse.BooleanOptionalAction, default=False,
                    help="derain the synthetic demo test set with the demo weights (default when no argument is given)")
    io.add_argument("--score_input", action=argparse.BooleanOptionalAction, default=False,
                    help="also score the rainy inputs against the targets, for comparison")
    io.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS),
                    help="metric conventions to report (SPEC 7)")
    add_network_args(p, from_checkpoint=True)
    add_inference_args(p)
    return p


def parse_test_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the combination of flags; an empty ``argv`` means ``--demo``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not argv:
        args.demo = True
    if args.demo:
        args.weights = args.weights or DEMO_WEIGHTS
        args.score_input = True
        return args
    if args.data_path is None:
        parser.error("--data_path is required (or run without arguments for the demo)")
    if args.metrics_only and args.target_path is None:
        parser.error("--metrics_only needs --target_path")
    if not args.metrics_only and args.weights is None:
        parser.error("--weights is required to derain (or use --metrics_only to score existing results)")
    if args.overlap_size >= args.crop_size > 0:
        parser.error(f"--overlap_size ({args.overlap_size}) must be smaller than --crop_size ({args.crop_size})")
    return args
