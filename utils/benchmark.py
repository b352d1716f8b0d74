"""``test.py --benchmark``: evaluate every prepared deraining benchmark, write the paper's table (SPEC 7, 8).

The datasets and their weights are in :mod:`data.registry`. :func:`run_benchmark` loops
over the sets found under ``<data_root>/<name>/test/{input,target}`` (prepared with
``python -m data.prepare``), calls an injected evaluation function for each, and writes
``results.md`` (the paper's table, every protocol labelled), ``results.csv`` and
``results.json``. Missing sets and missing weights are skipped with a logged reason that also
appears in ``results.md``; nothing here loads a network, so the loop is testable without one.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from data.io import write_text_atomic
from data.registry import DATASETS, FoundSet, check_names, dataset_images, find_datasets, resolve_weights
from utils.metrics import PROTOCOLS

log = logging.getLogger(__name__)

EvaluateFn = Callable[[Path, "Path | None", Path, Path], Mapping[str, float]]


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    value = float(value)
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _metric_columns(protocols: Sequence[str]) -> list[tuple[str, str, int]]:
    """``(key, header, digits)`` per column: PSNR then SSIM for each protocol."""
    return [c for p in protocols for c in ((f"psnr_{p}", f"PSNR {p}", 2), (f"ssim_{p}", f"SSIM {p}", 4))]


def _dataset_table(rows: Sequence[Mapping[str, Any]], protocols: Sequence[str]) -> list[str]:
    cols = _metric_columns(protocols)
    lines = ["| Dataset | Weights | Images | " + " | ".join(h for _, h, _ in cols) + " |",
             "|---|---|--:|" + "--:|" * len(cols)]
    for r in rows:
        scored = r.get("scored", True)
        cells = [_fmt(r["metrics"].get(k), d) if scored else "-" for k, _, d in cols]
        lines.append(f"| {r['dataset']} | {r['weights']} | {r.get('images', '')} | " + " | ".join(cells) + " |")
    return lines


def _paper_table(rows: Sequence[Mapping[str, Any]], protocols: Sequence[str]) -> list[str]:
    """Datasets as column pairs, one row per protocol: the layout of the paper's Table 1."""
    scored = [r for r in rows if r.get("scored", True)]
    if not scored:
        return []
    lines = ["| Protocol | " + " | ".join(f"{r['dataset']} PSNR | {r['dataset']} SSIM" for r in scored) + " |",
             "|---|" + "--:|--:|" * len(scored)]
    for p in protocols:
        cells = [f"{_fmt(r['metrics'].get(f'psnr_{p}'), 2)} | {_fmt(r['metrics'].get(f'ssim_{p}'), 4)}" for r in scored]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return lines


PROTOCOL_NOTES = {
    "matlab-y": "Y of MATLAB rgb2ycbcr (rounded), no crop; the deraining papers' MATLAB script",
    "esdnet-y": "the same Y unrounded, 4-pixel border crop; the released ESDNet evaluation script",
    "rgb": "scikit-image PSNR/SSIM (win 7) on RGB in [0, 1]; what the released VLIF test script printed",
}


def results_markdown(rows: Sequence[Mapping[str, Any]], protocols: Sequence[str] = PROTOCOLS,
                     skipped: Sequence[tuple[str, str]] = ()) -> str:
    """The text of ``results.md`` (see :func:`write_results_md`)."""
    out = ["# Benchmark results", "",
           "Mean over each test set of the per-image PSNR (dB) and SSIM; every column names its protocol.", ""]
    out += _dataset_table(rows, protocols)
    paper = _paper_table(rows, protocols)
    if paper:
        out += ["", "Paper layout (datasets as columns):", ""] + paper
    out += ["", "Protocols (docs/benchmarks.md):"] + [f"- `{p}`: {PROTOCOL_NOTES.get(p, '')}" for p in protocols]
    out += ["", "Weights:"] + [f"- {r['dataset']}: {r['weights']} - {r['why']}" for r in rows]
    if any(not r.get("scored", True) for r in rows):
        out.append("- '-': no clean targets (real rain): derained outputs only")
    if skipped:
        out += ["", "Skipped:"] + [f"- {name}: {reason}" for name, reason in skipped]
    return "\n".join(out) + "\n"


