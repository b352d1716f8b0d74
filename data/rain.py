"""Synthetic rain in the style of the deraining benchmarks (Rain100H/Rain200H, Rain200L).

What those sets show, and what :func:`add_rain` renders:

- many thin streaks, one or two pixels wide, semi-transparent (the scene shows through) and
  slightly blurred, brightest along the middle and fading at both ends;
- one dominant direction per image: every streak leans the same way, give or take a few
  degrees, and the direction changes from image to image;
- streaks at several depths: near ones long, wider and brighter, far ones short, thin, faint
  and more numerous;
- density and length that vary from image to image (Rain200L: sparse, short and light;
  Rain200H: dense and long);
- in heavy rain, a veil of accumulated rain (haze): the image is pulled towards a bright
  grey airlight, more at the top (far) than at the bottom (near).

The recipe is the usual one behind these sets (noise -> motion blur -> screen onto the
image): sparse random seeds are smeared along a tapered line kernel per depth layer, softened
by a small Gaussian, and screened onto the image (``1 - (1 - image)(1 - rain)``, so a streak
brightens dark pixels more than bright ones and never darkens any); then the haze veil.

A :class:`RainParams` gives *ranges*; :func:`draw_style` draws one :class:`RainStyle` (the
values of one image) from them, so one preset covers the variety of a benchmark. Everything
is deterministic for a given ``numpy`` generator state.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["RainParams", "RainStyle", "RAIN_PRESETS", "add_rain", "draw_style", "rain_layer",
           "resolve_preset", "streak_kernel"]

Range = tuple[float, float]


@dataclass(frozen=True)
class RainParams:
    """Ranges from which one image's rain is drawn (see :func:`draw_style`).

    density: probability that a pixel seeds a streak, summed over the depth layers.
    length: length in pixels of the nearest layer's streaks; farther layers are shorter.
    angle: dominant angle in degrees from vertical (positive: the top leans right, "/").
    jitter: largest deviation, in degrees, of a depth layer's angle from the dominant one.
    width: line width in pixels of the nearest layer (farther layers are thinner).
    opacity: brightness of the nearest layer's streaks in [0, 1] (farther ones are fainter);
        each streak gets a random fraction, 0.5 to 1, of it.
    blur: sigma in pixels of the Gaussian that softens the streaks; 0 disables it.
    layers: number of depth layers.
    haze: strength of the rain veil at the top of the image, in [0, 1]; 0 disables it.
    """

    density: Range
    length: Range
    angle: Range
    jitter: float
    width: Range
    opacity: Range
    blur: float
    layers: int
    haze: Range = (0.0, 0.0)


@dataclass(frozen=True)
class RainStyle:
    """The rain of one image: values drawn from a :class:`RainParams`."""

    density: float
    length: float
    angle: float
    width: float
    opacity: float
    haze: float
    airlight: float


# between light and heavy (as Rain1200 has light, medium and heavy rain): the "heavy" of before
# 2026-12-07, the input of the tools' --demo image (data.synthetic_rain.demo_pair)
_MEDIUM = RainParams(density=(0.006, 0.016), length=(18.0, 45.0), angle=(-30.0, 30.0), jitter=4.0,
                     width=(1.3, 2.2), opacity=(0.55, 0.9), blur=0.7, layers=4, haze=(0.1, 0.3))

RAIN_PRESETS: dict[str, RainParams] = {
    # Rain200L: sparse, short, thin and light streaks on an otherwise untouched image
    "light": RainParams(density=(0.003, 0.008), length=(8.0, 20.0), angle=(-25.0, 25.0), jitter=3.0,
                        width=(1.0, 1.3), opacity=(0.5, 0.85), blur=0.5, layers=2),
    "medium": _MEDIUM,
    # Rain200H / Rain100H: dense, long streaks at several depths, and a veil of accumulation;
    # medium's streaks, 2.5 times as many
    "heavy": dataclasses.replace(_MEDIUM, density=(0.015, 0.04)),
}

ParamsLike = str | RainParams


def resolve_preset(preset: ParamsLike) -> RainParams:
    """``preset`` itself, or the :data:`RAIN_PRESETS` entry of that name."""
    if isinstance(preset, RainParams):
        return preset
    if preset not in RAIN_PRESETS:
        raise ValueError(f"unknown rain preset {preset!r}; expected one of {tuple(RAIN_PRESETS)}")
    return RAIN_PRESETS[preset]


def draw_style(preset: ParamsLike, rng: np.random.Generator) -> RainStyle:
    """One image's rain: every range of the preset sampled uniformly (density log-uniformly)."""
    p = resolve_preset(preset)
    lo, hi = p.density
    density = float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if lo > 0 else 0.0
    return RainStyle(density=density, length=float(rng.uniform(*p.length)), angle=float(rng.uniform(*p.angle)),
                     width=float(rng.uniform(*p.width)), opacity=float(rng.uniform(*p.opacity)),
                     haze=float(rng.uniform(*p.haze)), airlight=float(rng.uniform(0.75, 0.95)))


