"""utils.benchmark: the registry, skip paths, and the results tables with an injected evaluation."""
from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.prepare import main as prepare_main
from data.registry import DATASETS, BenchmarkError, find_datasets, parse_weights_map, resolve_weights
from utils.benchmark import run_benchmark, write_results_md
from utils.evaluation import score
from utils.metrics import PROTOCOLS

HEADER = ("| Dataset | Weights | Images | PSNR matlab-y | SSIM matlab-y | PSNR esdnet-y | SSIM esdnet-y "
          "| PSNR rgb | SSIM rgb |")


def _img(seed: int, h: int = 16, w: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _dataset(root: Path, name: str, n: int = 2, target: bool = True) -> Path:
    for i in range(n):
        for sub in ("input", "target") if target else ("input",):
            path = root / name / "test" / sub / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), _img(i))
    return root / name


def _weights(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"not a real checkpoint: the evaluation is injected")
    return folder


def _table_rows(md: str) -> dict[str, list[str]]:
    """``{dataset: cells}`` of the first table in results.md."""
    lines = md.split("\n")
    start = lines.index(HEADER) + 2
    rows = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


class FakeEvaluate:
    """Returns distinct known numbers per dataset and records its calls."""

    def __init__(self, fail: str | None = None):
        self.calls: list[tuple] = []
        self.fail = fail

    def __call__(self, input_dir, target_dir, weights, save_dir):
        self.calls.append((input_dir, target_dir, weights, save_dir))
        name = input_dir.parent.parent.name
        if name == self.fail:
            raise RuntimeError("boom")
        if target_dir is None:
            return {}
        base = 30.0 + list(DATASETS).index(name)
        return {f"{m}_{p}": (base + j + 0.123456 if m == "psnr" else 0.9 + j / 100 + 0.000049)
                for j, p in enumerate(PROTOCOLS) for m in ("psnr", "ssim")}


# ------------------------------------------------------------------ registry
def test_registry_names_weights_and_targets():
    assert list(DATASETS)[:5] == ["Rain200L", "Rain200H", "Rain1200", "Rain12", "RW_Rain"]
    assert {"synth-light", "synth-heavy"} <= set(DATASETS)
    assert [DATASETS[n].weights for n in ("Rain200L", "Rain200H", "Rain1200")] == \
           ["Rain200L.pth", "Rain200H.pth", "Rain1200.pth"]
    assert DATASETS["Rain12"].weights == "Rain200L.pth" and DATASETS["RW_Rain"].weights == "Rain200H.pth"
    assert not DATASETS["RW_Rain"].has_target
    assert all(DATASETS[n].has_target for n in DATASETS if n != "RW_Rain")
    assert all(info.note for info in DATASETS.values())


