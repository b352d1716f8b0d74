"""Image-quality metrics under the three conventions in circulation for deraining (SPEC 7).

Every number this project reports names its protocol, because the same output scores
differently under each:

- ``matlab-y``: the MATLAB script of the deraining papers. Luma of MATLAB's ``rgb2ycbcr`` on
  uint8 (``Y = round(16 + (65.481 R + 128.553 G + 24.966 B) / 255)``, R, G, B in 0..255,
  rounding half away from zero), PSNR with peak 255, SSIM of Wang et al. (11x11 Gaussian,
  sigma 1.5, K1 0.01, K2 0.03, L 255) over the ``'valid'`` region, no border crop.
- ``esdnet-y``: the released ESDNet/BasicSR-style evaluation. The same luma but not rounded,
  a 4-pixel border crop, then the same PSNR and SSIM.
- ``rgb``: the released VLIF test script. scikit-image ``peak_signal_noise_ratio`` and
  ``structural_similarity(channel_axis=2, win_size=7)`` on RGB floats in [0, 1] with
  ``data_range=1``.

All public functions take uint8 ``HxWx3`` RGB arrays (channel order R, G, B). Images too small
for a protocol's SSIM window give ``nan`` instead of an exception (see :func:`ssim`). Rows of
every metric under every protocol: :func:`utils.evaluation.score`. The differentiable SSIM of
the training loss is :func:`utils.losses.ssim_differentiable` (another function: float
tensors, zero padding, no luma).
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import correlate1d
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

PROTOCOLS = ("matlab-y", "esdnet-y", "rgb")

ESDNET_CROP = 4
SSIM_WIN = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2, SSIM_L = 0.01, 0.03, 255.0
RGB_SSIM_WIN = 7

# rgb2ycbcr luma coefficients times 1000, so that the luma can be computed exactly in integers:
# Y = 16 + (65481 R + 128553 G + 24966 B) / 255000.
_Y_COEFFS_MILLI = np.array([65481, 128553, 24966], dtype=np.int64)
_Y_DENOM = 255000


def _check_pair(pred: np.ndarray, target: np.ndarray) -> None:
    """Raise ValueError unless both are uint8 HxWx3 arrays of the same shape."""
    for name, img in (("pred", pred), ("target", target)):
        if not isinstance(img, np.ndarray):
            raise ValueError(f"{name} must be a numpy array, got {type(img).__name__}")
        if img.dtype != np.uint8:
            raise ValueError(
                f"{name} must be uint8 (0..255), got dtype {img.dtype}; "
                "convert floats with np.clip(np.round(x * 255), 0, 255).astype(np.uint8)"
            )
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"{name} must be an HxWx3 RGB array, got shape {img.shape}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {pred.shape} vs {target.shape}")


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


def rgb_to_y_matlab(img: np.ndarray) -> np.ndarray:
    """Luma of MATLAB ``rgb2ycbcr`` on uint8 RGB: ``HxWx3`` uint8 -> ``HxW`` uint8 in [16, 235].

    ``Y = round(16 + (65.481 R + 128.553 G + 24.966 B) / 255)``, evaluated exactly in integer
    arithmetic and rounded half away from zero (``floor(x + 0.5)``, all values are positive),
    as MATLAB's ``round`` does; ``np.round`` would round exact ties to even instead. Exact ties
    exist (e.g. some RGB triples give ``Y = k + 1/2`` exactly); MATLAB evaluates in doubles, so
    on those few pixels its result depends on its floating-point rounding and may differ by 1.
    """
    num = img.astype(np.int64) @ _Y_COEFFS_MILLI  # HxW, exact
    return (16 + (num + _Y_DENOM // 2) // _Y_DENOM).astype(np.uint8)


def rgb_to_y_float(img: np.ndarray) -> np.ndarray:
    """Unrounded luma: ``HxWx3`` uint8 -> ``HxW`` float64 in [16, 235].

    ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``. The released ESDNet evaluation computes
    this in float32; float64 here changes PSNR by far less than the reported 0.01 dB.
    """
    return 16.0 + (img.astype(np.float64) @ (_Y_COEFFS_MILLI / 1000.0)) / 255.0


def _crop(img: np.ndarray, border: int) -> np.ndarray:
    return img[border:-border, border:-border] if border > 0 else img


def _luma(img: np.ndarray, protocol: str) -> np.ndarray:
    """HxW float64 luma of ``img`` under a Y protocol, border crop applied."""
    if protocol == "matlab-y":
        return rgb_to_y_matlab(img).astype(np.float64)
    return _crop(rgb_to_y_float(img), ESDNET_CROP)


def _psnr_peak(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    """PSNR in dB of two float arrays; ``inf`` when equal, ``nan`` when empty."""
    if a.size == 0:
        return float("nan")
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(peak**2 / mse))


def gaussian_window_1d(size: int = SSIM_WIN, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian; its outer product is ``fspecial('gaussian', size, sigma)``."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable correlation keeping only the 'valid' part (MATLAB ``filter2(w*w', x, 'valid')``).

    ``x`` is HxW, the result (H - k + 1)x(W - k + 1) for a window of length k.
    """
    r = (w.size - 1) // 2
    y = correlate1d(x, w, axis=0, mode="constant")
    y = correlate1d(y, w, axis=1, mode="constant")
    return y[r : x.shape[0] - r, r : x.shape[1] - r]