def streak_kernel(length: float, angle: float, width: float, taper: bool = False) -> np.ndarray:
    """Anti-aliased line, ``length`` pixels long and ``width`` wide, centred in a square kernel.

    ``angle`` in degrees from vertical (positive: top leans right, "/"). A pixel's value is
    ``clip(width / 2 + 1/2 - d, 0, 1)`` with ``d`` the distance of its centre to the segment
    joining the centres of the end pixels, so a vertical line of width 1 is exactly ``length``
    ones. ``taper`` fades the line towards both ends (``sqrt(1 - u^2)`` of the position ``u``
    along it, -1 to 1), as a falling drop's streak does. Returns float32 (k, k), k odd, values in
    [0, 1]; symmetric under a 180-degree rotation, so ``cv2.filter2D`` (a correlation) applies
    it as a convolution.
    """
    size = 2 * (int(math.ceil(length + width)) // 2) + 1
    c = (size - 1) // 2
    theta = math.radians(angle)
    half = max((length - 1) / 2.0, 1e-6)
    ux, uy = math.sin(theta), -math.cos(theta)  # unit vector towards the top end (y down)
    y, x = np.mgrid[-c:c + 1, -c:c + 1].astype(np.float64)  # offsets from the centre
    t = np.clip(x * ux + y * uy, -half, half)  # projection onto the segment
    d = np.hypot(x - t * ux, y - t * uy)
    k = np.clip(width / 2.0 + 0.5 - d, 0.0, 1.0)
    if taper:
        k *= np.sqrt(np.clip(1.0 - (t / (half + 1.0)) ** 2, 0.0, 1.0))
    return k.astype(np.float32)


def _depth_layer(shape: tuple[int, int], s: RainStyle, p: RainParams, depth: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Streaks of one depth, ``depth`` from 0 (nearest) to 1 (farthest): HxW float32 in [0, 1]."""
    scale = 1.0 - 0.6 * depth  # far streaks: shorter, thinner, fainter ...
    share = (1.0 + depth) / sum(1.0 + d for d in _depths(p.layers))  # ... and more numerous
    seeds = rng.random(shape) < s.density * share
    brightness = rng.uniform(0.5, 1.0, size=shape) * s.opacity * (0.4 + 0.6 * scale)
    seeds = np.where(seeds, brightness, 0.0).astype(np.float32)
    angle = s.angle + float(rng.uniform(-p.jitter, p.jitter))
    kernel = streak_kernel(max(2.0, s.length * scale), angle, max(0.7, s.width * scale), taper=True)
    layer = cv2.filter2D(seeds, -1, kernel, borderType=cv2.BORDER_CONSTANT)
    return np.minimum(layer, 1.0)


def _depths(layers: int) -> list[float]:
    return [i / max(layers - 1, 1) for i in range(layers)]


def rain_layer(shape: tuple[int, int], preset: ParamsLike, rng: np.random.Generator,
               style: RainStyle | None = None) -> np.ndarray:
    """The HxW float32 streak layer in [0, 1] that :func:`add_rain` screens onto the image.
    ``style`` defaults to one drawn from ``preset`` with ``rng``."""
    p = resolve_preset(preset)
    s = draw_style(p, rng) if style is None else style
    screen = np.ones(shape, np.float32)  # layers combine as screens: 1 - prod(1 - layer)
    for depth in _depths(p.layers):
        screen *= 1.0 - _depth_layer(shape, s, p, depth, rng)
    rain = 1.0 - screen
    if p.blur > 0:
        rain = cv2.GaussianBlur(rain, (0, 0), p.blur, borderType=cv2.BORDER_REFLECT)
    return np.clip(rain, 0.0, 1.0)


def _as_float(img: np.ndarray) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"img must be an HxWx3 RGB array, got {getattr(img, 'shape', img)!r}")
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype in (np.float32, np.float64):
        if img.size and (img.min() < 0.0 or img.max() > 1.0):
            raise ValueError("float images must lie in [0, 1]")
        return img
    raise ValueError(f"img must be uint8 or float32/float64, got dtype {img.dtype}")


def add_rain(img: np.ndarray, preset: ParamsLike = "heavy", rng: np.random.Generator | None = None,
             style: RainStyle | None = None) -> np.ndarray:
    """Render rain onto an HxWx3 RGB image; returns a new array of the same shape and dtype.

    ``img`` is uint8 (0..255) or float32/float64 in [0, 1]. The streaks are screened onto every
    channel (rain is achromatic), then the haze veil pulls the image towards a grey airlight,
    strongest at the top; rain never darkens a pixel below its clean value unless the airlight
    is darker than it. Deterministic for a given ``rng`` state; ``rng=None`` draws from a fresh,
    unseeded generator (numpy's convention: not reproducible). ``style`` fixes the drawn values.
    """
    x = _as_float(img)
    p = resolve_preset(preset)
    rng = np.random.default_rng() if rng is None else rng
    s = draw_style(p, rng) if style is None else style
    rain = rain_layer(img.shape[:2], p, rng, s)[..., None]  # HxW -> HxWx1, broadcast over RGB
    out = 1.0 - (1.0 - x) * (1.0 - rain)
    if s.haze > 0:
        rows = np.linspace(1.0, 0.5, img.shape[0], dtype=np.float32)[:, None, None]  # far top, near bottom
        veil = s.haze * rows
        out = out * (1.0 - veil) + s.airlight * veil
    out = np.clip(out, 0.0, 1.0)
    if img.dtype == np.uint8:
        return np.round(out * 255.0).astype(np.uint8)
    return out.astype(img.dtype)
