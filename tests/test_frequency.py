"""Frequency analysis of LIF / NI-LIF / VLIF (tools.frequency): closed forms, saturation, CLI."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from tools.frequency import analyse, high_frequency_share, main, neuron_input, power_spectrum, radial_profile


pytestmark = pytest.mark.usefixtures("one_thread")


def _cosine(freq: float, size: int = 64) -> np.ndarray:
    return np.cos(2 * np.pi * freq * np.arange(size))[None, :].repeat(size, 0)


@pytest.mark.parametrize("freq,share", [(0.375, 1.0), (0.0625, 0.0)])
def test_high_frequency_share_of_a_cosine(freq, share):
    power, radius = power_spectrum(_cosine(freq))
    assert high_frequency_share(power, radius, 0.25) == pytest.approx(share, abs=1e-3)


def test_radial_profile_peaks_at_the_cosine_frequency():
    power, radius = power_spectrum(_cosine(0.125))
    freqs, profile = radial_profile(power, radius, bins=32)
    assert profile.sum() == pytest.approx(1.0)
    assert abs(freqs[profile.argmax()] - 0.125) <= 0.5 / 32


def test_neuron_input_is_standardised_and_cropped_even():
    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    x = neuron_input(img, "grey", gain=2.0)
    assert x.shape == (1, 36, 52)
    assert x.mean() == pytest.approx(0, abs=1e-5) and x.std() == pytest.approx(2.0, rel=1e-4)
    assert neuron_input(img, "rgb").shape == (3, 36, 52)


def _rainy_pair(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A smooth gradient scene with the project's synthetic heavy rain."""
    from data.rain import add_rain

    yy, xx = np.mgrid[0:size, 0:size] / size
    clean = np.stack([0.3 + 0.3 * xx, 0.35 + 0.2 * yy, 0.4 + 0.1 * xx * yy], axis=2)
    clean = np.round(clean * 255).astype(np.uint8)
    return clean, add_rain(clean, "heavy", rng=np.random.default_rng(0))


def test_lif_is_a_saturating_intensity_triggered_high_pass_and_vlif_is_not():
    clean, rainy = _rainy_pair()
    result = analyse(rainy, clean)
    rows = result["rows"]
    assert 0 < result["rain_fraction"] < 0.8
    assert rows["LIF"]["hf_share"] > 2 * rows["input"]["hf_share"]
    assert rows["LIF"]["mean_on_rain"] > 2 * rows["LIF"]["mean_off_rain"]  # the rain fires it
    assert rows["LIF"]["second_pass_change"] == 0  # LIF(LIF(x)) == LIF(x): saturation
    assert rows["VLIF"]["second_pass_change"] > 0.05
    assert rows["VLIF"]["hf_share"] < rows["LIF"]["hf_share"]
    assert set(rows["NI-LIF"]["map"].ravel().tolist()) <= {k / 16 for k in range(17)}  # mean of 4 k/4


def test_cli_on_files_and_demo(tmp_path, capsys):
    clean, rainy = _rainy_pair()
    for name, img in (("rainy.png", rainy), ("clean.png", clean)):
        cv2.imwrite(str(tmp_path / name), img[..., ::-1])
    plot = tmp_path / "f.png"
    argv = ["--input", str(tmp_path / "rainy.png"), "--clean", str(tmp_path / "clean.png"), "--plot", str(plot)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "VLIF" in out and "rain mask" in out and plot.stat().st_size > 1000
    assert main(["--demo", "--size", "64", "--channels", "rgb"]) == 0
    assert "LIF" in capsys.readouterr().out
    assert main(["--input", str(tmp_path / "missing.png")]) == 2
