"""Pairing and checking for ``python -m data.prepare``: what belongs together, and is it sound.

Nothing here writes a file; ``data/prepare.py`` turns the checked pairs into output files.

- ``NamePattern`` and ``PRESETS``: rainy and clean names related by a template such as
  ``rain-{id}:norain-{id}`` (``{k}``: a rendering number, rainy side only), never by position.
- ``pair_folders`` / ``pair_side_by_side`` / ``inputs_only``: the pairs of one split; files that
  fit no pattern, have no partner or give clashing output names are reported, not guessed at.
- ``verify``: decodes every file and drops pairs that are unreadable, differ in size or (for a
  side-by-side image) have an odd width, so the halves would differ by a column.
- ``Report``: what one split's preparation found and did, in the sections of ``SECTIONS``;
  ``ACCEPTED_BY`` names the flag that accepts each kind of problem.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.io import IMAGE_EXTENSIONS, DataError, read_image

# name: (rainy pattern, clean pattern, regex of {id}); patterns match the stem unless they end
# in an extension. rain-norain-x: several renderings norain-12x1, norain-12x2 of norain-12.
PRESETS: dict[str, tuple[str, str, str]] = {
    "same-name": ("{id}", "{id}", ".+"),
    "rain-norain": ("rain-{id}", "norain-{id}", ".+"),
    "rain-norain-x": ("norain-{id}x{k}", "norain-{id}", r"\d+"),
    "in-gt": ("{id}_in", "{id}_GT", ".+"),
}
# report field: (heading, how to fix); the order is the report's
SECTIONS = {
    "unmatched": ("unmatched files", "check --rain_dir/--clean_dir/--pattern, or accept with --allow_unmatched"),
    "mismatched": ("size mismatches", "fix the files, or leave these pairs out with --skip_bad"),
    "unreadable": ("unreadable files", "download or export them again, or leave them out with --skip_bad"),
    "odd_width": ("odd widths", "the halves would differ by a column: crop them, or leave them out with --skip_bad"),
    "clashes": ("name clashes", "narrow --pattern/--id_regex, or keep one of the files"),
    "conflicts": ("different files already in the output", "choose another --out, or replace them with --overwrite"),
    "unpaired_output": ("output files without a partner", "left there by another run: move them away or choose another --out"),
    "ignored": ("ignored (not images)", ""),
}
ACCEPTED_BY = {"unmatched": "allow_unmatched", "mismatched": "skip_bad", "unreadable": "skip_bad",
               "odd_width": "skip_bad"}


class PrepareError(Exception):
    """Bad arguments or paths; the message names the problem and the fix."""


@dataclass(frozen=True)
class Pair:
    """One output pair: written as ``input/<name><ext>`` and ``target/<name><ext>``."""

    name: str
    rainy: Path
    clean: Path | None  # None: a real-rain set without targets
    half: str | None = None  # side-by-side: the half of ``rainy`` that holds the rainy image


@dataclass
class Report:
    """What one split's preparation found and did."""

    title: str
    pairs: int = 0
    written: int = 0
    unchanged: int = 0
    note: str = ""
    unmatched: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    odd_width: list[str] = field(default_factory=list)
    clashes: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    unpaired_output: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def blocking(self, accepted: set[str]) -> list[str]:
        """Non-empty problem sections not accepted by the flags named in ``accepted``."""
        return [k for k in SECTIONS if k != "ignored" and getattr(self, k) and ACCEPTED_BY.get(k) not in accepted]

    def render(self, accepted: set[str], limit: int | None = 20) -> str:
        """Human-readable report; at most ``limit`` entries per section (None: all)."""
        lines = [f"[{self.title}]", f"  pairs found: {self.pairs}; files written: {self.written}, "
                 f"already there: {self.unchanged}"]
        if self.note:
            lines.append(f"  note: {self.note}")
        for key, (heading, fix) in SECTIONS.items():
            items = getattr(self, key)
            if not items:
                continue
            lines.append(f"  {heading}: {len(items)}" + (f"  (fix: {fix})" if fix else ""))
            lines += [f"    {item}" for item in items[:limit]]
            if limit is not None and len(items) > limit:
                lines.append(f"    ... and {len(items) - limit} more (all of them with --report FILE)")
        bad = self.blocking(accepted)
        lines.append("  result: " + ("FAILED: " + ", ".join(SECTIONS[k][0] for k in bad) if bad else "OK"))
        return "\n".join(lines)


