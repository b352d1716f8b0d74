"""The rain renderer: determinism, value range, screen blending, one dominant angle per image,
depth layers, haze, streak geometry, and the light/heavy presets' range."""
from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import pytest

from data import rain as rain_module
from data.rain import RAIN_PRESETS, RainParams, add_rain, draw_style, rain_layer, streak_kernel
from data.synthetic_rain import load_photo


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return load_photo("astronaut")[::3, ::3][:150, :161]  # 150x161x3 uint8


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(255**2 / float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def _params(**changes) -> RainParams:
    """A single-valued preset (every range one point), for geometry tests."""
    base = RainParams(density=(0.004, 0.004), length=(25.0, 25.0), angle=(0.0, 0.0), jitter=0.0,
                      width=(1.0, 1.0), opacity=(0.8, 0.8), blur=0.0, layers=1)
    return dataclasses.replace(base, **changes)


def _dominant_gradient_angle(layer: np.ndarray) -> float:
    """Structure-tensor orientation in degrees of the gradient (x right, y down), in (-90, 90]."""
    gx = cv2.Scharr(layer, cv2.CV_64F, 1, 0)  # Scharr: far less orientation bias than Sobel
    gy = cv2.Scharr(layer, cv2.CV_64F, 0, 1)
    jxx, jyy, jxy = (gx * gx).sum(), (gy * gy).sum(), (gx * gy).sum()
    return math.degrees(0.5 * math.atan2(2 * jxy, jxx - jyy))


def test_deterministic_for_a_given_rng(photo):
    a = add_rain(photo, "heavy", np.random.default_rng(7))
    b = add_rain(photo, "heavy", np.random.default_rng(7))
    c = add_rain(photo, "heavy", np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert _psnr(a, c) < 30


@pytest.mark.parametrize("preset", sorted(RAIN_PRESETS))
def test_dtype_range_and_float_uint8_agree(photo, preset):
    out = add_rain(photo, preset, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.shape == photo.shape
    ref = photo.astype(np.float64) / 255
    out_f = add_rain(ref, preset, np.random.default_rng(0))
    assert out_f.dtype == np.float64 and 0.0 <= out_f.min() and out_f.max() <= 1.0
    assert np.abs(out_f * 255 - out).max() <= 0.5 + 1e-3  # uint8 is the rounded float result
    assert add_rain(ref.astype(np.float32), preset, np.random.default_rng(0)).dtype == np.float32


def test_streaks_are_screened_and_achromatic(photo):
    """out = 1 - (1 - x)(1 - rain) with one rain layer for all channels: never darker, and the
    same rain recovered from every channel."""
    x = photo.astype(np.float64) / 255
    out = add_rain(x, "light", np.random.default_rng(1))
    assert (out >= x - 1e-12).all()
    open_ = (x < 0.95).all(axis=2)
    rain = (out - x)[open_] / (1 - x)[open_]
    assert np.abs(rain - rain[:, :1]).max() < 1e-6
    assert rain.max() > 0.3 and np.mean(rain[:, 0] > 0.02) < 0.4  # visible streaks, background untouched


def test_rain_layer_matches_add_rain_on_black():
    black = np.zeros((64, 80, 3), np.float64)
    out = add_rain(black, "light", np.random.default_rng(4))
    layer = rain_layer((64, 80), "light", np.random.default_rng(4))
    np.testing.assert_allclose(out[..., 0], layer, atol=1e-6)


@pytest.mark.parametrize("angle", [-25.0, 0.0, 25.0])
def test_streaks_follow_the_dominant_angle(angle):
    # a streak leaning its top right by `angle` has its gradient at `angle` from the x axis
    layer = rain_layer((200, 200), _params(angle=(angle, angle), layers=3, jitter=0.0), np.random.default_rng(3))
    assert _dominant_gradient_angle(layer) == pytest.approx(angle, abs=2.0)


def test_one_dominant_angle_per_image_varying_between_images():
    """Depth layers stay within the jitter of one angle; another seed draws another angle."""
    p = RAIN_PRESETS["heavy"]
    angles = [draw_style(p, np.random.default_rng(seed)).angle for seed in range(6)]
    assert max(angles) - min(angles) > 15 and all(p.angle[0] <= a <= p.angle[1] for a in angles)
    for seed in range(3):
        style = draw_style(p, np.random.default_rng(seed))
        layer = rain_layer((256, 256), p, np.random.default_rng(seed + 10), style)
        assert _dominant_gradient_angle(layer) == pytest.approx(style.angle, abs=p.jitter + 2.0)


def test_near_streaks_are_longer_and_brighter_than_far_ones():
    """Depth layers: the nearest layer's streaks are longer and brighter than the farthest's."""
    p = _params(layers=3, density=(0.0005, 0.0005))
    style = draw_style(p, np.random.default_rng(0))
    stats = {}
    for depth in (0.0, 1.0):
        layer = rain_module._depth_layer((400, 400), style, p, depth, np.random.default_rng(5))
        count, labels, boxes, _ = cv2.connectedComponentsWithStats((layer > 0.02).astype(np.uint8))
        assert count > 15  # many separate streaks
        heights = boxes[1:, cv2.CC_STAT_HEIGHT]
        peaks = [layer[labels == i].max() for i in range(1, count)]
        stats[depth] = (np.median(heights), np.median(peaks))
    assert stats[0.0][0] > 1.5 * stats[1.0][0]  # longer
    assert stats[0.0][1] > 1.3 * stats[1.0][1]  # brighter


def test_haze_is_a_veil_strongest_at_the_top():
    p = _params(density=(0.0, 0.0), haze=(0.2, 0.2))
    black = np.zeros((50, 20, 3), np.float64)
    style = draw_style(p, np.random.default_rng(0))
    out = add_rain(black, p, np.random.default_rng(0), style)
    assert out[0].mean() == pytest.approx(0.2 * style.airlight, rel=1e-5)
    assert out[-1].mean() == pytest.approx(0.1 * style.airlight, rel=1e-5)
    assert 0.75 <= style.airlight <= 0.95


def test_heavy_rain_degrades_more_than_light():
    for name in ("chelsea", "coffee"):
        img = load_photo(name)[::2, ::2]
        for seed in range(2):
            light = add_rain(img, "light", np.random.default_rng(seed))
            heavy = add_rain(img, "heavy", np.random.default_rng(seed))
            psnr_l, psnr_h = _psnr(light, img), _psnr(heavy, img)
            assert psnr_h + 8 < psnr_l
            assert 25 < psnr_l < 36 and 10 < psnr_h < 19  # Rain200L-like and Rain100H/Rain200H-like ranges
            assert 0.05 < np.mean((light != img).any(axis=2)) < 0.3  # light: sparse streaks


def test_draw_style_stays_in_the_ranges():
    for preset in RAIN_PRESETS.values():
        for seed in range(20):
            s = draw_style(preset, np.random.default_rng(seed))
            assert preset.density[0] <= s.density <= preset.density[1]
            assert preset.length[0] <= s.length <= preset.length[1]
            assert preset.opacity[0] <= s.opacity <= preset.opacity[1]
            assert preset.haze[0] <= s.haze <= preset.haze[1]


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
    tapered = streak_kernel(21, 0.0, 1, taper=True)
    column = tapered[:, tapered.shape[1] // 2]
    assert column.max() == pytest.approx(1.0, abs=1e-6) and column[column > 0].min() < 0.6  # faded ends
    np.testing.assert_allclose(tapered, np.rot90(tapered, 2), atol=1e-6)


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