def write_results_md(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]],
                     protocols: Sequence[str] = PROTOCOLS, skipped: Sequence[tuple[str, str]] = ()) -> Path:
    """Write the paper-style table atomically.

    ``rows``: ``{"dataset", "weights" (shown name), "why", "images", "scored" (False: no targets),
    "metrics": {"psnr_<protocol>": dB, "ssim_<protocol>": value}}``, in table order. PSNR is
    shown with 2 decimals, SSIM with 4; a missing or nan value as ``n/a``.
    """
    return write_text_atomic(Path(path), results_markdown(rows, protocols, skipped))


def write_results_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]],
                      protocols: Sequence[str] = PROTOCOLS) -> Path:
    """One line per dataset, full precision, columns ``dataset,weights,images,psnr_<p>,ssim_<p>,...``."""
    keys = [k for k, _, _ in _metric_columns(protocols)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["dataset", "weights", "images"] + keys)
    for r in rows:
        values = [repr(float(r["metrics"][k])) if r.get("scored", True) and k in r["metrics"] else "" for k in keys]
        writer.writerow([r["dataset"], r["weights_path"], r.get("images", "")] + values)
    return write_text_atomic(Path(path), buf.getvalue())


def _finite(value: Any) -> Any:
    """JSON-safe copy: inf/nan become null (strict JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _evaluate(found: FoundSet, weights: Path, why: str, out_dir: Path, evaluate_fn: EvaluateFn) -> dict[str, Any]:
    name = found.info.name
    log.info("%s: %s with %s (%s) -> %s", name, found.input_dir, weights.name, why, out_dir / name)
    metrics = {k: float(v) for k, v in evaluate_fn(found.input_dir, found.target_dir, weights, out_dir / name).items()}
    return {"dataset": name, "weights": weights.name, "weights_path": str(weights), "why": why,
            "images": len(dataset_images(found.input_dir)), "scored": found.target_dir is not None, "metrics": metrics}


def run_benchmark(data_root: str | os.PathLike, weights_dir: str | os.PathLike | None, out_dir: str | os.PathLike,
                  evaluate_fn: EvaluateFn, weights_map: Mapping[str, str] | None = None,
                  names: Sequence[str] | None = None, protocols: Sequence[str] = PROTOCOLS) -> dict[str, Any]:
    """Evaluate every present dataset with its weights; write results.{md,csv,json} in ``out_dir``.

    ``evaluate_fn(input_dir, target_dir_or_None, weights_path, save_dir)`` derains one folder,
    writes its outputs (and per-image metrics) in ``save_dir = out_dir/<name>`` and returns the
    mean metrics as one flat row ``{"psnr_<protocol>": dB, "ssim_<protocol>": value}``
    (:func:`utils.evaluation.summarise`; empty without targets).
    A dataset whose evaluation raises is logged with its traceback and listed as failed; the
    others still run. Returns ``{"rows", "skipped", "failed", "results_md", "results_csv",
    "results_json"}``; callers should exit non-zero when ``failed`` is not empty.
    """
    out_dir = Path(out_dir)
    check_names(list(weights_map or {}))
    present, skipped = find_datasets(data_root, names)
    for name, reason in skipped:
        log.warning("skipping %s: %s", name, reason)
    rows, failed = [], []
    for found in present:
        weights, why = resolve_weights(found.info.name, weights_dir, weights_map)
        if weights is None:
            log.warning("skipping %s: %s", found.info.name, why)
            skipped.append((found.info.name, why))
            continue
        try:
            rows.append(_evaluate(found, weights, why, out_dir, evaluate_fn))
        except Exception as exc:  # one broken set must not lose the others' results
            log.exception("%s: evaluation failed", found.info.name)
            failed.append((found.info.name, f"evaluation failed: {type(exc).__name__}: {exc}"))
    order = list(DATASETS)
    skipped_all = sorted(skipped + failed, key=lambda item: order.index(item[0]))
    result = {"rows": rows, "skipped": skipped, "failed": failed, "protocols": list(protocols),
              "results_md": write_results_md(out_dir / "results.md", rows, protocols, skipped_all),
              "results_csv": write_results_csv(out_dir / "results.csv", rows, protocols)}
    result["results_json"] = out_dir / "results.json"
    write_text_atomic(result["results_json"], json.dumps(
        _finite({k: v for k, v in result.items() if k in ("rows", "skipped", "failed", "protocols")}), indent=1) + "\n")
    return result
