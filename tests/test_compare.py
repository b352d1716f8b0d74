"""Pictures: labelled side-by-side panels, the contact sheet, and test.py --compare."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cli_helpers import load_script
from models import build_model
from options.test_options import parse_test_args
from utils.checkpoint import atomic_save, make_checkpoint
from utils.figures import LABEL_HEIGHT, contact_sheet, side_by_side
from utils.metrics import psnr

test_cli = load_script("test")


def _read(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]


def test_side_by_side_layout_and_labels():
    a = np.zeros((20, 30, 3), np.uint8)
    b = np.full((20, 30, 3), 200, np.uint8)
    out = side_by_side([(a, "rainy 12.34 dB"), (b, "clean")])
    assert out.shape == (20 + LABEL_HEIGHT, 30 + 4 + 30, 3) and out.dtype == np.uint8
    assert (out[LABEL_HEIGHT:, :30] == 0).all() and (out[LABEL_HEIGHT:, 34:] == 200).all()  # images untouched
    band = out[:LABEL_HEIGHT, :30]
    assert (band < 128).any() and (band == 255).mean() > 0.5  # dark text on white
    assert (out[:LABEL_HEIGHT, 34:] < 128).any()
    big = side_by_side([(a, "x"), (b, "y")], side=60)  # panels scaled to the longer side
    assert big.shape == (40 + LABEL_HEIGHT, 60 + 4 + 60, 3)
    with pytest.raises(ValueError, match="one size"):
        side_by_side([(a, "a"), (b[:10], "b")])


def test_contact_sheet_stacks_rows_at_one_width():
    rows = [np.zeros((10, 50, 3), np.uint8), np.full((20, 100, 3), 9, np.uint8)]
    sheet = contact_sheet(rows)
    assert sheet.shape == (10 + 4 + 10, 50, 3)
    assert (sheet[14:] == 9).all()
    with pytest.raises(ValueError, match="at least one"):
        contact_sheet([])


@pytest.fixture
def weights(tmp_path: Path, tiny_config: dict) -> Path:
    path = tmp_path / "w" / "tiny.pth"
    atomic_save(make_checkpoint(build_model("vlifnet", **tiny_config)), path)
    return path


def test_test_py_compare_writes_labelled_pictures_and_a_sheet(tmp_path, pipeline_write_pairs, weights):
    data = pipeline_write_pairs(tmp_path / "d", names=("a", "b"), size=(24, 32))
    out = tmp_path / "out"
    assert test_cli.main(["--data_path", str(data / "input"), "--target_path", str(data / "target"),
                          "--weights", str(weights), "--save_path", str(out), "--crop_size", "0",
                          "--compare"]) == 0
    for name in ("a", "b"):
        picture = _read(out / "compare" / f"{name}.png")
        assert picture.shape == (24 + LABEL_HEIGHT, 3 * 32 + 2 * 4, 3)  # rainy | derained | clean
        rainy, derained, clean = (picture[LABEL_HEIGHT:, i * 36:i * 36 + 32] for i in range(3))
        np.testing.assert_array_equal(rainy, _read(data / "input" / f"{name}.png"))
        np.testing.assert_array_equal(derained, _read(out / f"{name}.png"))
        np.testing.assert_array_equal(clean, _read(data / "target" / f"{name}.png"))
        assert psnr(derained, clean, "matlab-y") > 0
    sheet = _read(out / "compare_sheet.png")
    assert sheet.shape[0] == 2 * (120 + 18) + 4  # two rows of panels scaled to a 160-pixel longer side


def test_compare_is_off_by_default_and_without_targets_shows_two_panels(tmp_path, pipeline_write_pairs, weights):
    data = pipeline_write_pairs(tmp_path / "d", names=("a",), size=(16, 16))
    plain, pictures = tmp_path / "plain", tmp_path / "pictures"
    base = ["--data_path", str(data / "input"), "--weights", str(weights), "--crop_size", "0"]
    assert test_cli.main([*base, "--save_path", str(plain)]) == 0
    assert not (plain / "compare").exists() and not (plain / "compare_sheet.png").exists()
    assert test_cli.main([*base, "--save_path", str(pictures), "--compare"]) == 0
    assert _read(pictures / "compare" / "a.png").shape == (16 + LABEL_HEIGHT, 2 * 16 + 4, 3)  # rainy | derained


def test_compare_defaults():
    assert parse_test_args([]).compare is True  # the demo
    assert parse_test_args(["--demo", "--no-compare"]).compare is False
    assert parse_test_args(["--data_path", "x", "--weights", "w.pth"]).compare is False
