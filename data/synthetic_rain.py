"""Synthetic rain streaks and a small paired demo dataset built from scikit-image's photos.

The rain model follows the usual recipe behind synthetic deraining sets (noise -> motion blur
-> screen onto the image): sparse random seeds, smeared along an angled line kernel, scaled,
softened and added to the clean image, then clipped. It exists so that the pipeline (training,
tiling, metrics, CLI) can be exercised offline in seconds. It is NOT a substitute for the
Rain200L/H, Rain1200 or real-rain benchmarks: scores on it say nothing about the paper's.

Photos come from ``skimage.data`` (public-domain / CC0 images shipped inside the package; none
needs a download). Train and test use disjoint photos, so no test scene is seen in training.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import skimage.data

from data.io import write_png, write_text_atomic

__all__ = [
    "RainParams",
    "RAIN_PRESETS",
    "TRAIN_PHOTOS",
    "TEST_PHOTOS",
    "add_rain",
    "rain_layer",
    "streak_kernel",
    "load_photo",
    "make_paired_dataset",
    "make_demo_dataset",
]


@dataclass(frozen=True)
class RainParams:
    """Parameters of one rain rendering.

    density: probability that a pixel seeds a streak (per layer).
    length: streak length range in pixels, inclusive; one length is drawn per layer.
    angle: range of the streak angle in degrees from vertical; one angle is drawn per layer.
        Positive angles lean the top of the streak to the right ("/"), negative to the left.
    width: line thickness of the motion-blur kernel in pixels.
    intensity: range of the brightness added by one streak, in [0, 1] image units.
    blur: sigma (pixels) of the Gaussian that softens the streak layer; 0 disables it.
    layers: number of independent streak layers (different angle/length each), summed.
    haze: veil of rain accumulation, ``out = out * (1 - haze) + haze``; 0 disables it.
    """

    density: float
    length: tuple[int, int]
    angle: tuple[float, float]
    width: int
    intensity: tuple[float, float]
    blur: float
    layers: int = 1
    haze: float = 0.0


RAIN_PRESETS: dict[str, RainParams] = {
    # sparse, thin, short, nearly vertical (in the spirit of Rain200L; input ~27 dB matlab-y)
    "light": RainParams(density=0.003, length=(8, 16), angle=(-10.0, 10.0), width=1,
                        intensity=(0.25, 0.5), blur=0.5, layers=1, haze=0.0),
    # denser, longer, wider, slanted, two directions and a light veil (in the spirit of
    # Rain200H; input ~16 dB matlab-y)
    "heavy": RainParams(density=0.002, length=(16, 30), angle=(-25.0, 25.0), width=2,
                        intensity=(0.25, 0.55), blur=0.8, layers=2, haze=0.04),
}

# Disjoint photo sets (skimage 0.26 ships all of them inside the package).
# "cat" is an alias of "chelsea" and motorcycle_right shows the left view's scene: both unused.
TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
                "retina", "brick", "grass", "gravel", "moon", "clock")
TEST_PHOTOS = ("chelsea", "motorcycle", "camera", "coins")

ParamsLike = str | RainParams


def _resolve(preset: ParamsLike) -> RainParams:
    if isinstance(preset, RainParams):
        return preset
    if preset not in RAIN_PRESETS:
        raise ValueError(f"unknown rain preset {preset!r}; expected one of {tuple(RAIN_PRESETS)}")
    return RAIN_PRESETS[preset]


def streak_kernel(length: int, angle: float, width: int) -> np.ndarray:
    """Anti-aliased line, ``length`` pixels long and ``width`` wide, centred in a square kernel.

    ``angle`` in degrees from vertical (positive: top leans right, "/"). A pixel's value is
    ``clip(width / 2 + 1/2 - d, 0, 1)`` with ``d`` the distance of its centre to the segment
    joining the centres of the end pixels, so a vertical line of width 1 is exactly ``length``
    ones. Returns float32 (k, k), k odd, values in [0, 1]; symmetric under a 180-degree
    rotation, so ``cv2.filter2D`` (a correlation) applies it as a convolution.
    """
    size = 2 * ((length + width) // 2) + 1
    c = (size - 1) // 2
    theta = math.radians(angle)
    half = (length - 1) / 2.0
    ux, uy = math.sin(theta), -math.cos(theta)  # unit vector towards the top end (y down)
    y, x = np.mgrid[-c:c + 1, -c:c + 1].astype(np.float64)  # offsets from the centre
    t = np.clip(x * ux + y * uy, -half, half)  # projection onto the segment
    d = np.hypot(x - t * ux, y - t * uy)
    return np.clip(width / 2.0 + 0.5 - d, 0.0, 1.0).astype(np.float32)


def _streak_layer(shape: tuple[int, int], p: RainParams, rng: np.random.Generator) -> np.ndarray:
    """One HxW float32 layer of streaks in [0, 1]."""
    seeds = rng.random(shape) < p.density  # sparse seeds: thresholded uniform noise
    brightness = rng.uniform(*p.intensity, size=shape)
    seeds = np.where(seeds, brightness, 0.0).astype(np.float32)
    angle = float(rng.uniform(*p.angle))
    length = int(rng.integers(p.length[0], p.length[1] + 1))
    layer = cv2.filter2D(seeds, -1, streak_kernel(length, angle, p.width),
                         borderType=cv2.BORDER_CONSTANT)
    layer = np.minimum(layer, 1.0)
    if p.blur > 0:
        layer = cv2.GaussianBlur(layer, (0, 0), p.blur, borderType=cv2.BORDER_REFLECT)
    return layer


def rain_layer(shape: tuple[int, int], preset: ParamsLike, rng: np.random.Generator) -> np.ndarray:
    """The HxW float32 rain layer in [0, 1] that :func:`add_rain` adds (before the haze)."""
    p = _resolve(preset)
    total = np.zeros(shape, np.float32)
    for _ in range(p.layers):
        total += _streak_layer(shape, p, rng)
    return np.minimum(total, 1.0)


def add_rain(img: np.ndarray, preset: ParamsLike = "heavy",
             rng: np.random.Generator | None = None) -> np.ndarray:
    """Render rain onto an HxWx3 RGB image; returns a new array of the same shape and dtype.

    ``img`` is uint8 (0..255) or float32/float64 in [0, 1]. The streak layer is added to every
    channel (rain is achromatic), the optional haze veil applied, and the result clipped, so
    rain never darkens a pixel. Deterministic for a given ``rng`` state; ``rng=None`` draws
    from a fresh, unseeded generator (numpy's convention: not reproducible).
    """
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"img must be an HxWx3 RGB array, got {getattr(img, 'shape', img)!r}")
    if img.dtype == np.uint8:
        x = img.astype(np.float32) / 255.0
    elif img.dtype in (np.float32, np.float64):
        if img.size and (img.min() < 0.0 or img.max() > 1.0):
            raise ValueError("float images must lie in [0, 1]")
        x = img
    else:
        raise ValueError(f"img must be uint8 or float32/float64, got dtype {img.dtype}")
    p = _resolve(preset)
    rng = np.random.default_rng() if rng is None else rng
    out = x + rain_layer(img.shape[:2], p, rng)[..., None]  # HxW -> HxWx1, broadcast over RGB
    if p.haze > 0:
        out = out * (1.0 - p.haze) + p.haze
    out = np.clip(out, 0.0, 1.0)
    if img.dtype == np.uint8:
        return np.round(out * 255.0).astype(np.uint8)
    return out.astype(img.dtype)


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


def make_paired_dataset(root: str | os.PathLike, split: str = "test", preset: ParamsLike = "heavy",
                        seed: int = 0, size: tuple[int, int] | None = None) -> Path:
    """One rainy/clean pair per photo of ``split`` ("train" or "test" photo set).

    Writes ``<root>/input/<photo>.png`` (rainy) and ``<root>/target/<photo>.png`` (clean),
    paired by file name. ``size`` = (H, W) resizes each photo to cover it and centre-crops;
    ``None`` keeps full resolution. Same arguments give byte-identical files. Returns ``root``.
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
            clean = _fit(clean, size)
        _write_pair(root, name, add_rain(clean, preset, _photo_rng(seed, name)), clean)
    return root


DEMO_FORMAT = "synthetic-rain-demo/1"
DEMO_SHORT_SIDE = 256  # photos are downscaled to this short side before train crops
DEMO_CROP_SIDES = (96, 112, 128)  # train crop heights/widths, drawn independently
DEMO_CROPS = 3  # train crops per photo
DEMO_TRAIN_PRESETS = ("heavy", "light")  # one rendering of each per crop
DEMO_TEST_PRESET = "heavy"
DEMO_TEST_SIZE = (128, 160)  # (H, W) of the test images: whole scenes, scaled down
MANIFEST = "manifest.json"


def _demo_params(seed: int) -> dict[str, Any]:
    """Everything the demo dataset depends on; a manifest with other values is stale."""
    presets = set(DEMO_TRAIN_PRESETS) | {DEMO_TEST_PRESET}
    return {
        "seed": seed, "train_photos": list(TRAIN_PHOTOS), "test_photos": list(TEST_PHOTOS),
        "short_side": DEMO_SHORT_SIDE, "crop_sides": list(DEMO_CROP_SIDES), "crops": DEMO_CROPS,
        "train_presets": list(DEMO_TRAIN_PRESETS), "test_preset": DEMO_TEST_PRESET,
        "test_size": list(DEMO_TEST_SIZE),
        "presets": {k: json.loads(json.dumps(dataclasses.asdict(RAIN_PRESETS[k])))
                    for k in sorted(presets)},
    }


def _train_pairs(root: Path, seed: int) -> list[str]:
    """Random crops of the train photos, each rendered once per train preset."""
    names = []
    for photo in TRAIN_PHOTOS:
        rng = _photo_rng(seed, photo)
        img = load_photo(photo)
        scale = DEMO_SHORT_SIDE / min(img.shape[:2])
        if scale < 1:
            size = (round(img.shape[1] * scale), round(img.shape[0] * scale))  # cv2: (W, H)
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        for c in range(DEMO_CROPS):
            h, w = (int(v) for v in rng.choice(DEMO_CROP_SIDES, size=2))
            y = int(rng.integers(0, img.shape[0] - h + 1))
            x = int(rng.integers(0, img.shape[1] - w + 1))
            clean = img[y:y + h, x:x + w]
            for preset in DEMO_TRAIN_PRESETS:
                name = f"{photo}_c{c}_{preset}"
                _write_pair(root, name, add_rain(clean, preset, rng), clean)
                names.append(name)
    return names


def _is_complete(root: Path, params: dict[str, Any]) -> bool:
    """True if ``root`` holds a manifest with ``params`` and every file it lists."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("format") != DEMO_FORMAT or manifest.get("params") != params:
        return False
    files = manifest.get("files", {})
    if not (files.get("train") and files.get("test")):
        return False
    return all(
        (root / split / sub / f"{name}.png").is_file()
        for split in ("train", "test")
        for name in files[split]
        for sub in ("input", "target")
    )


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


def make_demo_dataset(root: str | os.PathLike, seed: int = 0) -> dict[str, Any]:
    """Build a small offline train/test deraining set under ``root``.

    Layout: ``<root>/{train,test}/{input,target}/<name>.png``, rainy input and clean target
    paired by file name, plus ``<root>/manifest.json``. Train: 3 random 96..128-pixel crops of
    each of the 11 :data:`TRAIN_PHOTOS` (short side first scaled to 256), each rendered with
    the "heavy" and the "light" preset (66 pairs). Test: the 4 :data:`TEST_PHOTOS`, whole scenes
    scaled and centre-cropped to 128x160, "heavy" rain (4 pairs). Train and test photos are
    disjoint. Deterministic in ``seed``; if the manifest already describes a complete dataset
    with the same parameters nothing is rewritten. Not a substitute for Rain200/Rain1200.

    Returns ``{"root", "train", "test": Path, "train_pairs", "test_pairs": int,
    "regenerated": bool}``.
    """
    root = Path(root)
    params = _demo_params(seed)
    regenerated = not _is_complete(root, params)
    if regenerated:
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale(root)  # before writing: an interrupted run leaves no valid manifest
        for split in ("train", "test"):
            for sub in ("input", "target"):
                (root / split / sub).mkdir(parents=True, exist_ok=True)
        files = {"train": _train_pairs(root / "train", seed), "test": list(TEST_PHOTOS)}
        make_paired_dataset(root / "test", "test", DEMO_TEST_PRESET, seed, DEMO_TEST_SIZE)
        manifest = {"format": DEMO_FORMAT, "params": params, "files": files}
        write_text_atomic(root / MANIFEST, json.dumps(manifest, indent=1))
    files = json.loads((root / MANIFEST).read_text())["files"]
    return {
        "root": root, "train": root / "train", "test": root / "test",
        "train_pairs": len(files["train"]), "test_pairs": len(files["test"]),
        "regenerated": regenerated,
    }


def demo_pair(size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(clean, rainy) uint8 RGB ``size x size``: scikit-image's "chelsea" photo, centre square,
    with the "heavy" synthetic rain of :mod:`data.synthetic_rain` (seeded)."""
    photo = load_photo("chelsea")
    h, w = photo.shape[:2]
    s = min(h, w)
    square = photo[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    clean = cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)
    return clean, add_rain(clean, "heavy", rng=np.random.default_rng(seed))
