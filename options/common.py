"""Argument groups shared by ``train.py`` and ``test.py``: the network and the inference mode."""
from __future__ import annotations

import argparse

from models import MODELS
from models.neurons import NEURON_IMPLS


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


def add_network_args(parser: argparse.ArgumentParser, from_checkpoint: bool = False) -> None:
    """``--arch`` and the constructor arguments.

    With ``from_checkpoint`` (test.py) every default is ``None``: the checkpoint decides and a
    given flag overrides it.
    """
    g = parser.add_argument_group("network")
    none_or = (lambda value: None) if from_checkpoint else (lambda value: value)
    g.add_argument("--arch", choices=sorted(MODELS), default=none_or("vlifnet"),
                   help="network" + (" (default: read from the checkpoint)" if from_checkpoint else ""))
    g.add_argument("--dim", type=positive_int, default=none_or(48), help="channels of the first level")
    g.add_argument("--en_num_blocks", type=positive_int, nargs=4, default=none_or([4, 4, 8, 8]),
                   metavar="N", help="encoder blocks per level (VLIFNet uses indices 1 and 2)")
    g.add_argument("--de_num_blocks", type=positive_int, nargs=4, default=none_or([2, 2, 2, 2]),
                   metavar="N", help="decoder blocks per level (VLIFNet uses indices 1 and 2)")
    g.add_argument("--T", type=positive_int, default=none_or(4), help="time steps")
    g.add_argument("--use_refinement", action=argparse.BooleanOptionalAction, default=none_or(False),
                   help="VLIFNet's 4 refinement SDEMs (the released Rain200L model has them)")
    g.add_argument("--neuron", choices=("vlif", "lif", "nilif"), default=none_or("vlif"),
                   help="VLIFNet's second SDEM neuron (ablation)")


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
                   help="spiking-neuron kernels: 'fast' (default; identical spikes and outputs) or 'reference' "
                        "(the plain code the golden tests pin); docs/speed.md")


def network_overrides(args: argparse.Namespace) -> dict:
    """Constructor arguments given on the command line (``None`` = not given), for ``load_model``."""
    keys = ("dim", "en_num_blocks", "de_num_blocks", "T", "use_refinement", "neuron")
    out = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if getattr(args, "arch", None) == "esdnet":
        out.pop("use_refinement", None)
        out.pop("neuron", None)
    return out