@dataclass(frozen=True)
class NamePattern:
    """``rainy`` and ``clean`` name templates sharing ``{id}``; ``rainy`` may hold ``{k}`` (digits)."""

    rainy: str
    clean: str
    id_regex: str = ".+"

    @classmethod
    def parse(cls, spec: str, id_regex: str = ".+") -> NamePattern:
        """``"RAINY:CLEAN"``, e.g. ``"rain-{id}.png:norain-{id}.png"``."""
        parts = spec.split(":")
        if len(parts) != 2:
            raise PrepareError(f"--pattern {spec!r}: expected RAINY:CLEAN, e.g. rain-{{id}}:norain-{{id}}")
        rainy, clean = parts
        for label, text, allowed in (("rainy", rainy, {"{id}", "{k}"}), ("clean", clean, {"{id}"})):
            fields = re.findall(r"\{[^}]*\}", text)
            if fields.count("{id}") != 1 or len(set(fields)) != len(fields) or not set(fields) <= allowed:
                raise PrepareError(f"--pattern {spec!r}: the {label} side must hold {{id}} once and may "
                                   f"hold only {sorted(allowed)} (each once); got {fields}")
        try:
            re.compile(id_regex)
        except re.error as exc:
            raise PrepareError(f"--id_regex {id_regex!r} is not a regular expression: {exc}") from exc
        return cls(rainy, clean, id_regex)

    def _regex(self, template: str) -> re.Pattern:
        """``template`` as a regular expression with the groups ``id`` and ``k``."""
        groups = {"{id}": f"(?P<id>{self.id_regex})", "{k}": r"(?P<k>\d+)"}
        return re.compile("".join(groups.get(p, re.escape(p)) for p in re.split(r"(\{id\}|\{k\})", template)))

    def match(self, side: str, path: Path) -> str | None:
        """The ``{id}`` of ``path`` under the rainy or clean template, or None if it does not fit."""
        template = self.rainy if side == "rainy" else self.clean
        subject = path.name if Path(template).suffix.lower() in IMAGE_EXTENSIONS else path.stem
        m = self._regex(template).fullmatch(subject)
        return m.group("id") if m else None

    def clean_name(self, ident: str) -> str:
        """The clean file name expected for ``ident``, for messages (``.*``: any image extension)."""
        name = self.clean.replace("{id}", ident)
        return name if Path(name).suffix.lower() in IMAGE_EXTENSIONS else name + ".*"


