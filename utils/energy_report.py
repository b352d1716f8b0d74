"""Tables, figures and the command line of :mod:`utils.energy` (summaries are plain, JSON-ready dicts)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from utils.energy import E_AC_PJ, E_MAC_PJ, measure

G = 1e9


def _title(summary: dict[str, Any]) -> str:
    arch = summary.get("arch", "model")
    weights = summary.get("weights") or "random initialisation"
    sizes = ", ".join("x".join(map(str, s)) for s in summary.get("input_sizes", [])) or "?"
    T = summary.get("config", {}).get("T", "?")
    bn = ", tdBN batch statistics" if summary.get("batch_stats") else ""
    return f"{arch} ({weights}{bn}), input {sizes}, T={T}; per image over {summary['images']} image(s)"


def format_table(summary: dict[str, Any], title: str | None = None) -> str:
    """Per-block table, totals and the two energy conventions, as printed by the CLI."""
    c = summary["constants"]
    head = (f"{'block':<26}{'params':>11}{'dense GMAC':>12}{'real-in %':>10}{'GSOP':>9}"
            f"{'fire rate':>10}{'energy mJ':>11}{'conv. mJ':>10}")
    lines = [title or _title(summary), head, "-" * len(head)]

    def row(name, params, dense, mac_ops, sops, rate, energy, conv):
        real = f"{100 * mac_ops / dense:.1f}" if dense else "-"
        rate = f"{rate:.3f}" if rate is not None else "-"
        return (f"{name:<26}{params:>11,}{dense / G:>12.3f}{real:>10}{sops / G:>9.3f}"
                f"{rate:>10}{energy:>11.4f}{conv:>10.4f}")

    for b in summary["blocks"]:
        lines.append(row(b["name"], b["params"], b["dense_macs"], b["mac_ops"], b["sops"],
                         b["firing_rate"], b["energy_mj"], b["snn_convention_energy_mj"]))
    conv = summary["snn_convention"]
    lines.append("-" * len(head))
    lines.append(row("total", summary["params"], summary["dense_macs"], summary["mac_ops"], summary["sops"],
                     summary["mean_firing_rate"], summary["energy_mj"], conv["energy_mj"]))
    kinds = summary["input_kind_fraction"]
    lines += [
        "",
        f"dense MACs by input kind: real {100 * kinds['real']:.1f}%, binary spikes "
        f"{100 * kinds['binary']:.1f}%, multi-level spikes {100 * kinds['multi-level']:.1f}% (all-zero "
        f"inputs, counted as spikes without events: {100 * kinds['all-zero']:.1f}%)",
        f"energy (measured inputs): {summary['energy_mj']:.4f} mJ = {c['e_mac_pj']} pJ x "
        f"{summary['mac_ops'] / G:.3f} G MACs ({summary['energy_mac_mj']:.4f} mJ) + {c['e_ac_pj']} pJ x "
        f"{summary['sops'] / G:.3f} G SOPs ({summary['energy_ac_mj']:.4f} mJ)",
        f"ANN-equivalent (every dense MAC at {c['e_mac_pj']} pJ, one time step): "
        f"{summary['ann_energy_mj']:.4f} mJ ({summary['ann_macs'] / G:.3f} G MACs)",
        f"SNN-paper convention (first layer at E_MAC, every other layer dense MACs x upstream "
        f"firing rate x E_AC): {conv['energy_mj']:.4f} mJ",
    ]
    if conv["measured_over_convention"]:
        lines.append(f"measured / convention = {conv['measured_over_convention']:.1f}x: the convention "
                     "prices real-valued inputs as if they were spikes")
    return "\n".join(lines)


def format_layers(summary: dict[str, Any]) -> str:
    """Per-layer table: input kind seen, dense MACs, SOPs, upstream neuron and rate, energy."""
    head = (f"{'layer':<52}{'type':>8}{'input':>12}{'dense GMAC':>12}{'GSOP':>9}{'ev/in':>7}"
            f"{'up rate':>8}{'energy mJ':>11}")
    lines = [head, "-" * len(head)]
    for r in summary["layers"]:
        rate = f"{r['upstream_rate']:.3f}" if r["upstream_rate"] is not None else "-"
        lines.append(f"{r['name']:<52}{r['type']:>8}{r['input_kind']:>12}{r['dense_macs'] / G:>12.4f}"
                     f"{r['sops'] / G:>9.4f}{r['events_per_input']:>7.3f}{rate:>8}{r['energy_mj']:>11.5f}")
    lines += ["", f"{'neuron layer':<52}{'type':>8}{'rate':>8}{'events':>8}{'nonzero':>9}", "-" * 85]
    for r in summary["neurons"]:
        lines.append(f"{r['name']:<52}{r['type']:>8}{r['firing_rate']:>8.3f}{r['mean_events']:>8.3f}"
                     f"{r['nonzero_fraction']:>9.3f}")
    return "\n".join(lines)


def plot_summary(summary: dict[str, Any], path: str | Path) -> None:
    """Two panels by block: firing rates (bar = block mean, dots = neuron layers) and energy
    (MACs on real inputs + SOPs, stacked) against the SNN-paper convention (markers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = summary["constants"]
    blocks = summary["blocks"]
    names = [b["name"] for b in blocks]
    x = range(len(blocks))
    fig, (ax_rate, ax_energy) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    ax_rate.bar(x, [b["firing_rate"] or 0 for b in blocks], color="0.75", label="block mean")
    index = {n: i for i, n in enumerate(names)}
    pts = [(index[r["block"]], r["firing_rate"]) for r in summary["neurons"]]
    if pts:
        ax_rate.scatter(*zip(*pts), s=10, color="tab:blue", label="neuron layers (k/4 for NI-LIF)", zorder=3)
    ax_rate.set_ylabel("firing rate (mean output)")
    ax_rate.legend(fontsize=8)
    mac = [c["e_mac_pj"] * b["mac_ops"] / G for b in blocks]
    ac = [c["e_ac_pj"] * b["sops"] / G for b in blocks]
    ax_energy.bar(x, mac, color="tab:red", label=f"MACs on real inputs x {c['e_mac_pj']} pJ")
    ax_energy.bar(x, ac, bottom=mac, color="tab:green", label=f"SOPs x {c['e_ac_pj']} pJ")
    ax_energy.scatter(x, [b["snn_convention_energy_mj"] for b in blocks], marker="_", s=200,
                      color="k", label="SNN-paper convention", zorder=3)
    ax_energy.set_yscale("log")
    ax_energy.set_ylabel("energy per image (mJ)")
    ax_energy.set_xticks(list(x), names, rotation=45, ha="right", fontsize=8)
    ax_energy.legend(fontsize=7, loc="upper right", framealpha=0.9)
    ax_rate.set_title(_title(summary), fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# command line ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m utils.energy",
        description="Per-layer MACs, synaptic operations, firing rates and energy of VLIFNet / ESDNet.",
    )
    p.add_argument("--arch", choices=("vlifnet", "esdnet"), default=None,
                   help="network (default: read from --weights, else vlifnet)")
    p.add_argument("--weights", type=str, default=None, help="checkpoint; without it: random initialisation")
    p.add_argument("--use_refinement", action=argparse.BooleanOptionalAction, default=None,
                   help="VLIFNet with the 4 refinement SDEMs (released Rain200L model)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", type=str, help="image file (RGB, scaled to [0, 1])")
    src.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="random image of this size")
    src.add_argument("--demo", type=int, nargs="?", const=256, metavar="SIDE",
                     help="built-in photo with synthetic heavy rain, SIDE x SIDE (default 256)")
    p.add_argument("--batch_stats", action=argparse.BooleanOptionalAction, default=False,
                   help="normalise with batch statistics (train-mode tdBN) instead of running ones; "
                   "random weights are nearly silent in eval mode, their running statistics being the "
                   "initial 0 / 1")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights and the random image")
    p.add_argument("--e_mac", type=float, default=E_MAC_PJ, help="energy per MAC, pJ")
    p.add_argument("--e_ac", type=float, default=E_AC_PJ, help="energy per accumulate (SOP), pJ")
    p.add_argument("--device", type=str, default="cpu", help="torch device")
    p.add_argument("--json", type=str, default=None, help="write the full summary here")
    p.add_argument("--plot", type=str, default=None, help="write a PNG of firing rates and energy by block")
    p.add_argument("--layers", action=argparse.BooleanOptionalAction, default=False,
                   help="also print the per-layer table")
    return p


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """RGB image file -> ``[1, 3, H, W]`` float in [0, 1]."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {path}")
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float() / 255.0  # [1, 3, H, W]


def _model_from_args(args: argparse.Namespace) -> tuple[nn.Module, str]:
    from models import build_model
    from utils.checkpoint import load_model

    overrides = {} if args.use_refinement is None else {"use_refinement": args.use_refinement}
    if args.weights:
        model, ckpt = load_model(args.weights, arch=args.arch, map_location=args.device, **overrides)
        return model, args.arch or ckpt["arch"]
    arch = args.arch or "vlifnet"
    if arch == "esdnet":
        overrides.pop("use_refinement", None)
    torch.manual_seed(args.seed)
    return build_model(arch, **overrides).to(args.device).eval(), arch


def _image_from_args(args: argparse.Namespace) -> tuple[torch.Tensor, str]:
    """The ``[1, 3, H, W]`` input in [0, 1] and a label for the report."""
    if args.input:
        return load_image(args.input), args.input
    if args.demo is not None:
        from utils.frequency import demo_pair

        rainy = demo_pair(args.demo)[1]  # H x W x 3 uint8
        return torch.from_numpy(rainy).permute(2, 0, 1).unsqueeze(0).float() / 255.0, f"demo {args.demo}"
    generator = torch.Generator().manual_seed(args.seed)
    return torch.rand(1, 3, *args.size, generator=generator), f"random {args.size[0]}x{args.size[1]}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m utils.energy``: print the per-block table; optionally JSON and a figure."""
    from utils.checkpoint import CheckpointError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.demo is not None and args.demo < 8:
        parser.error("--demo SIDE must be at least 8")
    try:
        model, arch = _model_from_args(args)
        img, label = _image_from_args(args)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model.train(args.batch_stats)
    summary = measure(model, img.to(args.device), args.e_mac, args.e_ac)
    summary.update(arch=arch, config=dict(getattr(model, "config", {})), weights=args.weights, input=label,
                   batch_stats=args.batch_stats)
    print(format_table(summary))
    if args.layers:
        print(format_layers(summary))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=1))
    if args.plot:
        plot_summary(summary, args.plot)
    return 0