def test_parse_weights_map():
    assert parse_weights_map("Rain12=Rain200H.pth, RW_Rain=/w/x.pth") == {"Rain12": "Rain200H.pth",
                                                                          "RW_Rain": "/w/x.pth"}
    for bad in ("Rain12", "Rain12=", "Rain13=a.pth", "Rain12=a.pth,Rain12=b.pth"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_weights_map(bad)


def test_resolve_weights_default_override_and_missing(tmp_path):
    wdir = _weights(tmp_path / "w", "Rain200L.pth", "Rain200H.pth")
    assert resolve_weights("Rain12", wdir) == (wdir / "Rain200L.pth", DATASETS["Rain12"].note)
    assert resolve_weights("Rain12", wdir, {"Rain12": "Rain200H.pth"}) == (wdir / "Rain200H.pth", "--weights_map")
    other = _weights(tmp_path / "elsewhere", "mine.pth") / "mine.pth"
    assert resolve_weights("Rain1200", None, {"Rain1200": str(other)})[0] == other
    path, why = resolve_weights("Rain1200", wdir)
    assert path is None and str(wdir / "Rain1200.pth") in why and "--weights_map Rain1200=FILE" in why
    path, why = resolve_weights("Rain200H", None)
    assert path is None and "--weights_dir" in why
    with pytest.raises(BenchmarkError):
        resolve_weights("Rain100H", wdir)


def test_find_datasets_skips_with_reasons(tmp_path):
    root = tmp_path / "data"
    _dataset(root, "Rain200H")
    _dataset(root, "RW_Rain", target=False)  # real rain: outputs only
    _dataset(root, "Rain1200", target=False)  # a synthetic set without targets is broken
    _dataset(root, "rain12")  # differs in case only: accepted
    found, skipped = find_datasets(root)
    assert [(f.info.name, f.target_dir is None) for f in found] == [("Rain200H", False), ("Rain12", False),
                                                                   ("RW_Rain", True)]
    reasons = dict(skipped)
    assert set(reasons) == {"Rain200L", "Rain1200"}  # absent synthetic sets are not noise in a real run
    assert "Rain200L/test/input not found" in reasons["Rain200L"] and "data.prepare --name Rain200L" in reasons["Rain200L"]
    assert "Rain1200/test/target not found" in reasons["Rain1200"]
    _, skipped = find_datasets(root, ["synth-heavy"])  # asked for by name: its absence is reported
    assert "data.prepare --synthetic synth-heavy" in dict(skipped)["synth-heavy"]
    with pytest.raises(BenchmarkError):
        find_datasets(tmp_path / "missing")
    with pytest.raises(BenchmarkError):
        find_datasets(root, ["Rain100L"])


# ------------------------------------------------------------------ run_benchmark and the tables
def test_run_benchmark_tables_and_skips(tmp_path):
    root = tmp_path / "data"
    for name in ("Rain200L", "Rain200H", "Rain12"):
        _dataset(root, name)
    _dataset(root, "RW_Rain", n=3, target=False)
    wdir = _weights(tmp_path / "w", "Rain200L.pth", "Rain200H.pth")  # Rain12 falls back to Rain200L.pth
    fake = FakeEvaluate()
    out = tmp_path / "results"
    res = run_benchmark(root, wdir, out, fake, weights_map={"Rain200H": "missing.pth"})
    assert [r["dataset"] for r in res["rows"]] == ["Rain200L", "Rain12", "RW_Rain"]
    assert [c[1] is None for c in fake.calls] == [False, False, True]  # RW_Rain gets no target folder
    assert fake.calls[1][2] == wdir / "Rain200L.pth" and fake.calls[1][3] == out / "Rain12"
    skipped = dict(res["skipped"])
    assert "missing.pth not found (--weights_map)" in skipped["Rain200H"]
    assert "Rain1200/test/input not found" in skipped["Rain1200"] and res["failed"] == []

    md = res["results_md"].read_text()
    rows = _table_rows(md)
    assert list(rows) == ["Rain200L", "Rain12", "RW_Rain"]
    assert rows["Rain200L"] == ["Rain200L.pth", "2", "30.12", "0.9000", "31.12", "0.9100", "32.12", "0.9200"]
    assert rows["Rain12"][:4] == ["Rain200L.pth", "2", "33.12", "0.9000"]
    assert rows["RW_Rain"] == ["Rain200H.pth", "3"] + ["-"] * 6
    assert "| matlab-y | 30.12 | 0.9000 | 33.12 | 0.9000 |" in md  # paper layout: datasets as columns
    assert "- Rain200H: weights" in md and "- Rain1200:" in md  # skipped, with reasons
    for p in PROTOCOLS:
        assert f"- `{p}`:" in md

    saved = json.loads(res["results_json"].read_text())
    assert saved["rows"][0]["metrics"]["psnr_matlab-y"] == 30.123456  # full precision
    with open(res["results_csv"]) as fh:
        table = list(csv.DictReader(fh))
    assert [r["dataset"] for r in table] == ["Rain200L", "Rain12", "RW_Rain"]
    assert float(table[1]["ssim_rgb"]) == pytest.approx(0.920049) and table[2]["psnr_rgb"] == ""


def test_failed_evaluation_is_listed_and_others_still_run(tmp_path):
    root = tmp_path / "data"
    _dataset(root, "Rain200L")
    _dataset(root, "Rain200H")
    wdir = _weights(tmp_path / "w", "Rain200L.pth", "Rain200H.pth")
    res = run_benchmark(root, wdir, tmp_path / "out", FakeEvaluate(fail="Rain200L"))
    assert [r["dataset"] for r in res["rows"]] == ["Rain200H"]
    assert res["failed"] == [("Rain200L", "evaluation failed: RuntimeError: boom")]
    assert "- Rain200L: evaluation failed: RuntimeError: boom" in res["results_md"].read_text()


def test_non_finite_metrics(tmp_path):
    root = tmp_path / "data"
    _dataset(root, "Rain200H")
    wdir = _weights(tmp_path / "w", "Rain200H.pth")

    def flat(input_dir, target_dir, weights, save_dir):  # a mean row, the shape of utils.evaluation.summarise
        return {"psnr_matlab-y": float("inf"), "ssim_matlab-y": 1.0, "psnr_rgb": 40.0, "ssim_rgb": 0.99}

    res = run_benchmark(root, wdir, tmp_path / "out", flat, names=["Rain200H"], protocols=["matlab-y", "rgb"])
    assert res["rows"][0]["metrics"] == {"psnr_matlab-y": float("inf"), "ssim_matlab-y": 1.0,
                                         "psnr_rgb": 40.0, "ssim_rgb": 0.99}
    assert "| Rain200H | Rain200H.pth | 2 | inf | 1.0000 | 40.00 | 0.9900 |" in res["results_md"].read_text()
    saved = json.loads(res["results_json"].read_text())  # strict JSON: inf written as null
    assert saved["rows"][0]["metrics"]["psnr_matlab-y"] is None


def test_write_results_md_protocol_subset_and_nan(tmp_path):
    rows = [{"dataset": "Rain200H", "weights": "Rain200H.pth", "why": "x", "images": 1,
             "metrics": {"psnr_rgb": 29.996, "ssim_rgb": float("nan")}}]
    md = write_results_md(tmp_path / "r.md", rows, protocols=["rgb"]).read_text()
    assert "| Dataset | Weights | Images | PSNR rgb | SSIM rgb |" in md
    assert "| Rain200H | Rain200H.pth | 1 | 30.00 | n/a |" in md and "matlab-y" not in md
    assert not list(tmp_path.glob(".*"))  # atomic write leaves no temporary file


# ------------------------------------------------------------------ prepare -> benchmark, end to end
def _identity_evaluate(input_dir: Path, target_dir: Path | None, weights: Path, save_dir: Path) -> dict:
    """The rainy input as the 'derained' output: a real folder evaluation without a network."""
    save_dir.mkdir(parents=True, exist_ok=True)
    scores = []
    for path in sorted(input_dir.iterdir()):
        shutil.copyfile(path, save_dir / path.name)
        if target_dir is not None:
            read = lambda p: cv2.imread(str(p))[..., ::-1]  # BGR -> RGB
            scores.append(score(read(path), read(target_dir / path.name)))
    return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]} if scores else {}