# ------------------------------------------------------------------ listing and pairing
def list_image_files(folder: Path, report: Report) -> list[Path]:
    """Image files in ``folder`` sorted by name; other visible files go to ``report.ignored``.

    Unlike :func:`data.io.list_images` (a folder a run reads) an empty result is no error and
    names are not checked for clashes: the report collects what preparation finds.
    """
    if not folder.is_dir():
        raise PrepareError(f"folder {folder} does not exist; check --src and the folder options")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    report.ignored += [str(p) for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
    return [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]


def _classify(files: list[Path], side: str, pattern: NamePattern, shared: bool,
              report: Report) -> dict[str, Path]:
    """Files fitting ``side``, keyed by id (clean) or by file name (rainy: renderings share an id).

    Misfits, files fitting both sides of a shared folder and duplicate clean ids are reported.
    """
    other = "clean" if side == "rainy" else "rainy"
    by_id: dict[str, Path] = {}
    for path in files:
        ident = pattern.match(side, path)
        if shared and pattern.match(other, path) is not None:
            if ident is not None and side == "rainy":  # reported once, by the rainy side
                report.clashes.append(f"{path}: fits both the rainy and the clean pattern")
            continue  # in a shared folder the other side handles it
        if ident is None:
            if not (shared and side == "clean"):
                report.unmatched.append(f"{path}: name does not fit the {side} pattern "
                                        f"{getattr(pattern, side)!r}")
        elif side == "clean" and ident in by_id:
            report.clashes.append(f"{path} and {by_id[ident].name} are both the clean image of id {ident!r}")
        else:
            by_id[path.name if side == "rainy" else ident] = path
    return by_id


def pair_folders(rain_dir: Path, clean_dir: Path, pattern: NamePattern, report: Report) -> list[Pair]:
    """Pairs of ``rain_dir`` x ``clean_dir`` (may be the same folder) related by ``pattern``."""
    shared = rain_dir.resolve() == clean_dir.resolve()
    rain_files = list_image_files(rain_dir, report)
    clean_files = rain_files if shared else list_image_files(clean_dir, report)
    rainy = _classify(rain_files, "rainy", pattern, shared, report)
    clean = _classify(clean_files, "clean", pattern, shared, report)
    pairs, used = [], set()
    for path in rainy.values():
        ident = pattern.match("rainy", path)
        if ident not in clean:
            report.unmatched.append(f"{path}: no clean image {pattern.clean_name(ident)} in {clean_dir}")
            continue
        used.add(ident)
        pairs.append(Pair(path.stem, path, clean[ident]))
    report.unmatched += [f"{p}: no rainy image in {rain_dir} uses it" for i, p in clean.items() if i not in used]
    return unique_names(pairs, report)


def unique_names(pairs: list[Pair], report: Report) -> list[Pair]:
    """Drop pairs whose output names collide (``a.png`` and ``a.jpg``), reporting them."""
    by_name: dict[str, list[Pair]] = {}
    for pair in pairs:
        by_name.setdefault(pair.name, []).append(pair)
    for name, group in by_name.items():
        if len(group) > 1:
            report.clashes.append(f"{', '.join(str(p.rainy) for p in group)} all give the output name {name!r}")
    return [group[0] for group in by_name.values() if len(group) == 1]


def inputs_only(rain_dir: Path, report: Report) -> list[Pair]:
    """Every image of ``rain_dir`` as a pair without a target (real rain)."""
    return unique_names([Pair(p.stem, p, None) for p in list_image_files(rain_dir, report)], report)


def pair_side_by_side(folder: Path, input_side: str, report: Report) -> list[Pair]:
    """Every image of ``folder`` as a pair of its halves; ``input_side`` ('left'/'right') is the rainy one."""
    pairs = [Pair(p.stem, p, p, input_side) for p in list_image_files(folder, report)]
    return unique_names(pairs, report)


# ------------------------------------------------------------------ checking
def decode(path: Path) -> np.ndarray | None:
    """RGB ``uint8`` pixels in OpenCV's BGR order (for ``cv2.imencode``), or None when
    :func:`data.io.read_image` cannot read the file; what the project's reader sees is what is
    checked and cut into halves."""
    try:
        return np.ascontiguousarray(read_image(path)[..., ::-1])  # RGB -> BGR
    except DataError:
        return None


def verify(pairs: list[Pair], report: Report) -> list[Pair]:
    """Decode every file; pairs with unreadable files, size mismatches or odd widths are dropped."""
    sizes: dict[Path, tuple[int, int] | None] = {}

    def size(path: Path) -> tuple[int, int] | None:
        if path not in sizes:
            arr = decode(path)
            sizes[path] = None if arr is None else (arr.shape[1], arr.shape[0])  # (W, H)
            if arr is None:
                report.unreadable.append(f"{path}: cannot be decoded (truncated, corrupt or not an image)")
        return sizes[path]

    good = []
    for pair in pairs:
        a = size(pair.rainy)
        b = size(pair.clean) if pair.clean is not None and pair.half is None else a
        if a is None or b is None:
            continue
        if pair.half is not None and a[0] % 2:
            report.odd_width.append(f"{pair.rainy}: width {a[0]} is odd, so it has no two equal halves")
        elif a != b:
            report.mismatched.append(f"{pair.rainy} is {a[0]}x{a[1]} but {pair.clean} is {b[0]}x{b[1]} (WxH)")
        else:
            good.append(pair)
    return good

