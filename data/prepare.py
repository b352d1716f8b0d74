"""Turn a downloaded deraining set into ``<out>/<name>/<split>/{input,target}`` (SPEC 8).

The layout of the download is stated with ``--layout``, never guessed:

- ``standard``: the authors' ``<name>/{train,test}/{input,target}``, pairs sharing a file name.
  Checked and reported; copied or linked when ``--src`` is not already ``<out>/<name>``.
- ``folders``: rainy and clean images in two folders (or one), their names related by a
  pattern such as ``rain-{id}:norain-{id}`` (``--pattern`` or a named ``--preset``).
- ``side-by-side``: each image holds the rainy and the clean half; ``--input_side`` says
  which half is the rainy one. Halves are written as lossless PNG.
- ``--synthetic synth-light|synth-heavy``: the offline stand-in sets of data/synthetic_rain.py.

A pair is written under the rainy file's stem in both ``input/`` and ``target/``, so a clean
image shared by several renderings (``norain-12x1``, ``norain-12x2`` -> ``norain-12``) is
copied or linked once per rainy image. Originals are only read. Everything is checked before
anything is written; every output file is written atomically (temporary file + rename) and an
existing different file is replaced only with ``--overwrite``. The run ends with a report
(pairs, unmatched files, size mismatches, unreadable files, ...).

Exit status: 0 all good; 1 problems found (listed; nothing written unless accepted with
``--allow_unmatched`` / ``--skip_bad``); 2 bad arguments, paths or a failed write.
"""
from __future__ import annotations

import argparse
import filecmp
import logging
import os
import re
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from data.pairing import (
    ACCEPTED_BY,
    PRESETS,
    SECTIONS,  # noqa: F401  (re-exported: data.prepare.SECTIONS predates data/pairing.py)
    NamePattern,
    Pair,
    PrepareError,
    Report,
    decode,
    inputs_only,
    list_image_files,
    pair_folders,
    pair_side_by_side,
    verify,
)
from data.io import write_text_atomic
from data.registry import DATASETS
from data.synthetic_rain import DEMO_SUPERSAMPLE, make_paired_dataset

log = logging.getLogger(__name__)

LAYOUTS = ("standard", "folders", "side-by-side")
MODES = ("copy", "symlink", "hardlink")
SPLITS = ("train", "test")
SYNTHETIC = {"synth-light": "light", "synth-heavy": "heavy"}
EXAMPLES = """examples (docs/benchmarks.md):
  python -m data.prepare --name Rain200H --src /media/Rain200H --layout standard
  python -m data.prepare --name Rain12 --src rain12 --layout folders --preset rain-norain
  python -m data.prepare --name Rain12 --src Rain12 --layout folders --preset in-gt --rain_dir . --clean_dir .
  python -m data.prepare --name Rain1200 --src DID/test --layout side-by-side --input_side left
  python -m data.prepare --name RW_Rain --src real --layout folders --no_target --rain_dir .
  python -m data.prepare --synthetic synth-heavy
"""


@dataclass(frozen=True)
class Job:
    """One output file: ``src`` copied/linked, or the ``half`` ('left'/'right') of ``src``."""

    dst: Path
    src: Path
    half: str | None = None


# ------------------------------------------------------------------ writing
def jobs_for(pairs: list[Pair], out_split: Path) -> list[Job]:
    """The output files of ``pairs`` under ``out_split``."""
    jobs = []
    for p in pairs:
        if p.half is not None:
            other = "right" if p.half == "left" else "left"
            jobs += [Job(out_split / "input" / f"{p.name}.png", p.rainy, p.half),
                     Job(out_split / "target" / f"{p.name}.png", p.rainy, other)]
            continue
        jobs.append(Job(out_split / "input" / f"{p.name}{p.rainy.suffix}", p.rainy))
        if p.clean is not None:
            jobs.append(Job(out_split / "target" / f"{p.name}{p.clean.suffix}", p.clean))
    return jobs


def _half_png(src: Path, half: str) -> bytes:
    """The ``half`` ('left'/'right') of ``src`` encoded as lossless PNG."""
    arr = decode(src)
    if arr is None:
        raise PrepareError(f"{src} could not be decoded a second time; check the disk")
    w = arr.shape[1] // 2
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr[:, :w] if half == "left" else arr[:, w:]))
    if not ok:
        raise PrepareError(f"PNG encoding of the {half} half of {src} failed")
    return buf.tobytes()


