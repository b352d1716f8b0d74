"""Scores and reports: per-image PSNR/SSIM rows, their means, the table and the files.

Images are scored as uint8 (what the saved PNGs hold) with :mod:`utils.metrics` under each
requested convention (SPEC 7); the inference that produces them is :mod:`utils.inference`.
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from data.io import atomic_write, write_text_atomic
from utils.metrics import PROTOCOLS, psnr, ssim

__all__ = ["score", "summarise", "format_table", "write_csv", "write_json"]


def score(pred: np.ndarray, target: np.ndarray, protocols: Sequence[str] = PROTOCOLS) -> dict[str, float]:
    """``{"psnr_<protocol>": dB, "ssim_<protocol>": value}`` for uint8 RGB images."""
    out: dict[str, float] = {}
    for protocol in protocols:
        out[f"psnr_{protocol}"] = psnr(pred, target, protocol)
        out[f"ssim_{protocol}"] = ssim(pred, target, protocol)
    return out


def _mean(values: Iterable[float]) -> float:
    """Mean over finite values (identical images give PSNR inf; tiny ones SSIM nan)."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarise(rows: Sequence[Mapping[str, Any]], protocols: Sequence[str] = PROTOCOLS) -> dict[str, float]:
    """The mean row of per-image rows, in the shape of :func:`score`:
    ``{"psnr_<protocol>": mean dB, "ssim_<protocol>": mean value}`` for each protocol, each a mean
    over the finite values (``nan`` when there are none). Other keys (``name``) are ignored.

    This flat row is the one shape of metrics from :func:`score` to the table: :func:`format_table`,
    ``metrics.json``'s ``means``, the validation in train.py and the benchmark table all read it.
    """
    return {key: _mean(r[key] for r in rows) for p in protocols for key in (f"psnr_{p}", f"ssim_{p}")}


def format_table(summaries: Mapping[str, Mapping[str, float]], num_images: int) -> str:
    """Plain-text table: one line per (label, convention) from mean rows (:func:`summarise`), e.g.
    ``{"derained": row, "rainy input": row}``."""
    lines = [f"{'images':<14}{'convention':<11}{'PSNR (dB)':>10}{'SSIM':>9}   (mean of {num_images})"]
    for label, row in summaries.items():
        for protocol in (k[len("psnr_"):] for k in row if k.startswith("psnr_")):
            lines.append(f"{label:<14}{protocol:<11}{row[f'psnr_{protocol}']:>10.2f}{row[f'ssim_{protocol}']:>9.4f}")
    return "\n".join(lines)


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """Per-image rows (a ``name`` column, then the metric columns) as CSV."""
    with atomic_write(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["name"])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})


def write_json(path: str | os.PathLike, obj: Mapping[str, Any]) -> None:
    """Indented JSON; ``inf``/``nan`` are written as ``null`` (strict JSON has no such numbers)."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, Mapping):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    write_text_atomic(path, json.dumps(clean(obj), indent=2) + "\n")