def ssim_wang(x: np.ndarray, y: np.ndarray, data_range: float = SSIM_L) -> float:
    """Mean SSIM of Wang et al. (2004) between two HxW float images; ``nan`` if smaller than 11x11.

    11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, ``L = data_range``; statistics from
    ``filter2(window, ., 'valid')`` with variances ``E[x^2] - mu^2`` (as in ``ssim_index.m``),
    then the mean of the SSIM map.
    """
    if min(x.shape) < SSIM_WIN:
        return float("nan")
    w = gaussian_window_1d()
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = _filter_valid(x, w), _filter_valid(y, w)
    sxx = _filter_valid(x * x, w) - mu_x * mu_x
    syy = _filter_valid(y * y, w) - mu_y * mu_y
    sxy = _filter_valid(x * y, w) - mu_x * mu_y
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * sxy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2)
    return float(np.mean(num / den))


def psnr(pred: np.ndarray, target: np.ndarray, protocol: str) -> float:
    """PSNR in dB between uint8 HxWx3 RGB images under ``protocol`` (one of :data:`PROTOCOLS`).

    ``matlab-y``: rounded luma, peak 255. ``esdnet-y``: float luma, 4-pixel border crop, peak 255
    (``nan`` if the crop leaves nothing, i.e. H or W <= 8). ``rgb``: scikit-image
    ``peak_signal_noise_ratio(target, pred, data_range=1)`` on ``uint8 / 255``.
    Identical images give ``inf``. Symmetric in its two arguments.
    """
    _check_pair(pred, target)
    _check_protocol(protocol)
    if protocol == "rgb":
        if np.array_equal(pred, target):
            return float("inf")  # skimage would divide by zero (with a warning)
        return float(peak_signal_noise_ratio(target / 255.0, pred / 255.0, data_range=1))
    return _psnr_peak(_luma(pred, protocol), _luma(target, protocol), 255.0)


def ssim(pred: np.ndarray, target: np.ndarray, protocol: str) -> float:
    """Mean SSIM between uint8 HxWx3 RGB images under ``protocol`` (one of :data:`PROTOCOLS`).

    ``matlab-y``: :func:`ssim_wang` on the rounded luma. ``esdnet-y``: :func:`ssim_wang` on the
    float luma after a 4-pixel border crop. ``rgb``: scikit-image ``structural_similarity(
    channel_axis=2, data_range=1, win_size=7)`` on ``uint8 / 255`` (uniform window, sample
    covariance, skimage defaults otherwise).

    Returns ``nan`` (never raises) when the image is too small for the window: H or W < 11 for
    ``matlab-y``, < 19 for ``esdnet-y`` (11 after the crop), < 7 for ``rgb``.
    """
    _check_pair(pred, target)
    _check_protocol(protocol)
    if protocol == "rgb":
        if min(pred.shape[:2]) < RGB_SSIM_WIN:
            return float("nan")
        return float(
            structural_similarity(
                pred / 255.0, target / 255.0, channel_axis=2, data_range=1, win_size=RGB_SSIM_WIN
            )
        )
    return ssim_wang(_luma(pred, protocol), _luma(target, protocol))