def is_same(job: Job) -> bool | None:
    """None: ``job.dst`` absent; True: it already holds the content; False: something else."""
    if not os.path.lexists(job.dst):
        return None
    if not job.dst.is_file():
        return False  # a folder or a dangling link
    if job.half is not None:
        return job.dst.read_bytes() == _half_png(job.src, job.half)
    return os.path.samefile(job.src, job.dst) or filecmp.cmp(job.src, job.dst, shallow=False)


def place(job: Job, mode: str) -> None:
    """Write one output file atomically: temporary name in the same folder, then rename."""
    job.dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = job.dst.with_name(f".{job.dst.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if job.half is not None:
            tmp.write_bytes(_half_png(job.src, job.half))
        elif mode == "copy":
            shutil.copyfile(job.src, tmp)
        elif mode == "symlink":
            os.symlink(job.src.resolve(), tmp)
        else:
            os.link(job.src, tmp)
        os.replace(tmp, job.dst)  # replaces a link itself, never the file it points to
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def check_output(out_split: Path, report: Report) -> None:
    """Every output stem must appear once in ``input/`` and once in ``target/`` (if present)."""
    folders = [out_split / s for s in ("input", "target") if (out_split / s).is_dir()]
    stems = [[p.stem for p in list_image_files(f, Report(""))] for f in folders]
    for folder, own in zip(folders, stems):
        report.unpaired_output += [f"{folder / s}.*: more than one file with this stem" for s in sorted(set(own))
                                   if own.count(s) > 1]
    if len(stems) == 2:
        for folder, own, other in ((folders[0], stems[0], stems[1]), (folders[1], stems[1], stems[0])):
            report.unpaired_output += [f"{folder / s}.*: no partner" for s in sorted(set(own) - set(other))]


def prepare_split(report: Report, pairs: list[Pair], out_split: Path, mode: str = "copy",
                  overwrite: bool = False, dry_run: bool = False, accepted: frozenset[str] = frozenset()) -> Report:
    """Check ``pairs``, then write them under ``out_split`` unless a problem blocks (see ``accepted``)."""
    good = verify(pairs, report)
    report.pairs = len(good)
    jobs = jobs_for(good, out_split)
    sources = {p.parent.resolve() for pair in pairs for p in (pair.rainy, pair.clean) if p is not None}
    states = {job: is_same(job) for job in jobs}
    for job, same in states.items():
        if job.dst.parent.resolve() in sources and not same:
            raise PrepareError(f"the output folder {job.dst.parent} is also a source folder: writing "
                               f"{job.dst.name} would change the originals; choose another --out")
    if not overwrite:
        report.conflicts += [f"{job.dst} differs from the new {job.src.name}{f' ({job.half} half)' if job.half else ''}"
                             for job, same in states.items() if same is False]
    if report.blocking(set(accepted)) or dry_run:
        report.note = "dry run: nothing written" if dry_run else "nothing written: fix or accept the problems below"
        return report
    for job, same in states.items():
        if same:
            report.unchanged += 1
        else:
            place(job, mode)
            report.written += 1
    check_output(out_split, report)
    return report


# ------------------------------------------------------------------ command line
def _standard_sources(src: Path, split: str | None, name: str, no_target: bool) -> list[tuple[str, Report, list[Pair]]]:
    """``(split, report, pairs)`` of the authors' ``<name>/{train,test}/{input,target}`` layout (or one split of it)."""
    if (src / "input").is_dir():
        if split is None:
            raise PrepareError(f"{src} holds input/ itself, so it is a single split: say which with --split train|test")
        found = [(split, src)]
    else:
        found = [(s, src / s) for s in SPLITS if (src / s).is_dir() and split in (None, s)]
    if not found:
        raise PrepareError(f"no {split or 'train or test'} folder in {src}: the authors' layout is "
                           "<name>/{train,test}/{input,target}; for other layouts use --layout folders or side-by-side")
    out = []
    for s, folder in found:
        report = Report(f"{name}/{s}: standard layout {folder}")
        pairs = (inputs_only(folder / "input", report) if no_target else
                 pair_folders(folder / "input", folder / "target", NamePattern("{id}", "{id}"), report))
        out.append((s, report, pairs))
    return out


def _sources(args: argparse.Namespace) -> list[tuple[str, Report, list[Pair]]]:
    """``(split, report, pairs)`` for every split the arguments describe."""
    if args.layout == "standard":
        return _standard_sources(args.src, args.split, args.name, args.no_target)
    split = args.split or "test"
    if args.layout == "side-by-side":
        report = Report(f"{args.name}/{split}: side-by-side {args.src}, rainy half on the {args.input_side}")
        return [(split, report, pair_side_by_side(args.src, args.input_side, report))]
    rain_dir, clean_dir = args.src / (args.rain_dir or "rain"), args.src / (args.clean_dir or "norain")
    if args.no_target:
        report = Report(f"{args.name}/{split}: rainy images only, {rain_dir}")
        return [(split, report, inputs_only(rain_dir, report))]
    if args.preset:
        rainy, clean, id_regex = PRESETS[args.preset]
        pattern = NamePattern.parse(f"{rainy}:{clean}", args.id_regex or id_regex)
    else:
        pattern = NamePattern.parse(args.pattern, args.id_regex or ".+")
    report = Report(f"{args.name}/{split}: folders {rain_dir} + {clean_dir}, pattern "
                    f"{pattern.rainy}:{pattern.clean}, id {pattern.id_regex}")
    return [(split, report, pair_folders(rain_dir, clean_dir, pattern, report))]


def _check_args(args: argparse.Namespace) -> None:
    """Refuse combinations that would make the tool guess."""
    if args.synthetic:
        if args.src or args.layout or args.no_target or args.mode != "copy":
            raise PrepareError("--synthetic builds the set itself: drop --src, --layout, --no_target and --mode")
        args.name = args.name or args.synthetic
    elif args.src is None or args.layout is None or args.name is None:
        raise PrepareError("--name, --src and --layout are required (or --synthetic synth-light|synth-heavy)")
    if Path(args.name).name != args.name or args.name in ("", ".", ".."):
        raise PrepareError(f"--name {args.name!r} must be a plain folder name such as Rain200H")
    for flag, layout in (("rain_dir", "folders"), ("clean_dir", "folders"), ("pattern", "folders"),
                         ("preset", "folders"), ("id_regex", "folders"), ("input_side", "side-by-side")):
        if getattr(args, flag) is not None and args.layout != layout:
            raise PrepareError(f"--{flag} applies to --layout {layout} only")
    if args.layout == "folders" and not args.no_target and (args.pattern is None) == (args.preset is None):
        raise PrepareError("--layout folders needs exactly one of --pattern RAINY:CLEAN or --preset "
                           f"({', '.join(PRESETS)}); names are never paired by guesswork")
    if args.layout == "side-by-side" and (args.input_side is None or args.mode != "copy" or args.no_target):
        raise PrepareError("--layout side-by-side needs --input_side left|right, writes new PNG halves "
                           "(--mode copy only) and always has a clean half (no --no_target)")


def _synthetic_sources(args: argparse.Namespace, tmp: Path) -> list[tuple[str, Report, list[Pair]]]:
    """Render the synthetic set under ``tmp``, then pair it as a standard layout. At a given
    size the rain is rendered at twice that size and the pair scaled down, as for the demo set (whose
    test split synth-heavy then equals); at the photos' own sizes it is rendered as is."""
    preset = SYNTHETIC[args.synthetic]
    supersample = DEMO_SUPERSAMPLE if args.synthetic_size is not None else 1
    out = []
    for split in ("test", "train") if args.synthetic_train else ("test",):
        make_paired_dataset(tmp / split, split, preset, args.seed, args.synthetic_size, supersample)
        for _, report, pairs in _standard_sources(tmp / split, split, args.name, False):
            report.title = f"{args.name}/{split}: synthetic, preset {preset!r}, seed {args.seed}"
            out.append((split, report, pairs))
    return out


def prepare(args: argparse.Namespace) -> list[Report]:
    """Run the preparation the parsed arguments describe; one report per split."""
    _check_args(args)
    if args.name not in DATASETS:
        log.warning("%s is not a benchmark name (%s): test.py --benchmark will not look for it",
                    args.name, ", ".join(DATASETS))
    accepted = frozenset(k for k in ACCEPTED_BY.values() if getattr(args, k))
    run = dict(mode=args.mode, overwrite=args.overwrite, dry_run=args.dry_run, accepted=accepted)
    root = args.out / args.name
    if not args.synthetic:
        return [prepare_split(r, p, root / s, **run) for s, r, p in _sources(args)]
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".synthetic-", dir=args.out) as tmp:
        return [prepare_split(r, p, root / s, **run) for s, r, p in _synthetic_sources(args, Path(tmp))]


