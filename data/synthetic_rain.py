"""Synthetic rain streaks and a small paired demo dataset built from scikit-image's photos.

The rain comes from :mod:`data.rain` (streaks at several depths, one dominant angle per
image, haze in heavy rain). The sets exist so that the pipeline (training, tiling, metrics,
CLI) can be exercised offline and the demo model trained here. They are NOT a substitute for
the Rain200L/H, Rain1200 or real-rain benchmarks: scores on them say nothing about the paper's.

Photos come from ``skimage.data`` (public-domain / CC0 images shipped inside the package; none
needs a download). Train and test use disjoint photos, so no test scene is seen in training.
"""
from __future__ import annotations

import dataclasses
import json
import os
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import skimage.data

from data.backgrounds import dead_leaves
from data.io import write_png, write_text_atomic
from data.rain import RAIN_PRESETS, ParamsLike, add_rain

__all__ = [
    "TRAIN_PHOTOS",
    "TEST_PHOTOS",
    "load_photo",
    "make_paired_dataset",
    "make_demo_dataset",
]

# Disjoint photo sets (skimage 0.26 ships all of them inside the package).
# "cat" is an alias of "chelsea" and motorcycle_right shows the left view's scene: both unused.
TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
                "retina", "brick", "grass", "gravel", "moon", "clock")
TEST_PHOTOS = ("chelsea", "motorcycle", "camera", "coins")


def load_photo(name: str) -> np.ndarray:
    """A photo from ``skimage.data`` as HxWx3 uint8 RGB (grey replicated, alpha dropped).

    ``"motorcycle"`` is the left view of ``stereo_motorcycle``.
    """
    if name == "motorcycle":
        img = skimage.data.stereo_motorcycle()[0]
    else:
        img = getattr(skimage.data, name)()
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"skimage.data.{name} is not an 8-bit photo ({img.dtype})")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)  # HxW -> HxWx3
    return np.ascontiguousarray(img[..., :3])


