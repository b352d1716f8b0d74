"""Metrics: closed forms, scikit-image agreement, and an independent MATLAB-convention reference."""
from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import cv2
import numpy as np
import pytest
import skimage.data
from scipy.signal import convolve2d
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from utils.evaluation import format_table, score, summarise
from utils.metrics import (
    PROTOCOLS,
    psnr,
    rgb_to_y_float,
    rgb_to_y_matlab,
    ssim,
)


# ---------------------------------------------------------------- inputs: real photos, degraded
def _noisy(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(img + rng.normal(0, sigma, img.shape)), 0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


def _blur(img: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(img, (5, 5), 1.2)


@pytest.fixture(scope="module")
def pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """(pred, target) uint8 RGB pairs, odd sizes, from CC0 skimage photos."""
    astro = skimage.data.astronaut()[40:141, 180:317]  # 101x137
    cat = skimage.data.chelsea()[60:157, 150:293]  # 97x143
    coffee = skimage.data.coffee()[100:189, 200:331]  # 89x131
    return [(_noisy(astro, 12.0, 0), astro), (_blur(cat), cat), (_jpeg(coffee, 20), coffee)]


# ---------------------------------------------------------------- independent MATLAB reference
def _y_decimal(img: np.ndarray, rounded: bool) -> np.ndarray:
    """rgb2ycbcr luma pixel by pixel in exact decimal arithmetic; MATLAB round = ROUND_HALF_UP."""
    c = (Decimal("65.481"), Decimal("128.553"), Decimal("24.966"))
    out = np.empty(img.shape[:2], dtype=np.float64)
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            r, g, b = (int(v) for v in img[i, j])
            y = Decimal(16) + (c[0] * r + c[1] * g + c[2] * b) / Decimal(255)
            out[i, j] = float(y.quantize(Decimal(1), rounding=ROUND_HALF_UP) if rounded else y)
    return out


def _fspecial_gaussian(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x, y = np.meshgrid(np.arange(size) - size // 2, np.arange(size) - size // 2)
    h = np.exp(-(x**2 + y**2) / (2 * sigma**2))
    return h / h.sum()


def _ssim_index_m(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al.'s ssim_index.m: filter2(w, ., 'valid') written as a 2-D convolution."""
    w = np.rot90(_fspecial_gaussian(), 2)  # filter2 correlates; convolve2d convolves
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    f = lambda z: convolve2d(z, w, mode="valid")  # noqa: E731
    mu1, mu2 = f(a), f(b)
    s1, s2, s12 = f(a * a) - mu1**2, f(b * b) - mu2**2, f(a * b) - mu1 * mu2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))
    return float(m.mean())


def _psnr_m(a: np.ndarray, b: np.ndarray) -> float:
    rmse = math.sqrt(float(np.mean((a - b) ** 2)))
    return 20 * math.log10(255 / rmse)


def test_matlab_y_matches_independent_reference(pairs):
    for pred, target in pairs:
        pred, target = pred[:37, :53], target[:37, :53]  # keep the decimal loops small
        yp, yt = _y_decimal(pred, True), _y_decimal(target, True)
        np.testing.assert_array_equal(rgb_to_y_matlab(pred), yp)
        assert psnr(pred, target, "matlab-y") == pytest.approx(_psnr_m(yp, yt), abs=1e-10)
        assert ssim(pred, target, "matlab-y") == pytest.approx(_ssim_index_m(yp, yt), abs=1e-10)


def test_esdnet_y_matches_independent_reference(pairs):
    for pred, target in pairs:
        pred, target = pred[:37, :53], target[:37, :53]
        yp, yt = _y_decimal(pred, False)[4:-4, 4:-4], _y_decimal(target, False)[4:-4, 4:-4]
        np.testing.assert_allclose(rgb_to_y_float(pred)[4:-4, 4:-4], yp, rtol=0, atol=1e-11)
        assert psnr(pred, target, "esdnet-y") == pytest.approx(_psnr_m(yp, yt), abs=1e-9)
        assert ssim(pred, target, "esdnet-y") == pytest.approx(_ssim_index_m(yp, yt), abs=1e-10)


def test_y_ssim_matches_skimage_gaussian_valid(pairs):
    # skimage crops (win - 1) / 2 = 5 pixels off the full SSIM map, which is the 'valid' region.
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    for pred, target in pairs:
        ym_p, ym_t = rgb_to_y_matlab(pred).astype(float), rgb_to_y_matlab(target).astype(float)
        ref = structural_similarity(ym_p, ym_t, **kw)
        assert ssim(pred, target, "matlab-y") == pytest.approx(ref, abs=1e-10)
        ye_p, ye_t = rgb_to_y_float(pred)[4:-4, 4:-4], rgb_to_y_float(target)[4:-4, 4:-4]
        ref = structural_similarity(ye_p, ye_t, **kw)
        assert ssim(pred, target, "esdnet-y") == pytest.approx(ref, abs=1e-10)


def test_rgb_matches_skimage(pairs):
    for pred, target in pairs:
        p, t = pred.astype(np.float64) / 255, target.astype(np.float64) / 255
        assert psnr(pred, target, "rgb") == peak_signal_noise_ratio(t, p, data_range=1)
        ref = structural_similarity(p, t, channel_axis=2, data_range=1, win_size=7)
        assert ssim(pred, target, "rgb") == pytest.approx(ref, abs=1e-12)


def test_protocols_give_different_numbers(pairs):
    pred, target = pairs[0]
    values = score(pred, target)
    assert list(values) == [f"{m}_{p}" for p in PROTOCOLS for m in ("psnr", "ssim")]
    assert len({round(values[f"psnr_{p}"], 6) for p in PROTOCOLS}) == 3
    assert 15 < values["psnr_matlab-y"] < 35 and 0.3 < values["ssim_matlab-y"] < 0.95


# ---------------------------------------------------------------- closed forms
def test_psnr_closed_form_rgb_offset():
    target = skimage.data.coffee()[::8, ::8] // 2  # values <= 127, no clipping below
    for d in (1, 3, 20):
        pred = target + np.uint8(d)
        assert psnr(pred, target, "rgb") == pytest.approx(10 * math.log10(255**2 / d**2), abs=1e-9)
        # the float luma moves by d * 219 / 255 everywhere
        expected = 10 * math.log10(255**2 / (d * 219 / 255) ** 2)
        assert psnr(pred, target, "esdnet-y") == pytest.approx(expected, abs=1e-9)


def test_psnr_closed_form_exact_grey_levels():
    # grey levels 0, 85, 170, 255 have integral luma 16, 89, 162, 235: both Y protocols exact.
    rng = np.random.default_rng(1)
    target = np.repeat((rng.integers(0, 3, (31, 45, 1)) * 85).astype(np.uint8), 3, axis=2)
    pred = target + np.uint8(85)
    np.testing.assert_array_equal(rgb_to_y_matlab(target), 16 + 73 * (target[..., 0] // 85))
    for protocol in ("matlab-y", "esdnet-y"):
        assert psnr(pred, target, protocol) == pytest.approx(20 * math.log10(255 / 73), abs=1e-9)
    assert psnr(pred, target, "rgb") == pytest.approx(20 * math.log10(3), abs=1e-9)


def test_ssim_closed_form_constant_images():
    # zero variance: SSIM = (2 mu1 mu2 + C1) / (mu1^2 + mu2^2 + C1), lumas 16 and 89.
    a = np.zeros((24, 30, 3), np.uint8)
    b = np.full((24, 30, 3), 85, np.uint8)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 16 * 89 + c1) / (16**2 + 89**2 + c1)
    for protocol in ("matlab-y", "esdnet-y"):
        assert ssim(a, b, protocol) == pytest.approx(expected, abs=1e-9)
    c1 = 0.01**2
    assert ssim(a, b, "rgb") == pytest.approx(c1 / ((85 / 255) ** 2 + c1), abs=1e-9)


def test_identical_images_and_symmetry(pairs):
    for pred, target in pairs:
        for protocol in PROTOCOLS:
            assert psnr(target, target, protocol) == math.inf
            assert ssim(target, target, protocol) == pytest.approx(1.0, abs=1e-12)
            assert psnr(pred, target, protocol) == psnr(target, pred, protocol)
            assert ssim(pred, target, protocol) == pytest.approx(
                ssim(target, pred, protocol), abs=1e-12
            )


# ---------------------------------------------------------------- rounding half away from zero
def _exact_ties() -> list[tuple[int, int, int]]:
    """RGB triples whose exact luma is k + 1/2, found in integers and confirmed with Fraction."""
    r, g, b = np.meshgrid(*(np.arange(96, dtype=np.int64),) * 3, indexing="ij")
    num = 65481 * r + 128553 * g + 24966 * b
    found = np.argwhere(num % 255000 == 127500)
    ties = []
    for rr, gg, bb in (tuple(int(v) for v in t) for t in found):
        y = 16 + (Fraction(65481, 1000) * rr + Fraction(128553, 1000) * gg
                  + Fraction(24966, 1000) * bb) / 255
        assert y - math.floor(y) == Fraction(1, 2)
        ties.append((rr, gg, bb))
    return ties


def test_matlab_y_rounds_ties_away_from_zero():
    ties = _exact_ties()
    assert len(ties) >= 4
    img = np.array(ties, dtype=np.uint8)[None]  # 1xNx3
    y_exact = [16 + (Fraction(65481, 1000) * r + Fraction(128553, 1000) * g
                     + Fraction(24966, 1000) * b) / 255 for r, g, b in ties]
    half_up = np.array([math.floor(y) + 1 for y in y_exact])
    half_even = np.array([round(y) for y in y_exact])  # Python rounds Fractions half to even
    assert (half_up != half_even).any()
    np.testing.assert_array_equal(rgb_to_y_matlab(img)[0], half_up)
    # np.round on the float luma is neither rule: it rounds float noise around .5
    assert (np.round(rgb_to_y_float(img))[0] != half_up).any()

    # ... and PSNR against black (luma exactly 16) uses the half-up luma
    tile = np.tile(img, (12, 1, 1))  # 12xNx3: an image made of tie pixels only
    black = np.zeros_like(tile)
    want = 10 * math.log10(255**2 / float(np.mean((half_up - 16.0) ** 2)))
    not_want = 10 * math.log10(255**2 / float(np.mean((half_even - 16.0) ** 2)))
    assert abs(want - not_want) > 1e-3
    assert psnr(tile, black, "matlab-y") == pytest.approx(want, abs=1e-10)


# ---------------------------------------------------------------- small images, validation
def test_small_images_give_nan_not_errors():
    rng = np.random.default_rng(2)
    img = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # noqa: E731
    a, b = img(10, 40), img(10, 40)
    assert math.isnan(ssim(a, b, "matlab-y")) and math.isfinite(psnr(a, b, "matlab-y"))
    assert math.isfinite(ssim(a, b, "rgb"))
    a, b = img(18, 40), img(18, 40)
    assert math.isnan(ssim(a, b, "esdnet-y")) and math.isfinite(ssim(a, b, "matlab-y"))
    assert math.isfinite(ssim(img(19, 19), img(19, 19), "esdnet-y"))
    a, b = img(8, 8), img(8, 8)
    assert math.isnan(psnr(a, b, "esdnet-y")) and math.isfinite(psnr(a, b, "rgb"))
    a, b = img(6, 30), img(6, 30)
    assert math.isnan(ssim(a, b, "rgb"))
    values = score(img(5, 5), img(5, 5))
    assert math.isfinite(values["psnr_matlab-y"]) and math.isnan(values["ssim_rgb"])


def test_mean_of_rows_is_a_row():
    """summarise gives a row in score's flat shape; means skip non-finite values; the table reads it."""
    rows = [{"name": "a", "psnr_rgb": 30.0, "ssim_rgb": 0.9, "psnr_matlab-y": float("inf"), "ssim_matlab-y": 1.0},
            {"name": "b", "psnr_rgb": 20.0, "ssim_rgb": float("nan"), "psnr_matlab-y": 25.0, "ssim_matlab-y": 0.5}]
    mean = summarise(rows, ["matlab-y", "rgb"])
    assert mean == {"psnr_matlab-y": 25.0, "ssim_matlab-y": 0.75, "psnr_rgb": 25.0, "ssim_rgb": 0.9}
    row = score(np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 9, np.uint8))
    assert list(summarise([row, row])) == list(row)  # the same keys, in the same order
    assert math.isnan(summarise([], ["rgb"])["psnr_rgb"])
    table = format_table({"derained": mean}, 2).splitlines()
    assert table[1:] == [f"{'derained':<14}{'matlab-y':<11}{25.0:>10.2f}{0.75:>9.4f}",
                         f"{'derained':<14}{'rgb':<11}{25.0:>10.2f}{0.9:>9.4f}"]


@pytest.mark.parametrize(
    "pred, target, message",
    [
        (np.zeros((16, 16, 3), np.float32), np.zeros((16, 16, 3), np.uint8), "uint8"),
        (np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8), "HxWx3"),
        (np.zeros((16, 16, 4), np.uint8), np.zeros((16, 16, 4), np.uint8), "HxWx3"),
        (np.zeros((16, 16, 3), np.uint8), np.zeros((16, 17, 3), np.uint8), "differ"),
        ([[0]], np.zeros((16, 16, 3), np.uint8), "numpy array"),
    ],
)
def test_invalid_inputs_raise(pred, target, message):
    for fn in (psnr, ssim):
        with pytest.raises(ValueError, match=message):
            fn(pred, target, "rgb")


def test_unknown_protocol_raises():
    a = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="matlab-y"):
        psnr(a, a, "y")
