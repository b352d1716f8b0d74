"""Pieces shared by ``train.py`` and ``test.py``: the help formatter, argparse types, and the
network and inference argument groups."""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from models import MODELS
from models.neurons import NEURON_IMPLS

# The released block counts; VLIFNet reads only levels 2 and 3 of them.
EN_NUM_BLOCKS, DE_NUM_BLOCKS = (4, 4, 8, 8), (2, 2, 2, 2)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to a help line, except where the default is None (the help says
    what leaving the flag out does) or the help already speaks of its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or "default" in text:
            return text
        return super()._get_help_string(action)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


class _BlockCounts(argparse.Action):
    """``--en_num_blocks`` / ``--de_num_blocks``: 4 numbers, or 2 (VLIFNet's levels 2 and 3)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if len(values) not in (2, 4):
            parser.error(f"{option_string} takes 4 numbers (levels 1 to 4), or 2 for VLIFNet (its levels 2 "
                         f"and 3); got {len(values)}")
        setattr(namespace, self.dest, list(values))


def full_block_counts(counts: Sequence[int], released: Sequence[int]) -> list[int]:
    """4 block counts from 4, or from VLIFNet's 2 (levels 2 and 3; levels 1 and 4, which it does
    not read, keep the ``released`` values, as in checkpoints recognised from their keys)."""
    counts = list(counts)
    return counts if len(counts) != 2 else [released[0], *counts, released[3]]


_BLOCKS_HELP = ("{side} blocks per level: 4 numbers, levels 1 to 4 (the released tuple; neither network reads "
                "level 4). ESDNet reads levels 1 to 3. VLIFNet reads only levels 2 and 3 (its level 1 is built "
                "from SMUs, not counted blocks), so for VLIFNet 2 numbers are enough: the counts of levels 2 and 3")


def add_network_args(parser: argparse.ArgumentParser, from_checkpoint: bool = False) -> None:
    """``--arch`` and the constructor arguments.

    With ``from_checkpoint`` (test.py) every default is ``None``: the checkpoint decides and a
    given flag overrides it.
    """
    g = parser.add_argument_group(
        "network", "defaults: the network stored in the checkpoint; a flag given here overrides it"
        if from_checkpoint else None)
    none_or = (lambda value: None) if from_checkpoint else (lambda value: value)
    g.add_argument("--arch", choices=sorted(MODELS), default=none_or("vlifnet"), help="network")
    g.add_argument("--dim", type=positive_int, default=none_or(48), help="channels of the first level")
    g.add_argument("--en_num_blocks", type=positive_int, nargs="+", action=_BlockCounts, metavar="N",
                   default=none_or(list(EN_NUM_BLOCKS)), help=_BLOCKS_HELP.format(side="encoder"))
    g.add_argument("--de_num_blocks", type=positive_int, nargs="+", action=_BlockCounts, metavar="N",
                   default=none_or(list(DE_NUM_BLOCKS)), help=_BLOCKS_HELP.format(side="decoder"))
    g.add_argument("--T", type=positive_int, default=none_or(4), help="time steps")
    g.add_argument("--r", type=positive_int, default=none_or(2),
                   help="VLIFNet's VLIF patch factor: the neuron unrolls each r x r patch of its input into r*r "
                        "time steps (T*r*r in all); image sides are padded to a multiple of 4r")
    g.add_argument("--use_refinement", action=argparse.BooleanOptionalAction, default=none_or(False),
                   help="VLIFNet's 4 refinement SDEMs (the released Rain200L model has them)")
    g.add_argument("--neuron", choices=("vlif", "lif", "nilif"), default=none_or("vlif"),
                   help="VLIFNet's second SDEM neuron (ablation)")


def check_network_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``parser.error`` for 2 block counts with ESDNet (it reads levels 1 to 3)."""
    if getattr(args, "arch", None) == "esdnet":
        for flag in ("en_num_blocks", "de_num_blocks"):
            if len(getattr(args, flag, None) or ()) == 2:
                parser.error(f"--{flag} takes 4 numbers for ESDNet (it reads levels 1 to 3); the 2-number form "
                             "is VLIFNet's levels 2 and 3")


def add_inference_args(parser: argparse.ArgumentParser) -> None:
    """Tiled or whole-image inference (SPEC 7), and the device."""
    g = parser.add_argument_group("inference")
    g.add_argument("--crop_size", type=non_negative_int, default=80,
                   help="tile side of the released tiled inference; 0 = whole image at once")
    g.add_argument("--overlap_size", type=non_negative_int, default=8, help="overlap between tiles in pixels")
    g.add_argument("--tile_batch", type=non_negative_int, default=0,
                   help="tiles per network call; 0 = half the free memory on a GPU, one per 4 threads on a CPU")
    g.add_argument("--device", default="auto", help="'auto' (CUDA if present, else CPU), 'cpu', 'cuda:0', ...")
    g.add_argument("--neuron_impl", choices=NEURON_IMPLS, default="fast",
                   help="spiking-neuron kernels: 'fast' (identical spikes and outputs) or 'reference' "
                        "(the plain code the golden tests pin); docs/speed.md")


def network_overrides(args: argparse.Namespace) -> dict:
    """Constructor arguments given on the command line (``None`` = not given), for ``load_model``;
    2 block counts become VLIFNet's 4 (:func:`full_block_counts`)."""
    keys = ("dim", "en_num_blocks", "de_num_blocks", "T", "r", "use_refinement", "neuron")
    out = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    for key, released in (("en_num_blocks", EN_NUM_BLOCKS), ("de_num_blocks", DE_NUM_BLOCKS)):
        if key in out:
            out[key] = full_block_counts(out[key], released)
    if getattr(args, "arch", None) == "esdnet":
        for key in ("use_refinement", "neuron", "r"):
            out.pop(key, None)
    return out
