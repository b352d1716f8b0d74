"""Command line of ``test.py`` (released flag names: ``--data_path``, ``--target_path``,
``--weights``, ``--save_path``). With no arguments at all, ``test.py`` runs the demo."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from data.registry import DATASETS, DEMO_WEIGHTS, PRETRAINED_DIR, parse_weights_map
from utils.metrics import PROTOCOLS

from .common import HelpFormatter, add_inference_args, add_network_args


def build_parser() -> argparse.ArgumentParser:
    """The full ``test.py`` parser."""
    p = argparse.ArgumentParser(
        prog="test.py", formatter_class=HelpFormatter,
        description="Derain a folder of images and score it (PSNR/SSIM in three conventions, SPEC 7). "
                    "Without arguments: the demo on synthetic rain with the committed demo weights.",
    )
    io = p.add_argument_group("input and output")
    demo_weights = DEMO_WEIGHTS.relative_to(PRETRAINED_DIR.parent)
    for flag, text in (
        ("--data_path", "folder of rainy images (with --metrics_only: the folder of results to score); "
                        "required unless --demo or --benchmark"),
        ("--target_path", "folder of clean images, paired by name (default: none, the results are not scored)"),
        ("--weights", "checkpoint (released .pth or this project's); required to derain "
                      f"(default: none; the demo uses {demo_weights})"),
        ("--save_path", "where the PNGs and metrics.{csv,json} go (default: results/<weights name>; "
                        "with --metrics_only, scores.{csv,json} go to the --data_path folder)"),
    ):
        io.add_argument(flag, type=Path, default=None, help=text)
    io.add_argument("--metrics_only", action=argparse.BooleanOptionalAction, default=False,
                    help="only score the images in --data_path against --target_path (no network)")
    io.add_argument("--demo", action=argparse.BooleanOptionalAction, default=False,
                    help="derain the synthetic demo test set with the demo weights "
                         "(what test.py does without arguments)")
    io.add_argument("--compare", action=argparse.BooleanOptionalAction, default=None,
                    help="also write compare/<name>.png (rainy | derained | clean, labelled with PSNR in the "
                         "first of --protocols) and compare_sheet.png (the first 32 images) "
                         "(default: on for the demo, off otherwise)")
    io.add_argument("--score_input", action=argparse.BooleanOptionalAction, default=False,
                    help="also score the rainy inputs against the targets, for comparison")
    io.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS),
                    help="metric conventions to report (SPEC 7)")
    bench = p.add_argument_group("benchmarks (docs/benchmarks.md)")
    bench.add_argument("--benchmark", action=argparse.BooleanOptionalAction, default=False,
                       help="evaluate every dataset present under --data_root with its released weights and "
                            "write results.md (paper layout) to --save_path, results/benchmark unless given")
    bench.add_argument("--data_root", type=Path, default=None,
                       help="folder holding <name>/test/{input,target} (made by python -m data.prepare); "
                            "required with --benchmark")
    bench.add_argument("--weights_dir", type=Path, default=PRETRAINED_DIR,
                       help="folder holding the released weights (Rain200L.pth, Rain200H.pth, Rain1200.pth)")
    bench.add_argument("--weights_map", type=parse_weights_map, default=None,
                       help="override the dataset -> weights mapping, e.g. Rain12=Rain200H.pth,RW_Rain=Rain1200.pth "
                            "(default: none, the mapping of docs/benchmarks.md)")
    bench.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=None,
                       help="evaluate only these datasets (default: every one present)")
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off",
                   help="mixed-precision inference (approximate; docs/speed.md): convolutions and matrix "
                        "products in bfloat16 (CPUs with AVX-512 BF16, CUDA) or float16 (CUDA); spikes are "
                        "still decided on float32 membranes")
    p.add_argument("--energy", action=argparse.BooleanOptionalAction, default=False,
                   help="also measure MACs, synaptic operations, firing rates and energy (docs/energy.md), "
                        "averaged over the images; written to energy.json")
    add_network_args(p, from_checkpoint=True)
    add_inference_args(p)
    p.add_argument("--cuda_graphs", action=argparse.BooleanOptionalAction, default=False,
                   help="on CUDA, record each tile batch shape's forward once as a CUDA graph and replay it "
                        "(the same kernels and results, without launching some 2,000 kernels per call; "
                        "docs/speed.md); not with --energy, whose hooks do not run on a replay")
    p.add_argument("--fold_bn", action=argparse.BooleanOptionalAction, default=True,
                   help="fold each eval-mode batch norm into the convolution before it and run each VLIF's 1x1 "
                        "channel_adjust before its resize (the same function in fewer operations, float rounding "
                        "apart; docs/speed.md); --no-fold_bn runs the layers as trained, in their order")
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
        args.compare = args.compare is not False
        return args
    args.compare = bool(args.compare)
    if args.benchmark:
        if args.data_root is None:
            parser.error("--benchmark needs --data_root (the folder made by python -m data.prepare)")
        args.save_path = args.save_path or Path("results/benchmark")
        return args
    if args.data_path is None:
        parser.error("--data_path is required (or run without arguments for the demo)")
    if args.metrics_only and args.target_path is None:
        parser.error("--metrics_only needs --target_path")
    if not args.metrics_only and args.weights is None:
        parser.error("--weights is required to derain (or use --metrics_only to score existing results)")
    if args.cuda_graphs and args.energy:
        parser.error("--cuda_graphs cannot be combined with --energy: the energy hooks do not run on a graph replay")
    if args.cuda_graphs and args.device == "cpu":
        parser.error("--cuda_graphs needs a CUDA device; --device is cpu")
    if args.overlap_size >= args.crop_size > 0:
        parser.error(f"--overlap_size ({args.overlap_size}) must be smaller than --crop_size ({args.crop_size})")
    return args
