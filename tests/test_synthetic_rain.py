"""The synthetic paired sets: layout, pairing, determinism, splits and idempotence."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

import data.synthetic_rain as sr
from data.synthetic_rain import make_demo_dataset, make_paired_dataset


def _read(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1]


# ---------------------------------------------------------------- datasets
def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_make_paired_dataset_layout_pairing_and_determinism(tmp_path):
    root = make_paired_dataset(tmp_path / "a", "test", "light", seed=0, size=(40, 48))
    names = _names(root / "input")
    assert names == _names(root / "target") == sorted(f"{n}.png" for n in sr.TEST_PHOTOS)
    for name in names:
        rainy, clean = _read(root / "input" / name), _read(root / "target" / name)
        assert rainy.shape == clean.shape == (40, 48, 3)
        assert (rainy.astype(np.int16) >= clean).all() and (rainy != clean).any()  # no haze in light rain
    again = make_paired_dataset(tmp_path / "b", "test", "light", seed=0, size=(40, 48))
    other = make_paired_dataset(tmp_path / "c", "test", "light", seed=1, size=(40, 48))
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
    n_train = (len(sr.TRAIN_PHOTOS) * sr.DEMO_CROPS + sr.DEMO_LEAVES) * len(sr.DEMO_TRAIN_PRESETS)
    n_val = len(sr.TRAIN_PHOTOS) * sr.DEMO_VAL_CROPS  # heavy rain only, as the test set
    assert demo["regenerated"] and demo["train_pairs"] == n_train and demo["val_pairs"] == n_val == 22
    assert demo["test_pairs"] == len(sr.TEST_PHOTOS) == 4
    for split, count in (("train", n_train), ("val", n_val), ("test", 4)):
        names = _names(demo[split] / "input")
        assert names == _names(demo[split] / "target") and len(names) == count
    leaves = [n for n in _names(demo["train"] / "input") if n.startswith("leaves")]
    assert len(leaves) == sr.DEMO_LEAVES * len(sr.DEMO_TRAIN_PRESETS)
    train_photos = {n.rsplit("_c", 1)[0] for n in _names(demo["train"] / "input") if n not in leaves}
    val_photos = {n.rsplit("_c", 1)[0] for n in _names(demo["val"] / "input")}
    test_photos = {n[:-4] for n in _names(demo["test"] / "input")}
    assert train_photos == val_photos == set(sr.TRAIN_PHOTOS) and not train_photos & test_photos
    for name in _names(demo["test"] / "input"):
        assert _read(demo["test"] / "input" / name).shape == (128, 160, 3)
    assert all(name.endswith("_heavy.png") for name in _names(demo["val"] / "input"))
    for split in ("train", "val"):
        for name in _names(demo[split] / "input")[:12]:
            rainy, clean = _read(demo[split] / "input" / name), _read(demo[split] / "target" / name)
            assert rainy.shape == clean.shape and set(rainy.shape[:2]) <= set(sr.DEMO_CROP_SIDES)
            assert (rainy != clean).any()
            if name.endswith("_light.png"):  # no haze: rain only brightens
                assert (rainy.astype(np.int16) >= clean).all()
    # validation crops are other crops than training's: no validation target is a training one
    train_targets = {(demo["train"] / "target" / n).read_bytes() for n in _names(demo["train"] / "target")}
    assert not any((demo["val"] / "target" / n).read_bytes() in train_targets for n in _names(demo["val"] / "target"))
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
    monkeypatch.setattr(sr, "DEMO_LEAVES", 1)


def test_demo_dataset_regenerates_when_incomplete_or_changed(tmp_path, small_demo):
    first = make_demo_dataset(tmp_path / "a", seed=0)
    assert first["train_pairs"] == 6 and first["val_pairs"] == 4 and first["test_pairs"] == 1
    copy = make_demo_dataset(tmp_path / "b", seed=0)
    for split in ("train", "val", "test"):
        for sub in ("input", "target"):
            for name in _names(first[split] / sub):
                a, b = first[split] / sub / name, copy[split] / sub / name
                assert a.read_bytes() == b.read_bytes()
    missing = first["test"] / "target" / "camera.png"
    missing.unlink()
    assert make_demo_dataset(tmp_path / "a", seed=0)["regenerated"] and missing.is_file()
    old = (first["train"] / "input" / "coffee_c0_heavy.png").read_bytes()
    changed = make_demo_dataset(tmp_path / "a", seed=5)
    assert changed["regenerated"] and changed["train_pairs"] == 6
    assert (first["train"] / "input" / "coffee_c0_heavy.png").read_bytes() != old
    assert not make_demo_dataset(tmp_path / "a", seed=5)["regenerated"]


def test_demo_dataset_builds_only_the_splits_asked_for(tmp_path, small_demo):
    full = make_demo_dataset(tmp_path / "full", seed=0)
    only_test = make_demo_dataset(tmp_path / "part", seed=0, splits=("test",))
    assert only_test["regenerated"] and only_test["test_pairs"] == 1 and "train_pairs" not in only_test
    assert not (tmp_path / "part" / "train").exists() and not (tmp_path / "part" / "val").exists()
    probe = only_test["test"] / "input" / "camera.png"
    assert probe.read_bytes() == (full["test"] / "input" / "camera.png").read_bytes()
    before = probe.stat().st_mtime_ns
    rest = make_demo_dataset(tmp_path / "part", seed=0)  # adds train and val, keeps test
    assert rest["regenerated"] and (rest["train_pairs"], rest["val_pairs"], rest["test_pairs"]) == (6, 4, 1)
    assert probe.stat().st_mtime_ns == before
    for split in ("train", "val"):
        for name in _names(full[split] / "input"):
            assert (rest[split] / "input" / name).read_bytes() == (full[split] / "input" / name).read_bytes()
    assert not make_demo_dataset(tmp_path / "part", seed=0, splits=("train",))["regenerated"]
    with pytest.raises(ValueError, match="unknown demo split"):
        make_demo_dataset(tmp_path / "part", splits=("holdout",))