def test_prepare_then_benchmark_on_synthetic_sets(tmp_path, capsys):
    root = tmp_path / "datasets"
    for name in ("synth-light", "synth-heavy"):
        assert prepare_main(["--synthetic", name, "--out", str(root), "--synthetic_size", "32x40",
                             "--no-synthetic_train"]) == 0
    wdir = _weights(tmp_path / "w", "vlifnet_demo.pth")
    res = run_benchmark(root, wdir, tmp_path / "out", _identity_evaluate, names=["synth-light", "synth-heavy"])
    rows = _table_rows(res["results_md"].read_text())
    assert list(rows) == ["synth-light", "synth-heavy"]
    for name in rows:  # the table equals a direct evaluation of the prepared folders
        direct = _identity_evaluate(root / name / "test" / "input", root / name / "test" / "target", wdir,
                                    tmp_path / "direct" / name)
        assert rows[name][1] == "4"
        assert rows[name][2:] == [f"{direct[f'{m}_{p}']:.{2 if m == 'psnr' else 4}f}"
                                  for p in PROTOCOLS for m in ("psnr", "ssim")]
        assert sorted(p.name for p in (tmp_path / "out" / name).iterdir()) == \
               sorted(p.name for p in (root / name / "test" / "input").iterdir())
    light, heavy = (float(rows[n][2]) for n in ("synth-light", "synth-heavy"))
    assert light > heavy  # heavier rain scores lower against the clean target
