"""Tables and figures of :mod:`utils.energy.meter` summaries (plain, JSON-ready dicts); the command line is :mod:`tools.energy`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

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


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(a))  # our SOPs carry a float32 mean


def format_op_counter(summary: dict[str, Any], max_layers: int = 8) -> str:
    """Our counts beside spikingjelly op_counter's on the same forward
    (:func:`utils.energy.op_counter.measure_with_op_counter`), with the layers that differ."""
    oc = summary["op_counter"]
    multi = summary["input_kind_fraction"]["multi-level"] * summary["dense_macs"]
    lines = [
        "spikingjelly op_counter on the same forward (MACCounter without batch norm, SynOpCounter), per image:",
        f"  MACs: ours {summary['mac_ops']:,.0f} on real inputs; op_counter {oc['mac']:,.0f}, which also prices "
        f"the {multi:,.0f} dense MACs on multi-level spikes as MACs",
        f"  SOPs: ours {summary['sops']:,.0f} (dense MACs x mean events, k per k/4 spike); op_counter "
        f"{oc['synop']:,.0f} (binary inputs only, exact weight uses: no taps on zero padding)",
        f"  counted outside the hooked layers: {oc['outside_layers']['mac']:,.0f} MACs, "
        f"{oc['outside_layers']['synop']:,.0f} SynOps",
    ]
    differ = [r for r in oc["layers"]
              if not (_same(r["mac_ops"], r["op_counter_mac"]) and _same(r["sops"], r["op_counter_synop"]))]
    lines.append(f"  layers that differ: {len(differ)} of {len(oc['layers'])} (MACs, SOPs: ours / op_counter)")
    for r in differ[:max_layers]:
        lines.append(f"    {r['name']:<50}{r['input_kind']:>12}  {r['mac_ops']:,.0f} / {r['op_counter_mac']:,.0f}"
                     f"  {r['sops']:,.0f} / {r['op_counter_synop']:,.0f}")
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
