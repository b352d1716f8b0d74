"""The deraining benchmarks (SPEC 8): which datasets exist, where they are, which weights score them.

:data:`DATASETS` names the five benchmarks and the two synthetic stand-in sets, the released
weights each is evaluated with, and whether clean targets exist. :func:`find_datasets` finds
the sets prepared under ``<data_root>/<name>/test/{input,target}`` (``python -m data.prepare``);
:func:`resolve_weights` finds the weights file of each.
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from data.io import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained_models"  # default --weights_dir
DEMO_WEIGHTS = PRETRAINED_DIR / "vlifnet_demo.pth"  # the committed demo model (pretrained_models/README.md)


class BenchmarkError(ValueError):
    """Bad benchmark arguments; the message names the problem and the fix."""


@dataclass(frozen=True)
class BenchmarkSet:
    """One row of the table: which weights evaluate it and whether it has clean targets."""

    name: str
    weights: str  # file name looked up in --weights_dir; overridable with --weights_map
    has_target: bool
    note: str  # why these weights
    synthetic: bool = False  # a stand-in set: when absent it is not listed as skipped


# Table order. Rain12 and RW_Rain have no released model of their own (SPEC 8).
DATASETS: dict[str, BenchmarkSet] = {s.name: s for s in (
    BenchmarkSet("Rain200L", "Rain200L.pth", True, "released Rain200L model (with refinement)"),
    BenchmarkSet("Rain200H", "Rain200H.pth", True, "released Rain200H model"),
    BenchmarkSet("Rain1200", "Rain1200.pth", True, "released Rain1200 (DID-Data) model"),
    BenchmarkSet("Rain12", "Rain200L.pth", True,
                 "no Rain12 model: its 12 pairs are light synthetic rain, so the light-rain model, "
                 "as the deraining literature usually evaluates Rain12"),
    BenchmarkSet("RW_Rain", "Rain200H.pth", False,
                 "real rain, no targets (outputs only): the heavy-rain model, which removes the "
                 "most streaks; a choice of this project (overridable)"),
    BenchmarkSet("synth-light", DEMO_WEIGHTS.name, True, "synthetic stand-in: the demo model", synthetic=True),
    BenchmarkSet("synth-heavy", DEMO_WEIGHTS.name, True, "synthetic stand-in: the demo model", synthetic=True),
)}


@dataclass(frozen=True)
class FoundSet:
    """A dataset present under the data root; ``target_dir`` None: outputs only."""

    info: BenchmarkSet
    input_dir: Path
    target_dir: Path | None


def dataset_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith("."))


def _dataset_dir(root: Path, name: str) -> Path | None:
    """``root/name``; a folder differing only in case is accepted (and logged)."""
    if (root / name).is_dir():
        return root / name
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and folder.name.lower() == name.lower():
            log.info("%s: using %s (the name differs in case)", name, folder)
            return folder
    return None


def check_names(names: Sequence[str] | None) -> list[str]:
    unknown = [n for n in names or () if n not in DATASETS]
    if unknown:
        raise BenchmarkError(f"unknown dataset(s) {', '.join(unknown)}; known: {', '.join(DATASETS)}")
    return list(names) if names else list(DATASETS)


def find_datasets(data_root: str | os.PathLike, names: Sequence[str] | None = None
                  ) -> tuple[list[FoundSet], list[tuple[str, str]]]:
    """The registry's sets present under ``data_root`` (in table order) and ``(name, reason)`` for the rest.

    ``names`` None: the five benchmarks and whichever synthetic sets are present (absent
    synthetic sets are not listed as skipped).
    """
    root = Path(data_root)
    if not root.is_dir():
        raise BenchmarkError(f"data root {root} does not exist; pass the folder holding <name>/test/input "
                             "(see python -m data.prepare --help)")
    found, skipped = [], []
    for name in check_names(names):
        info, folder = DATASETS[name], _dataset_dir(root, name)
        test = folder / "test" if folder is not None else root / name / "test"
        how = f"--synthetic {name}" if info.synthetic else f"--name {name} --src ... --layout ..."
        hint = f"prepare it with python -m data.prepare {how} --out {root}"
        if not (test / "input").is_dir():
            if not (info.synthetic and names is None):
                skipped.append((name, f"{test / 'input'} not found; {hint}"))
        elif not dataset_images(test / "input"):
            skipped.append((name, f"no images in {test / 'input'}; {hint}"))
        elif (test / "target").is_dir():
            found.append(FoundSet(info, test / "input", test / "target"))
        elif info.has_target:
            skipped.append((name, f"{test / 'target'} not found but {name} is scored against targets; {hint}"))
        else:
            found.append(FoundSet(info, test / "input", None))
    return found, skipped


def parse_weights_map(text: str) -> dict[str, str]:
    """argparse type of ``--weights_map``: ``"Rain12=Rain200H.pth,RW_Rain=/abs/other.pth"``."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, weights = (s.strip() for s in item.partition("="))
        if not sep or not name or not weights:
            raise argparse.ArgumentTypeError(f"--weights_map item {item!r}: expected DATASET=FILE")
        if name not in DATASETS:
            raise argparse.ArgumentTypeError(f"--weights_map: unknown dataset {name!r}; known: {', '.join(DATASETS)}")
        if name in out:
            raise argparse.ArgumentTypeError(f"--weights_map names {name} twice")
        out[name] = weights
    return out


def resolve_weights(dataset: str, weights_dir: str | os.PathLike | None,
                    overrides: Mapping[str, str] | None = None) -> tuple[Path | None, str]:
    """``(path, why)``: the weights file for ``dataset``, or ``(None, reason)`` when it is missing.

    An override (``--weights_map``) wins over the registry; a relative name is looked up in
    ``weights_dir``, an absolute path is used as it is.
    """
    info = DATASETS[check_names([dataset])[0]]
    given = (overrides or {}).get(dataset)
    name, why = (given, "--weights_map") if given else (info.weights, info.note)
    path = Path(name)
    if not path.is_absolute():
        if weights_dir is None:
            return None, f"no --weights_dir to find {name} in ({why})"
        path = Path(weights_dir) / path
    if not path.is_file():
        return None, (f"weights {path} not found ({why}); put the file there or map another: "
                      f"--weights_map {dataset}=FILE")
    return path, why
