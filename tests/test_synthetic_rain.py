"""Synthetic rain: determinism, value range, streak geometry, dataset layout and idempotence."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

import data.synthetic_rain as sr
from data.synthetic_rain import (
    RAIN_PRESETS,
    RainParams,
    add_rain,
    load_photo,
    make_demo_dataset,
    make_paired_dataset,
    streak_kernel,
)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return load_photo("astronaut")[::3, ::3][:150, :161]  # 150x161x3 uint8


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def _read(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1]


# ---------------------------------------------------------------- add_rain
def test_deterministic_for_a_given_rng(photo):
    a = add_rain(photo, "heavy", np.random.default_rng(7))
    b = add_rain(photo, "heavy", np.random.default_rng(7))
    c = add_rain(photo, "heavy", np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert _mse(a, c) > 10.0


def test_dtype_and_range_preserved_and_rain_never_darkens(photo):
    for preset in RAIN_PRESETS:
        out = add_rain(photo, preset, np.random.default_rng(0))
        assert out.dtype == np.uint8 and out.shape == photo.shape
        assert (out.astype(np.int16) - photo >= 0).all()
        if RAIN_PRESETS[preset].haze == 0:
            # rain is achromatic: where nothing clipped, every channel gains the same amount
            gain = out.astype(np.int16) - photo
            unclipped = (out < 255).all(axis=2)
            assert np.abs(gain[unclipped] - gain[unclipped][:, :1]).max() <= 1
            assert gain[unclipped].max() > 50
        ref = photo.astype(np.float64) / 255
        out_f = add_rain(ref, preset, np.random.default_rng(0))
        assert out_f.dtype == np.float64 and 0.0 <= out_f.min() and out_f.max() <= 1.0
        # same rng -> same rain in float and uint8 (uint8 is the rounded float result)
        assert np.abs(out_f * 255 - out).max() <= 0.5 + 1e-3
        out_32 = add_rain(ref.astype(np.float32), preset, np.random.default_rng(0))
        assert out_32.dtype == np.float32


def test_heavy_rain_degrades_more_than_light():
    for name in ("chelsea", "coffee"):
        img = load_photo(name)[::2, ::2]
        for seed in range(2):
            light = add_rain(img, "light", np.random.default_rng(seed))
            heavy = add_rain(img, "heavy", np.random.default_rng(seed))
            psnr_l = 10 * math.log10(255**2 / _mse(light, img))
            psnr_h = 10 * math.log10(255**2 / _mse(heavy, img))
            assert psnr_h + 5 < psnr_l
            assert 20 < psnr_l < 40 and 10 < psnr_h < 25
            # light rain is sparse streaks on an untouched background (no haze)
            assert 0.02 < np.mean((light != img).any(axis=2)) < 0.3


def _dominant_gradient_angle(layer: np.ndarray) -> float:
    """Structure-tensor orientation in degrees of the gradient (x right, y down), in (-90, 90]."""
    gx = cv2.Scharr(layer, cv2.CV_64F, 1, 0)  # Scharr: far less orientation bias than Sobel
    gy = cv2.Scharr(layer, cv2.CV_64F, 0, 1)
    jxx, jyy, jxy = (gx * gx).sum(), (gy * gy).sum(), (gx * gy).sum()
    return math.degrees(0.5 * math.atan2(2 * jxy, jxx - jyy))


@pytest.mark.parametrize("angle", [-25.0, 0.0, 25.0])
def test_streaks_follow_the_preset_angle(angle):
    # a streak leaning its top right by `angle` has its gradient at `angle` from the x axis
    p = RainParams(density=0.002, length=(25, 25), angle=(angle, angle), width=1,
                   intensity=(0.5, 0.5), blur=0.0)
    black = np.zeros((200, 200, 3), np.float64)
    layer = add_rain(black, p, np.random.default_rng(3))[..., 0]
    assert _dominant_gradient_angle(layer) == pytest.approx(angle, abs=2.0)


def test_streak_kernel_geometry():
    k = streak_kernel(9, 0.0, 1)
    assert k.shape == (11, 11) and k.dtype == np.float32
    np.testing.assert_allclose(k[1:10, 5], 1.0)
    assert k.sum() == pytest.approx(9.0, abs=1e-6)
    k = streak_kernel(21, 30.0, 2)
    np.testing.assert_allclose(k, np.rot90(k, 2), atol=1e-6)  # symmetric: filter2D is a convolution
    assert k.sum() == pytest.approx(21 * 2, rel=0.2)
    ys, xs = np.nonzero(k > 0.5)
    top, bottom = xs[ys == ys.min()].mean(), xs[ys == ys.max()].mean()
    assert top > bottom  # "/" for positive angles


def test_invalid_inputs_raise(photo):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="preset"):
        add_rain(photo, "drizzle", rng)
    with pytest.raises(ValueError, match="dtype"):
        add_rain(photo.astype(np.int32), "light", rng)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        add_rain(photo.astype(np.float32), "light", rng)
    with pytest.raises(ValueError, match="HxWx3"):
        add_rain(photo[..., 0], "light", rng)


# ---------------------------------------------------------------- datasets
def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_make_paired_dataset_layout_pairing_and_determinism(tmp_path):
    root = make_paired_dataset(tmp_path / "a", "test", "heavy", seed=0, size=(40, 48))
    names = _names(root / "input")
    assert names == _names(root / "target") == sorted(f"{n}.png" for n in sr.TEST_PHOTOS)
    for name in names:
        rainy, clean = _read(root / "input" / name), _read(root / "target" / name)
        assert rainy.shape == clean.shape == (40, 48, 3)
        assert (rainy.astype(np.int16) >= clean).all() and (rainy != clean).any()
    again = make_paired_dataset(tmp_path / "b", "test", "heavy", seed=0, size=(40, 48))
    other = make_paired_dataset(tmp_path / "c", "test", "heavy", seed=1, size=(40, 48))
    for name in names:
        assert (root / "input" / name).read_bytes() == (again / "input" / name).read_bytes()
        assert (root / "input" / name).read_bytes() != (other / "input" / name).read_bytes()
    assert not [p for p in root.rglob("*") if p.suffix == ".tmp"]
    with pytest.raises(ValueError, match="split"):
        make_paired_dataset(tmp_path / "d", "val")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "rain", seed=0)


def test_demo_dataset_layout(demo):
    n_train = len(sr.TRAIN_PHOTOS) * sr.DEMO_CROPS * len(sr.DEMO_TRAIN_PRESETS)
    assert demo["regenerated"] and demo["train_pairs"] == n_train == 66
    assert demo["test_pairs"] == len(sr.TEST_PHOTOS) == 4
    for split, count in (("train", n_train), ("test", 4)):
        names = _names(demo[split] / "input")
        assert names == _names(demo[split] / "target") and len(names) == count
    train_photos = {n.rsplit("_c", 1)[0] for n in _names(demo["train"] / "input")}
    test_photos = {n[:-4] for n in _names(demo["test"] / "input")}
    assert train_photos == set(sr.TRAIN_PHOTOS) and not train_photos & test_photos
    for name in _names(demo["test"] / "input"):
        assert _read(demo["test"] / "input" / name).shape == (128, 160, 3)
    for name in _names(demo["train"] / "input")[:12]:
        rainy, clean = _read(demo["train"] / "input" / name), _read(demo["train"] / "target" / name)
        assert rainy.shape == clean.shape and set(rainy.shape[:2]) <= set(sr.DEMO_CROP_SIDES)
        assert (rainy.astype(np.int16) >= clean).all() and (rainy != clean).any()
    manifest = json.loads((demo["root"] / "manifest.json").read_text())
    assert manifest["params"]["seed"] == 0 and len(manifest["files"]["train"]) == n_train


def test_demo_dataset_is_idempotent(demo):
    probe = demo["train"] / "input" / "coffee_c0_heavy.png"
    before = probe.stat().st_mtime_ns
    again = make_demo_dataset(demo["root"], seed=0)
    assert not again["regenerated"] and again["train_pairs"] == demo["train_pairs"]
    assert probe.stat().st_mtime_ns == before


@pytest.fixture
def small_demo(monkeypatch):
    """Shrink the demo configuration so regeneration tests take a fraction of a second."""
    monkeypatch.setattr(sr, "TRAIN_PHOTOS", ("coffee", "rocket"))
    monkeypatch.setattr(sr, "TEST_PHOTOS", ("camera",))
    monkeypatch.setattr(sr, "DEMO_CROPS", 1)


def test_demo_dataset_regenerates_when_incomplete_or_changed(tmp_path, small_demo):
    first = make_demo_dataset(tmp_path / "a", seed=0)
    assert first["train_pairs"] == 4 and first["test_pairs"] == 1
    copy = make_demo_dataset(tmp_path / "b", seed=0)
    for split in ("train", "test"):
        for sub in ("input", "target"):
            for name in _names(first[split] / sub):
                a, b = first[split] / sub / name, copy[split] / sub / name
                assert a.read_bytes() == b.read_bytes()
    missing = first["test"] / "target" / "camera.png"
    missing.unlink()
    assert make_demo_dataset(tmp_path / "a", seed=0)["regenerated"] and missing.is_file()
    old = (first["train"] / "input" / "coffee_c0_heavy.png").read_bytes()
    changed = make_demo_dataset(tmp_path / "a", seed=5)
    assert changed["regenerated"] and changed["train_pairs"] == 4
    assert (first["train"] / "input" / "coffee_c0_heavy.png").read_bytes() != old
    assert not make_demo_dataset(tmp_path / "a", seed=5)["regenerated"]