def _size(text: str) -> tuple[int, int] | None:
    """``--synthetic_size``: ``HxW`` -> ``(H, W)``; ``full`` -> None (the photos' own sizes)."""
    if text == "full":
        return None
    m = re.fullmatch(r"(\d+)x(\d+)", text)
    if not m or min(int(m[1]), int(m[2])) < 1:
        raise argparse.ArgumentTypeError(f"expected HxW such as 128x160, or 'full'; got {text!r}")
    return int(m[1]), int(m[2])


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m data.prepare`` parser."""
    p = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what and where")
    g.add_argument("--name", default=None, help="dataset name, the output folder <out>/<name> (e.g. Rain200H)")
    g.add_argument("--out", type=Path, default=Path("datasets"), help="root of the prepared datasets (default: datasets)")
    g.add_argument("--src", type=Path, default=None, help="the downloaded files (read only)")
    g.add_argument("--layout", choices=LAYOUTS, default=None, help="layout of --src (stated, never guessed)")
    g.add_argument("--split", choices=SPLITS, default=None,
                   help="split to write (default: standard -> every split in --src; other layouts -> test)")
    g.add_argument("--no_target", action="store_true",
                   help="real rain without clean images: prepare input/ only")
    f = p.add_argument_group("--layout folders")
    f.add_argument("--rain_dir", default=None, help="rainy folder, relative to --src (default: rain)")
    f.add_argument("--clean_dir", default=None, help="clean folder, relative to --src; may equal --rain_dir (default: norain)")
    f.add_argument("--pattern", default=None, help="RAINY:CLEAN name templates with {id} (and {k}, digits, "
                   "rainy only), e.g. 'rain-{id}:norain-{id}'; stems unless an extension is given")
    f.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="named pattern: " + "; ".join(f"{k} = {r}:{c}" for k, (r, c, _) in PRESETS.items()))
    f.add_argument("--id_regex", default=None, help="regular expression {id} must match (default: .+, or the preset's)")
    s = p.add_argument_group("--layout side-by-side")
    s.add_argument("--input_side", choices=("left", "right"), default=None, help="the half holding the rainy image")
    w = p.add_argument_group("writing and checking")
    w.add_argument("--mode", choices=MODES, default="copy", help="copy (default), or link to, the originals")
    w.add_argument("--overwrite", action="store_true", help="replace different files already in the output")
    w.add_argument("--allow_unmatched", action="store_true", help="accept (and list) files without a partner")
    w.add_argument("--skip_bad", action="store_true",
                   help="leave out (and list) unreadable files, size mismatches and odd widths")
    w.add_argument("--dry_run", action="store_true", help="check and report only")
    w.add_argument("--report", type=Path, default=None, help="also write the full report to this file")
    y = p.add_argument_group("synthetic stand-in sets")
    y.add_argument("--synthetic", choices=sorted(SYNTHETIC), default=None,
                   help="build a synthetic set instead of reading --src (name defaults to it)")
    y.add_argument("--synthetic_size", type=_size, default=(128, 160), metavar="HxW",
                   help="image size (default: 128x160, rain rendered at twice that size and scaled down as in "
                        "the demo set; 'full': the photos' own sizes, rain rendered as is)")
    y.add_argument("--synthetic_train", action=argparse.BooleanOptionalAction, default=True,
                   help="also build the train split of 11 photos (default: yes)")
    y.add_argument("--seed", type=int, default=0, help="rain seed of the synthetic set (default: 0)")
    p.add_argument("--log_level", choices=("DEBUG", "INFO", "WARNING"), default="INFO", help="logging level (default: INFO)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Prepare, print the report; 0 if all is well, 1 if problems were found, 2 on usage errors."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(levelname)s %(name)s: %(message)s", force=True)
    try:
        reports = prepare(args)
    except PrepareError as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:
        log.error("writing failed: %s. Originals are untouched and every file written is complete; fix the "
                  "cause (space, permissions; --mode hardlink needs one file system) and run again", exc)
        return 2
    accepted = {k for k in ACCEPTED_BY.values() if getattr(args, k)}
    print("\n".join(r.render(accepted) for r in reports))
    if args.report is not None:
        text = "\n".join(r.render(accepted, limit=None) for r in reports) + "\n"
        write_text_atomic(args.report, text)
    return 1 if any(r.blocking(accepted) for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
