"""prepare -> test.py --benchmark on the synthetic stand-in sets, and test.py --energy."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import load_script
from data import prepare
from models import build_model
from utils.checkpoint import atomic_save, make_checkpoint

test_script = load_script("test")


@pytest.fixture
def weights_dir(tmp_path: Path, tiny_config: dict) -> Path:
    folder = tmp_path / "weights"
    atomic_save(make_checkpoint(build_model("vlifnet", **tiny_config)), folder / "tiny.pth")
    return folder


def _prepare(root: Path, names: tuple[str, ...] = ("synth-light", "synth-heavy")) -> None:
    for name in names:
        code = prepare.main(["--synthetic", name, "--out", str(root), "--synthetic_size", "40x48",
                             "--no-synthetic_train"])
        assert code == 0


def test_benchmark_table_equals_direct_test_runs(tmp_path, weights_dir):
    root, out = tmp_path / "datasets", tmp_path / "bench"
    _prepare(root)
    code = test_script.main(["--benchmark", "--data_root", str(root), "--weights_dir", str(weights_dir),
                             "--weights_map", "synth-light=tiny.pth,synth-heavy=tiny.pth",
                             "--save_path", str(out), "--crop_size", "0"])
    assert code == 0
    table = json.loads((out / "results.json").read_text())
    rows = {row["dataset"]: row for row in table["rows"]}
    assert set(rows) == {"synth-light", "synth-heavy"}
    assert {name for name, _ in table["skipped"]} >= {"Rain200L", "Rain200H", "Rain1200", "Rain12", "RW_Rain"}
    md = (out / "results.md").read_text()
    assert "| synth-heavy | tiny.pth |" in md

    for name in ("synth-light", "synth-heavy"):
        direct = tmp_path / f"direct-{name}"
        assert test_script.main(["--data_path", str(root / name / "test" / "input"),
                                 "--target_path", str(root / name / "test" / "target"),
                                 "--weights", str(weights_dir / "tiny.pth"), "--save_path", str(direct),
                                 "--crop_size", "0"]) == 0
        means = json.loads((direct / "metrics.json").read_text())["means"]["derained"]
        assert set(rows[name]["metrics"]) == set(means)  # the same flat row
        for key, value in means.items():
            assert rows[name]["metrics"][key] == pytest.approx(value, abs=1e-9)


def test_benchmark_skips_missing_weights_without_crashing(tmp_path, weights_dir):
    root, out = tmp_path / "datasets", tmp_path / "bench"
    _prepare(root, ("synth-light",))
    code = test_script.main(["--benchmark", "--data_root", str(root), "--weights_dir", str(weights_dir),
                             "--save_path", str(out)])  # default mapping: vlifnet_demo.pth is not in weights_dir
    assert code == 0
    table = json.loads((out / "results.json").read_text())
    assert table["rows"] == []
    reasons = dict(table["skipped"])
    assert "vlifnet_demo.pth" in reasons["synth-light"]


def test_benchmark_without_data_root_is_a_clear_error(tmp_path, weights_dir):
    assert test_script.main(["--benchmark", "--data_root", str(tmp_path / "nowhere"),
                             "--weights_dir", str(weights_dir), "--save_path", str(tmp_path / "o")]) == 2


def test_energy_summary_is_added_to_a_test_run(tmp_path, weights_dir, capsys):
    root = tmp_path / "datasets"
    _prepare(root, ("synth-light",))
    data = root / "synth-light" / "test"
    out = tmp_path / "out"
    assert test_script.main(["--data_path", str(data / "input"), "--target_path", str(data / "target"),
                             "--weights", str(weights_dir / "tiny.pth"), "--save_path", str(out),
                             "--crop_size", "0", "--energy"]) == 0
    energy = json.loads((out / "energy.json").read_text())
    assert energy["params"] == sum(p.numel() for p in build_model("vlifnet", dim=16, en_num_blocks=(1, 1, 2, 2),
                                                                  de_num_blocks=(1, 1, 1, 1)).parameters())
    assert energy["dense_macs"] > 0 and energy["energy_mj"] > 0
    assert "energy" in capsys.readouterr().out.lower()