def _fit(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (area) to cover ``size`` = (H, W), then centre-crop to it."""
    h, w = size
    scale = max(h / img.shape[0], w / img.shape[1])
    new = (max(w, round(img.shape[1] * scale)), max(h, round(img.shape[0] * scale)))
    img = cv2.resize(img, new, interpolation=cv2.INTER_AREA)
    y, x = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return img[y:y + h, x:x + w]


def _photo_rng(seed: int, name: str) -> np.random.Generator:
    """Per-photo generator: independent of the order photos are processed in."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _write_pair(root: Path, name: str, rainy: np.ndarray, clean: np.ndarray) -> None:
    write_png(root / "input" / f"{name}.png", rainy)
    write_png(root / "target" / f"{name}.png", clean)


def _rained_pair(clean: np.ndarray, preset: ParamsLike, rng: np.random.Generator,
                 supersample: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rainy, clean)``: rain rendered on ``clean``, then both area-downscaled by
    ``supersample``. The presets describe rain at benchmark resolution (about 481x321); on a
    photo shown smaller, streaks are thinner and shorter, so small images are rendered large
    and scaled down, which also anti-aliases the thin streaks."""
    rainy = add_rain(clean, preset, rng)
    if supersample == 1:
        return rainy, clean
    size = (clean.shape[1] // supersample, clean.shape[0] // supersample)  # cv2: (W, H)
    return (cv2.resize(rainy, size, interpolation=cv2.INTER_AREA),
            cv2.resize(clean, size, interpolation=cv2.INTER_AREA))


def make_paired_dataset(root: str | os.PathLike, split: str = "test", preset: ParamsLike = "heavy",
                        seed: int = 0, size: tuple[int, int] | None = None, supersample: int = 1) -> Path:
    """One rainy/clean pair per photo of ``split`` ("train" or "test" photo set).

    Writes ``<root>/input/<photo>.png`` (rainy) and ``<root>/target/<photo>.png`` (clean),
    paired by file name. ``size`` = (H, W) resizes each photo to cover it and centre-crops;
    ``None`` keeps full resolution. ``supersample`` renders the rain at that many times
    ``size`` and scales the pair down (see :func:`_rained_pair`). Same arguments give
    byte-identical files. Returns ``root``.
    """
    photos = {"train": TRAIN_PHOTOS, "test": TEST_PHOTOS}.get(split)
    if photos is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    for sub in ("input", "target"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name in photos:
        clean = load_photo(name)
        if size is not None:
            clean = _fit(clean, (size[0] * supersample, size[1] * supersample))
        rainy, clean = _rained_pair(clean, preset, _photo_rng(seed, name), supersample)
        _write_pair(root, name, rainy, clean)
    return root


DEMO_FORMAT = "synthetic-rain-demo/4"
DEMO_SHORT_SIDE = 256  # photos are downscaled to this short side before crops
DEMO_SUPERSAMPLE = 2  # rain is rendered at twice the demo size, then the pair scaled down
DEMO_CROP_SIDES = (96, 112, 128)  # crop heights/widths, drawn independently
DEMO_CROPS = 8  # train crops per photo
DEMO_LEAVES = 44  # train dead-leaves backgrounds (data/backgrounds.py), coloured like a train photo
DEMO_VAL_CROPS = 2  # validation crops per photo: other crops, other rain, same photos
DEMO_TRAIN_PRESETS = ("heavy", "light")  # one rendering of each per crop
DEMO_TEST_PRESET = "heavy"
DEMO_TEST_SIZE = (128, 160)  # (H, W) of the test images: whole scenes, scaled down
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")


def _demo_params(seed: int) -> dict[str, Any]:
    """Everything the demo dataset depends on; a manifest with other values is stale."""
    presets = set(DEMO_TRAIN_PRESETS) | {DEMO_TEST_PRESET}
    return {
        "seed": seed, "train_photos": list(TRAIN_PHOTOS), "test_photos": list(TEST_PHOTOS),
        "short_side": DEMO_SHORT_SIDE, "supersample": DEMO_SUPERSAMPLE, "crop_sides": list(DEMO_CROP_SIDES), "crops": DEMO_CROPS,
        "leaves": DEMO_LEAVES,
        "val_crops": DEMO_VAL_CROPS, "val_preset": DEMO_TEST_PRESET, "train_presets": list(DEMO_TRAIN_PRESETS),
        "test_preset": DEMO_TEST_PRESET, "test_size": list(DEMO_TEST_SIZE),
        "presets": {k: json.loads(json.dumps(dataclasses.asdict(RAIN_PRESETS[k])))
                    for k in sorted(presets)},
    }


def _crop_pairs(root: Path, seed: int, split: str, crops: int, presets: tuple[str, ...]) -> list[str]:
    """``crops`` random crops of each train photo, each rendered once per preset of ``presets``.
    Each split draws from its own generator, so validation crops and rain are not training's."""
    names = []
    for photo in TRAIN_PHOTOS:
        rng = _photo_rng(seed, photo if split == "train" else f"{photo}/{split}")
        img = load_photo(photo)
        k = DEMO_SUPERSAMPLE
        scale = DEMO_SHORT_SIDE * k / min(img.shape[:2])
        if scale < 1:
            size = (round(img.shape[1] * scale), round(img.shape[0] * scale))  # cv2: (W, H)
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        for c in range(crops):
            h, w = (int(v) * k for v in rng.choice(DEMO_CROP_SIDES, size=2))
            y = int(rng.integers(0, img.shape[0] - h + 1))
            x = int(rng.integers(0, img.shape[1] - w + 1))
            clean = img[y:y + h, x:x + w]
            for preset in presets:
                name = f"{photo}_c{c}_{preset}"
                _write_pair(root, name, *_rained_pair(clean, preset, rng, k))
                names.append(name)
    return names


def _leaves_pairs(root: Path, seed: int, count: int, presets: tuple[str, ...]) -> list[str]:
    """``count`` dead-leaves backgrounds the size of the photo crops, each with the colours of a
    random train photo, each rendered once per preset of ``presets``."""
    rng = _photo_rng(seed, "dead-leaves")
    k = DEMO_SUPERSAMPLE
    photos: dict[str, np.ndarray] = {}  # each photo decoded once
    names = []
    for i in range(count):
        photo_name = TRAIN_PHOTOS[int(rng.integers(len(TRAIN_PHOTOS)))]
        if photo_name not in photos:
            photos[photo_name] = load_photo(photo_name)
        photo = photos[photo_name]
        palette = photo.reshape(-1, 3)[rng.integers(0, photo.shape[0] * photo.shape[1], size=4096)]
        h, w = (int(v) * k for v in rng.choice(DEMO_CROP_SIDES, size=2))
        clean = dead_leaves(rng, h, w, palette, r_min=2.0 * k, blur=0.8 * k)
        for preset in presets:
            name = f"leaves{i:02d}_{preset}"
            _write_pair(root, name, *_rained_pair(clean, preset, rng, k))
            names.append(name)
    return names


def _read_manifest(root: Path, params: dict[str, Any]) -> dict[str, list[str]]:
    """The file lists of the manifest in ``root`` if it was written with ``params``, else ``{}``."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    if manifest.get("format") != DEMO_FORMAT or manifest.get("params") != params:
        return {}
    return manifest.get("files", {})


def _is_complete(root: Path, split: str, names: list[str] | None) -> bool:
    """True if ``names`` (a split's manifest entry) is non-empty and every file it lists exists."""
    return bool(names) and all((root / split / sub / f"{name}.png").is_file()
                               for name in names for sub in ("input", "target"))


def _remove_stale(root: Path) -> None:
    """Delete the manifest and the files it lists (only files this module wrote)."""
    try:
        files = json.loads((root / MANIFEST).read_text()).get("files", {})
    except (OSError, ValueError):
        return
    (root / MANIFEST).unlink()
    for split, names in files.items():
        for name in names:
            for sub in ("input", "target"):
                (root / split / sub / f"{name}.png").unlink(missing_ok=True)


def _build_split(root: Path, split: str, seed: int) -> list[str]:
    """Write one split of the demo set under ``root / split``; returns its pair names."""
    for sub in ("input", "target"):
        (root / split / sub).mkdir(parents=True, exist_ok=True)
    if split == "train":
        return (_crop_pairs(root / "train", seed, "train", DEMO_CROPS, DEMO_TRAIN_PRESETS)
                + _leaves_pairs(root / "train", seed, DEMO_LEAVES, DEMO_TRAIN_PRESETS))
    if split == "val":
        return _crop_pairs(root / "val", seed, "val", DEMO_VAL_CROPS, (DEMO_TEST_PRESET,))
    make_paired_dataset(root / "test", "test", DEMO_TEST_PRESET, seed, DEMO_TEST_SIZE, DEMO_SUPERSAMPLE)
    return list(TEST_PHOTOS)


def make_demo_dataset(root: str | os.PathLike, seed: int = 0,
                      splits: tuple[str, ...] = SPLITS) -> dict[str, Any]:
    """Build a small offline train/test deraining set under ``root``.

    Layout: ``<root>/{train,val,test}/{input,target}/<name>.png``, rainy input and clean target
    paired by file name, plus ``<root>/manifest.json``. Train: :data:`DEMO_CROPS` random
    96..128-pixel crops of each of the 11 :data:`TRAIN_PHOTOS` (short side first scaled to 256)
    and :data:`DEMO_LEAVES` dead-leaves backgrounds of the same sizes coloured like a train photo
    (:mod:`data.backgrounds`), each rendered with the "heavy" and the "light" preset. Val: two more crops of each train
    photo, drawn from a separate generator and rendered with the test set's "heavy" rain (22
    pairs; for learning curves and picking the best epoch, never the test set). Test: the 4
    :data:`TEST_PHOTOS`, whole scenes scaled and centre-cropped to 128x160, "heavy" rain (4
    pairs); no test photo is used for training or validation. Not a substitute for
    Rain200/Rain1200.

    Only ``splits`` are built (``python test.py`` needs the test split alone); each split draws
    from its own generators, so a split's files do not depend on which others were built.
    Deterministic in ``seed``; a split that the manifest lists with the same parameters and
    whose files all exist is not rewritten. A manifest with other parameters is stale: the
    files it lists are deleted first.

    Returns ``{"root", "train", "val", "test": Path, "<split>_pairs": int for each split built so
    far, "regenerated": bool}`` (``regenerated``: some split was written by this call).
    """
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown demo split(s) {sorted(unknown)}; choose from {SPLITS}")
    root = Path(root)
    params = _demo_params(seed)
    files = _read_manifest(root, params)
    todo = [split for split in splits if not _is_complete(root, split, files.get(split))]
    if todo:
        root.mkdir(parents=True, exist_ok=True)
        if not files:
            _remove_stale(root)  # before writing: an interrupted run leaves no valid manifest
        for split in todo:
            files[split] = _build_split(root, split, seed)
        manifest = {"format": DEMO_FORMAT, "params": params, "files": files}
        write_text_atomic(root / MANIFEST, json.dumps(manifest, indent=1))
    return {"root": root, **{split: root / split for split in SPLITS},
            **{f"{split}_pairs": len(names) for split, names in files.items()}, "regenerated": bool(todo)}


def demo_pair(size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(clean, rainy) uint8 RGB ``size x size``: scikit-image's "chelsea" photo, centre square,
    with the "medium" rain of :mod:`data.rain` (seeded): the tools' ``--demo`` input."""
    photo = load_photo("chelsea")
    h, w = photo.shape[:2]
    s = min(h, w)
    square = photo[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    clean = cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)
    return clean, add_rain(clean, "medium", rng=np.random.default_rng(seed))
