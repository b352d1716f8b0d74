"""The front door of test.py: output permissions, nothing left behind by a failed run, inputs
decoded before the first output, a clear word on a file that is not a checkpoint, and --help."""
from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cli_helpers import load_script
from data.io import DataError, write_png
from models import build_model
from options.test_options import build_parser, parse_test_args
from utils.checkpoint import CheckpointError, atomic_save, make_checkpoint, read_checkpoint
from utils.evaluation import write_csv, write_json

test_cli = load_script("test")


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def tiny_weights(tmp_path: Path, tiny_config: dict) -> Path:
    path = tmp_path / "w" / "tiny.pth"
    atomic_save(make_checkpoint(build_model("vlifnet", **tiny_config)), path)
    return path


def _test_py(data: Path, weights: Path, out: Path, *extra: str) -> int:
    return test_cli.main(["--data_path", str(data / "input"), "--weights", str(weights),
                          "--save_path", str(out), "--crop_size", "0", *extra])


# ----------------------------------------------------------------------------- permissions
@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_umask_permissions(tmp_path, mask, expected):
    with _umask(mask):
        write_png(tmp_path / "a.png", np.zeros((4, 5, 3), np.uint8))
        write_csv(tmp_path / "m.csv", [{"name": "a", "psnr_rgb": 1.0}])
        write_json(tmp_path / "m.json", {"a": 1})
        atomic_save({"w": torch.ones(2)}, tmp_path / "c.pth")
        atomic_save({"w": torch.zeros(2)}, tmp_path / "c.pth")  # replacing a file: the new one's mode
    for name in ("a.png", "m.csv", "m.json", "c.pth"):
        assert _mode(tmp_path / name) == expected, name
    assert not list(tmp_path.glob(".*.tmp"))


def test_test_py_outputs_are_0644_under_umask_022(tmp_path, pipeline_write_pairs, tiny_weights):
    data = pipeline_write_pairs(tmp_path / "d", names=("a",), size=(16, 16))
    out = tmp_path / "out"
    with _umask(0o022):
        assert test_cli.main(["--data_path", str(data / "input"), "--target_path", str(data / "target"),
                              "--weights", str(tiny_weights), "--save_path", str(out), "--crop_size", "0"]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["a.png", "metrics.csv", "metrics.json"]
    assert {_mode(out / name) for name in written} == {0o644}


# ----------------------------------------------------------------------------- failed runs
def test_text_file_as_checkpoint_is_named_and_explained(tmp_path):
    for name, content, what in (
        ("notes.pth", b"these are my notes\nnot weights\n", "it is text starting with 'these are my notes'"),
        ("page.pth", b"<!DOCTYPE html><html>Sign in</html>", "it is text starting with '<!DOCTYPE html>"),
        ("noise.pth", bytes(range(7, 40)), "it starts with the bytes 07 08 09"),
    ):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(tmp_path / name)
        message = str(info.value)
        assert f"{tmp_path / name} is not a PyTorch checkpoint: {what}" in message
        assert "Pass the .pth weights file itself" in message
        assert "IndexError" not in message and "KeyError" not in message
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pth is empty \(0 bytes\)"):
        read_checkpoint(tmp_path / "empty.pth")


def test_failed_checkpoint_leaves_no_save_path(tmp_path, pipeline_write_pairs, caplog):
    data = pipeline_write_pairs(tmp_path / "d", names=("a",), size=(16, 16))
    (tmp_path / "model.pth").write_text("hello\n")
    out = tmp_path / "results" / "run"
    with caplog.at_level(logging.ERROR):
        assert _test_py(data, tmp_path / "model.pth", out) == 2
    assert "model.pth is not a PyTorch checkpoint" in caplog.text
    assert not (tmp_path / "results").exists()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("side", ["input", "target"])
def test_truncated_png_stops_before_any_output(tmp_path, pipeline_write_pairs, tiny_weights, caplog, side):
    data = pipeline_write_pairs(tmp_path / "d", names=("a", "b", "c"), size=(64, 64))
    cv2.imwrite(str(data / side / "b.png"), np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    _truncate(data / side / "b.png")  # the header still reads: only a full decode finds it
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR):
        rc = test_cli.main(["--data_path", str(data / "input"), "--target_path", str(data / "target"),
                            "--weights", str(tiny_weights), "--save_path", str(out), "--crop_size", "0"])
    assert rc == 2
    assert f"cannot decode image {data / side / 'b.png'}: it is missing, truncated or corrupt" in caplog.text
    assert not out.exists()  # not even a.png, which comes before it


def test_truncated_png_without_targets(tmp_path, pipeline_write_pairs, tiny_weights, caplog):
    data = pipeline_write_pairs(tmp_path / "d", names=("a", "z"), size=(64, 64))
    cv2.imwrite(str(data / "input" / "z.png"), np.full((64, 64, 3), 7, np.uint8))
    _truncate(data / "input" / "z.png")
    with caplog.at_level(logging.ERROR):
        assert _test_py(data, tiny_weights, tmp_path / "out") == 2
    assert "z.png" in caplog.text and not (tmp_path / "out").exists()


def test_failure_during_the_run_removes_the_folders_it_created(tmp_path, pipeline_write_pairs, tiny_weights,
                                                               monkeypatch):
    data = pipeline_write_pairs(tmp_path / "d", names=("a",), size=(16, 16))

    def broken(*_args, **_kwargs):
        raise DataError("simulated failure")

    monkeypatch.setattr(test_cli, "run", broken)
    assert _test_py(data, tiny_weights, tmp_path / "new" / "out") == 2
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "existing"
    kept.mkdir()
    assert _test_py(data, tiny_weights, kept) == 2
    assert kept.is_dir()  # a folder the user made stays


# ----------------------------------------------------------------------------- --help
def test_help_states_each_default_once_and_never_none(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text
    options: list[str] = []  # one entry per option: its lines joined
    for line in text.splitlines():
        if line.startswith("  -") or not line.startswith(" "):
            options.append("")
        options[-1] += " " + line.strip()
    doubled = [o for o in options if o.count("(default") > 1]
    assert not doubled, doubled
    assert "(default: 80)" in text and "(default: False)" in text  # the formatter still adds real defaults


# ----------------------------------------------------------------------------- --cuda_graphs off CUDA
@pytest.mark.parametrize("extra, message", [
    (["--device", "cpu"], "--cuda_graphs needs a CUDA device; --device is cpu"),
    (["--energy"], "--cuda_graphs cannot be combined with --energy"),
])
def test_cuda_graphs_flag_conflicts_are_refused(capsys, extra, message):
    with pytest.raises(SystemExit):
        parse_test_args(["--data_path", "x", "--weights", "w.pth", "--cuda_graphs", *extra])
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cuda_graphs_without_cuda_says_so(tmp_path, pipeline_write_pairs, tiny_weights, caplog):
    data = pipeline_write_pairs(tmp_path / "d", names=("a",), size=(16, 16))
    with caplog.at_level(logging.ERROR):
        assert _test_py(data, tiny_weights, tmp_path / "out", "--cuda_graphs") == 2
    assert "--cuda_graphs needs a CUDA device; this run is on cpu" in caplog.text
    assert not (tmp_path / "out").exists()
