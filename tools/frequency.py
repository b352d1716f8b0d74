"""What LIF, NI-LIF and VLIF keep of a rainy image, seen in the frequency domain.

The VLIFNet paper calls LIF neurons "intensity-triggered high-frequency indicators": a LIF
keeps the bright, high-frequency content (rain streaks), and applying it again adds nothing
("frequency saturation"); VLIF's patch-to-time walk over the r x r sub-pixels is meant to add
spatial context. This module makes that visible with the project's own neurons::

    python -m tools.frequency --demo --plot freq.png
    python -m tools.frequency --input rainy.png [--clean clean.png] --plot freq.png

Choices (all options):
- grey by default (ITU-R BT.601 luma); ``--channels rgb`` runs every channel separately and
  averages the power spectra;
- the map is standardised (zero mean, unit variance, times ``--gain``), like a batch-normalised
  feature, and repeated over T = 4 steps, as the networks repeat their input (direct encoding);
- the neurons: ``models.neurons.lif()`` (binary), ``NILIF`` per pixel (multi-level k/4) and
  ``VLIF`` (NI-LIF over patch-to-time, bilinear resize) with ``channel_adjust`` fixed to the
  average of the r*r sub-pixel channels; a neuron's map is its output averaged over T;
- spectra: mean removed, Hann window, power ``|FFT|^2``; the high-frequency share is the power
  above ``--cutoff`` cycles/pixel (radial, Nyquist = 0.5) over the total;
- "second pass" applies each neuron to its own T-step output: an unchanged output is saturation.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from data.io import DataError, read_image
from data.synthetic_rain import demo_pair
from models.neurons import NILIF, VLIF, lif

LUMA = np.array([0.299, 0.587, 0.114], np.float32)
NEURONS = ("LIF", "NI-LIF", "VLIF")


def neuron_input(img: np.ndarray, channels: str = "grey", gain: float = 1.0) -> np.ndarray:
    """HxWx3 RGB (uint8 or float in [0, 1]) -> ``[C, H', W']`` standardised maps, C = 1 (grey)
    or 3 (rgb); sides cropped to even numbers for VLIF's r = 2."""
    x = img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0)
    x = x[: x.shape[0] // 2 * 2, : x.shape[1] // 2 * 2]
    maps = (x @ LUMA)[None] if channels == "grey" else x.transpose(2, 0, 1)  # [C, H, W]
    mean = maps.mean(axis=(1, 2), keepdims=True)
    std = maps.std(axis=(1, 2), keepdims=True) + 1e-8
    return np.ascontiguousarray((maps - mean) / std * gain, dtype=np.float32)


class _Neurons:
    """The three neurons on ``x_seq`` ``[T, C, 1, H, W]`` (channels as the batch axis)."""

    def __init__(self, r: int = 2):
        self.lif = lif()
        self.nilif = NILIF()
        self.vlif = VLIF(1, r)
        with torch.no_grad():
            self.vlif.channel_adjust.weight.fill_(1.0 / (r * r))  # average of the sub-pixels

    def __call__(self, name: str, x_seq: torch.Tensor) -> torch.Tensor:
        if name == "LIF":
            self.lif.reset()
            out = self.lif(x_seq)
            self.lif.reset()
            return out
        return self.nilif(x_seq) if name == "NI-LIF" else self.vlif(x_seq)


def power_spectrum(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centred power spectrum of an HxW map (mean removed, Hann window) and the radial
    frequency of every bin in cycles/pixel."""
    h, w = m.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fftshift(np.fft.fft2((m - m.mean()) * window))) ** 2
    fy, fx = np.fft.fftshift(np.fft.fftfreq(h)), np.fft.fftshift(np.fft.fftfreq(w))
    return power, np.hypot(*np.meshgrid(fy, fx, indexing="ij"))


def high_frequency_share(power: np.ndarray, radius: np.ndarray, cutoff: float) -> float:
    """Share of the power above ``cutoff`` cycles/pixel (0 for a constant map)."""
    total = power.sum()
    return float(power[radius > cutoff].sum() / total) if total > 0 else 0.0


def radial_profile(power: np.ndarray, radius: np.ndarray, bins: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Mean power in ``bins`` rings up to Nyquist (0.5), normalised to sum 1; (centres, profile)."""
    edges = np.linspace(0, 0.5, bins + 1)
    idx = np.clip(np.digitize(radius.ravel(), edges) - 1, 0, bins - 1)
    sums = np.bincount(idx, power.ravel(), bins)
    counts = np.maximum(np.bincount(idx, minlength=bins), 1)
    profile = sums / counts
    return (edges[:-1] + edges[1:]) / 2, profile / max(profile.sum(), 1e-30)


def _spectra(maps: np.ndarray, cutoff: float) -> dict[str, Any]:
    """Channel-averaged power spectrum, radial profile and high-frequency share of ``[C, H, W]``."""
    power, radius = power_spectrum(maps[0])
    for m in maps[1:]:
        power = power + power_spectrum(m)[0]
    power /= len(maps)
    freqs, profile = radial_profile(power, radius)
    return dict(power=power, freqs=freqs, profile=profile, hf_share=high_frequency_share(power, radius, cutoff))


def analyse(
    rainy: np.ndarray, clean: np.ndarray | None = None, T: int = 4, cutoff: float = 0.25,
    gain: float = 1.0, channels: str = "grey", rain_threshold: float = 0.1,
) -> dict[str, Any]:
    """Maps, spectra and statistics for the input and its LIF / NI-LIF / VLIF outputs.

    ``rainy`` / ``clean``: HxWx3 RGB. With ``clean``, pixels whose grey value the rain raised
    by more than ``rain_threshold`` form the rain mask, and each neuron's mean output on and off
    the rain is reported. Returns ``{"rows": {name: {...}}, "cutoff", "rain_fraction", ...}``.
    """
    x = neuron_input(rainy, channels, gain)  # [C, H, W]
    x_seq = torch.from_numpy(x)[None, :, None].repeat(T, 1, 1, 1, 1)  # [T, C, 1, H, W]
    mask = None
    if clean is not None:
        if clean.shape != rainy.shape:
            raise ValueError(f"clean {clean.shape} and rainy {rainy.shape} images differ in size")
        mask = (_grey(rainy) - _grey(clean))[0] > rain_threshold  # [H, W]
    rows: dict[str, dict[str, Any]] = {"input": dict(map=x, **_spectra(x, cutoff))}
    if clean is not None:
        c = neuron_input(clean, channels, gain)
        rows["clean"] = dict(map=c, **_spectra(c, cutoff))
    neurons = _Neurons()
    with torch.no_grad():
        for name in NEURONS:
            out = neurons(name, x_seq)
            again = neurons(name, out)
            m = out.mean(0)[:, 0].numpy()  # [C, H, W]
            row = dict(map=m, **_spectra(m, cutoff), mean=float(m.mean()))
            row["second_pass_change"] = float((again - out).abs().mean() / out.abs().mean().clamp_min(1e-12))
            row["second_pass_hf_share"] = _spectra(again.mean(0)[:, 0].numpy(), cutoff)["hf_share"]
            if mask is not None:
                grey = m.mean(0)
                row["mean_on_rain"], row["mean_off_rain"] = float(grey[mask].mean()), float(grey[~mask].mean())
            rows[name] = row
    return dict(rows=rows, cutoff=cutoff, T=T, gain=gain, channels=channels,
                rain_fraction=float(mask.mean()) if mask is not None else None)


def _grey(img: np.ndarray) -> np.ndarray:
    x = img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0)
    return (x[: x.shape[0] // 2 * 2, : x.shape[1] // 2 * 2] @ LUMA)[None]  # [1, H, W]


def format_report(result: dict[str, Any]) -> str:
    """One line per map: mean, share of power above the cut-off, second pass, rain selectivity."""
    c = result["cutoff"]
    head = f"{'map':<8}{'mean':>8}{f'power > {c} cyc/px':>20}{'2nd pass: change':>18}{'2nd: power >':>14}"
    if result["rain_fraction"] is not None:
        head += f"{'on rain':>9}{'off rain':>10}"
    lines = [f"T={result['T']}, {result['channels']}, standardised x {result['gain']}", head, "-" * len(head)]
    for name, row in result["rows"].items():
        mean = f"{row['mean']:.3f}" if "mean" in row else "-"
        line = f"{name:<8}{mean:>8}{100 * row['hf_share']:>19.2f}%"
        if "second_pass_change" in row:
            line += f"{100 * row['second_pass_change']:>17.2f}%{100 * row['second_pass_hf_share']:>13.2f}%"
            if "mean_on_rain" in row:
                line += f"{row['mean_on_rain']:>9.3f}{row['mean_off_rain']:>10.3f}"
        lines.append(line)
    if result["rain_fraction"] is not None:
        lines.append(f"rain mask: {100 * result['rain_fraction']:.1f}% of pixels (grey raised by the rain)")
    return "\n".join(lines)


def _display_spectrum(power: np.ndarray, side: int = 64) -> np.ndarray:
    """log10 of the power share per bin, block-averaged down to about ``side`` pixels (a
    smaller, less noisy picture on a scale shared by all panels)."""
    f = max(1, min(power.shape) // side)
    h, w = power.shape[0] // f * f, power.shape[1] // f * f
    p = power[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))  # [h/f, w/f]
    return np.log10(p / max(p.sum(), 1e-30) + 1e-12)


def plot_analysis(result: dict[str, Any], path: str | Path) -> None:
    """Maps (top), log amplitude spectra (middle) and radial power profiles (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {k: v for k, v in result["rows"].items() if k != "clean"}
    n = len(rows)
    fig = plt.figure(figsize=(3 * n, 8.5))
    grid = fig.add_gridspec(3, n, height_ratios=(1, 1, 1.1))
    for i, (name, row) in enumerate(rows.items()):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(row["map"].mean(0), cmap="gray")
        ax.set_title(f"{name}" + (" (time mean)" if name != "input" else ""), fontsize=9)
        ax.axis("off")
        ax = fig.add_subplot(grid[1, i])
        ax.imshow(_display_spectrum(row["power"]), cmap="magma", vmin=-9, vmax=-1)
        ax.set_title(f"power > {result['cutoff']}: {100 * row['hf_share']:.1f}%", fontsize=9)
        ax.axis("off")
    ax = fig.add_subplot(grid[2, :])
    for name, row in result["rows"].items():
        ax.semilogy(row["freqs"], row["profile"], label=name, ls="--" if name == "clean" else "-")
    ax.axvline(result["cutoff"], color="k", lw=0.8, ls=":")
    ax.set_xlabel("radial frequency (cycles / pixel)")
    ax.set_ylabel("share of power per ring")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.frequency", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", type=str, help="rainy image (RGB)")
    src.add_argument("--demo", action="store_true", help="built-in photo with synthetic 'medium' rain")
    p.add_argument("--clean", type=str, default=None, help="clean image of --input, for the rain mask")
    p.add_argument("--channels", choices=("grey", "rgb"), default="grey", help="luma, or every RGB channel")
    p.add_argument("--gain", type=float, default=1.0, help="neuron input = standardised image x gain")
    p.add_argument("--cutoff", type=float, default=0.25, help="high-frequency cut-off, cycles/pixel (<= 0.5)")
    p.add_argument("--T", type=int, default=4, help="time steps (the image is repeated)")
    p.add_argument("--size", type=int, default=256, help="side of the --demo image")
    p.add_argument("--plot", type=str, default=None, help="write a PNG of maps, spectra and profiles")
    args = p.parse_args(argv)
    try:
        if args.demo:
            clean, rainy = demo_pair(args.size)
        else:
            rainy = read_image(args.input)
            clean = read_image(args.clean) if args.clean else None
        result = analyse(rainy, clean, T=args.T, cutoff=args.cutoff, gain=args.gain, channels=args.channels)
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(result))
    if args.plot:
        plot_analysis(result, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
