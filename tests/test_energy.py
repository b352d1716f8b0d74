"""Energy and spike accounting (SPEC 9): hand-computed toy cases, hooks, full-size counts, CLI."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import layer, neuron

from models import build_model
from models.neurons import NILIF, lif
from tools.energy import main
from utils.energy.meter import E_AC_PJ, E_MAC_PJ, EnergyMeter, classify_input, measure
from utils.energy.report import format_layers, format_table


pytestmark = pytest.mark.usefixtures("one_thread")


class Repeat(nn.Module):
    """Toy network front end like the derainers': ``[B, ...]`` -> ``[T, B, ...]`` -> body."""

    def __init__(self, body: nn.Module, T: int = 4):
        super().__init__()
        self.T, self.body = T, body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.unsqueeze(0).repeat(self.T, *([1] * x.dim())))


def _conv(cin: int, cout: int, k: int = 1, weight: float | None = None, **kw) -> layer.Conv2d:
    conv = layer.Conv2d(cin, cout, k, bias=False, step_mode="m", **kw)
    if weight is not None:
        nn.init.constant_(conv.weight, weight)
    return conv


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize(
    "values,kind,events",
    [
        ([0.0, 1.0, 1.0, 0.0], "binary", 0.5),
        ([0.0, 0.0], "binary", 0.0),
        ([0.0, 0.25, 0.5, 1.0], "multi-level", (0 + 1 + 2 + 4) / 4),
        ([0.75, 0.75], "multi-level", 3.0),
        ([0.0, 0.3, 1.0], "real", 0.0),
        ([0.0, 1.25], "real", 0.0),  # a multiple of 1/4 above 1 is no spike
        ([-0.25, 0.5], "real", 0.0),
    ],
)
def test_input_kind_is_decided_from_values(values, kind, events):
    assert classify_input(torch.tensor(values)) == (kind, pytest.approx(events))


def _single_conv_summary(x: torch.Tensor) -> dict:
    conv = nn.Conv2d(2, 3, 3, bias=False)  # 5x6 -> 3x4, dense MACs 3*3*4 * 2*9 = 648
    return measure(nn.Sequential(conv), x)


def test_all_ones_binary_input_costs_sops_equal_to_macs():
    s = _single_conv_summary(torch.ones(1, 2, 5, 6))
    assert s["dense_macs"] == 648 and s["sops"] == 648 and s["mac_ops"] == 0
    assert s["energy_mj"] == pytest.approx(E_AC_PJ * 648 * 1e-9)
    assert s["layers"][0]["input_kind"] == "binary"


def test_zero_input_costs_nothing():
    s = _single_conv_summary(torch.zeros(1, 2, 5, 6))
    assert s["dense_macs"] == 648 and s["sops"] == 0 and s["mac_ops"] == 0 and s["energy_mj"] == 0
    assert s["input_kind_fraction"]["all-zero"] == 1


def test_multi_level_spike_counts_k_events():
    x = torch.zeros(1, 2, 5, 6)
    x[:, 0] = 0.75  # k = 3 on half the elements, 0 elsewhere: 1.5 events per element
    s = _single_conv_summary(x)
    assert s["layers"][0]["input_kind"] == "multi-level"
    assert s["sops"] == pytest.approx(648 * 1.5) and s["mac_ops"] == 0


def test_real_input_counts_macs():
    s = _single_conv_summary(torch.rand(1, 2, 5, 6) * 0.9 + 0.05)
    assert s["mac_ops"] == 648 and s["sops"] == 0
    assert s["energy_mj"] == pytest.approx(E_MAC_PJ * 648 * 1e-9)
    assert s["ann_energy_mj"] == pytest.approx(E_MAC_PJ * 648 * 1e-9)


def test_linear_conv3d_grouped_and_strided_macs():
    cases = [
        (nn.Linear(5, 7), torch.rand(2, 5), 2 * 7 * 5),
        (nn.Conv3d(4, 6, (4, 1, 1), stride=(4, 1, 1), bias=False), torch.rand(1, 4, 16, 3, 5), 6 * 4 * 15 * 4 * 4),
        (nn.Conv2d(4, 6, 3, padding=1, groups=2), torch.rand(1, 4, 8, 8), 6 * 64 * 2 * 9),
        (nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.rand(2, 3, 8, 10), 2 * 8 * 4 * 5 * 3 * 9),
        (nn.ConvTranspose2d(4, 2, 2, stride=2), torch.rand(1, 4, 3, 3), 4 * 9 * 2 * 4),
    ]
    for module, x, expected in cases:
        s = measure(module, x)  # per image: the summary divides by the batch
        assert s["dense_macs"] * s["images"] == expected, module


def test_multi_step_wrapper_counts_every_step_and_ann_counts_one():
    net = Repeat(nn.Sequential(_conv(3, 5, 3, padding=1)), T=4)
    s = measure(net, torch.rand(2, 3, 6, 7))
    dense = 4 * 5 * 6 * 7 * 3 * 9  # per image: T x outputs x fan-in
    assert s["images"] == 2 and s["dense_macs"] == dense and s["mac_ops"] == dense
    assert s["ann_macs"] == pytest.approx(dense / 4)


def _spiking_toy() -> Repeat:
    """conv0 (real in, identity) -> LIF -> conv_a (x2) -> NI-LIF -> conv_b, all 1x1 on 1 channel.

    Input 1.0 on half the pixels, 0 elsewhere: LIF fires every step there (rate 0.5); conv_a
    gives 2, NI-LIF settles at k = 2 (spike 0.5: rate 0.25, 1 event per element on average).
    """
    body = nn.Sequential(_conv(1, 1, weight=1.0), lif(), _conv(1, 1, weight=2.0), NILIF(), _conv(1, 1, weight=1.0))
    return Repeat(body)


def _half_ones() -> torch.Tensor:
    x = torch.zeros(1, 1, 4, 6)
    x[..., :3] = 1.0
    return x


def test_firing_rates_sops_and_both_conventions_on_a_spiking_toy():
    net = _spiking_toy()
    s = measure(net, _half_ones())
    dense = 4 * 24  # every 1x1 layer: T x H x W
    assert s["dense_macs"] == 3 * dense
    lif_row, nilif_row = s["neurons"]
    assert lif_row["firing_rate"] == pytest.approx(0.5) and lif_row["mean_events"] == pytest.approx(0.5)
    assert nilif_row["type"] == "NI-LIF" and nilif_row["firing_rate"] == pytest.approx(0.25)
    assert nilif_row["mean_events"] == pytest.approx(1.0)
    assert nilif_row["nonzero_fraction"] == pytest.approx(0.5)
    kinds = [r["input_kind"] for r in s["layers"]]
    assert kinds == ["binary", "binary", "multi-level"]  # the 0/1 image is binary too: values decide
    assert s["sops"] == pytest.approx(dense * (0.5 + 0.5 + 1.0))
    conv = s["snn_convention"]
    assert s["layers"][0]["upstream_neuron"] is None
    assert [r["upstream_rate"] for r in s["layers"][1:]] == [pytest.approx(0.5), pytest.approx(0.25)]
    expected = E_MAC_PJ * dense + E_AC_PJ * dense * (0.5 + 0.25)
    assert conv["energy_mj"] == pytest.approx(expected * 1e-9)
    assert s["energy_mj"] == pytest.approx(E_AC_PJ * s["sops"] * 1e-9)


def test_constants_are_configurable():
    s = measure(nn.Sequential(nn.Conv2d(2, 3, 3, bias=False)), torch.rand(1, 2, 5, 6) + 0.1, e_mac_pj=1.0, e_ac_pj=0.0)
    assert s["energy_mj"] == pytest.approx(648e-9) and s["constants"] == {"e_mac_pj": 1.0, "e_ac_pj": 0.0}


def test_meter_accumulates_over_calls_and_removes_hooks_even_on_error():
    net = _spiking_toy()
    with EnergyMeter(net) as meter, torch.no_grad():
        net(_half_ones())
        net(_half_ones())
    assert _no_hooks(net)
    once = measure(net, _half_ones())
    twice = meter.summary()
    assert twice["forward_calls"] == 2 and twice["sops"] == pytest.approx(once["sops"])
    assert meter.summary(num_images=1)["sops"] == pytest.approx(2 * once["sops"])
    with pytest.raises(RuntimeError):
        with EnergyMeter(net):
            net(torch.zeros(1, 2, 4, 6))  # wrong channel count
    assert _no_hooks(net)


def test_tiny_vlifnet_records_every_neuron_and_real_inputs(tiny_config):
    net = build_model("vlifnet", **tiny_config).train()  # batch statistics: the neurons fire
    s = measure(net, torch.rand(1, 3, 16, 16))
    n_neurons = sum(isinstance(m, (NILIF, neuron.BaseNode)) for m in net.modules())
    assert len(s["neurons"]) == n_neurons and s["unmeasured_neurons"] == []
    names = {r["name"] for r in s["neurons"]}
    assert "encoder_level1.initial_residual.lif_2.node" in names and "encoder_level1.node" in names
    layers = {r["name"]: r for r in s["layers"]}
    assert layers["patch_embed.proj"]["upstream_neuron"] is None
    assert layers["encoder_level1.initial_residual.conv1"]["input_kind"] == "real"
    assert layers["down1_2.conv"]["input_kind"] == "binary"
    assert layers["down1_2.conv"]["upstream_neuron"] == "down1_2.lif"
    down_rate = next(r["firing_rate"] for r in s["neurons"] if r["name"] == "down1_2.lif")
    assert layers["down1_2.conv"]["sops"] == pytest.approx(layers["down1_2.conv"]["dense_macs"] * down_rate)
    frac = s["input_kind_fraction"]
    assert frac["real"] + frac["binary"] + frac["multi-level"] == pytest.approx(1)
    assert frac["real"] > 0.5  # SDEM's convolutions see real-valued mixtures
    assert sum(b["dense_macs"] for b in s["blocks"]) == pytest.approx(s["dense_macs"])
    assert [b["name"] for b in s["blocks"]][:3] == ["patch_embed", "encoder_level1", "down1_2"]
    table = format_table(s) + format_layers(s)
    assert "total" in table and "SNN-paper convention" in table


@pytest.mark.parametrize("name,params,giga", [("vlifnet", 14_023_911, 395.7), ("esdnet", 12_811_463, 492.0)])
def test_full_size_parameters_and_dense_macs_match_spec(name, params, giga):
    """Dense MACs at 256 x 256 from two 8-pixel-high forwards: every layer's count is
    ``a * H * W + b`` (b: the attention MLPs on pooled tensors), so two sizes pin a and b."""
    net = build_model(name).eval()
    small = measure(net, torch.rand(1, 3, 8, 8))
    wide = measure(net, torch.rand(1, 3, 8, 16))
    a = (wide["dense_macs"] - small["dense_macs"]) / 64
    b = small["dense_macs"] - 64 * a
    assert 0 <= b < 1e-6 * a * 256 * 256  # the pooled MLPs: about 0.1 M of 400 G
    assert (a * 256 * 256 + b) / 1e9 == pytest.approx(giga, rel=0.01)
    assert small["params"] == params


def test_cli_with_and_without_weights(tmp_path, tiny_config, capsys):
    from utils.checkpoint import atomic_save, make_checkpoint

    out = tmp_path / "e.json"
    assert main(["--arch", "esdnet", "--size", "8", "8", "--json", str(out), "--plot", str(tmp_path / "e.png")]) == 0
    s = json.loads(out.read_text())
    for key in ("params", "dense_macs", "mac_ops", "sops", "energy_mj", "ann_energy_mj", "layers"):
        assert key in s
    assert s["params"] == 12_811_463 and s["weights"] is None
    assert (tmp_path / "e.png").stat().st_size > 1000
    assert "total" in capsys.readouterr().out

    ckpt = tmp_path / "tiny.pth"
    atomic_save(make_checkpoint(build_model("vlifnet", **tiny_config, use_refinement=True)), ckpt)
    assert main(["--weights", str(ckpt), "--size", "16", "16", "--batch_stats", "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    assert s["arch"] == "vlifnet" and s["config"]["use_refinement"] and s["config"]["dim"] == 16
    assert any(b["name"] == "refinement_blocks" for b in s["blocks"])
    assert main(["--weights", str(tmp_path / "missing.pth"), "--size", "8", "8"]) == 2


def _impls(net: nn.Module) -> dict[str, str]:
    return {name: m.impl for name, m in net.named_modules() if hasattr(m, "impl")}


def test_meter_runs_reference_vlif_only_and_restores_the_choice(tiny_config):
    """The fast VLIF kernel skips its NI-LIF node, so the meter runs VLIF's reference code; LIF
    and NI-LIF kernels run inside their own module call, whose hook sees the spikes."""
    from models.neurons import LIF, VLIF

    net = build_model("vlifnet", **tiny_config)
    before = _impls(net)
    assert set(before.values()) == {"fast"}
    with EnergyMeter(net):
        during = _impls(net)
        for name, m in net.named_modules():
            if isinstance(m, VLIF):
                assert during[name] == during[name + ".node"] == "reference"
            elif isinstance(m, LIF):
                assert during[name] == "fast"
    assert _impls(net) == before


def test_fast_neurons_give_the_same_summary_as_reference(tiny_config):
    from models.neurons import neuron_impl

    net = build_model("vlifnet", **tiny_config).train()
    x = torch.rand(1, 3, 16, 16)
    fast = measure(net, x)
    with neuron_impl(net, "reference"):
        reference = measure(net, x)
    assert fast == reference and fast["sops"] > 0


def test_a_vlif_whose_node_never_runs_is_reported():
    from models.neurons import VLIF

    class FusedVLIF(VLIF):
        def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
            return x_seq  # a fused kernel: the NI-LIF child is never called

    s = measure(Repeat(FusedVLIF(1)), torch.rand(1, 1, 4, 4))
    assert s["unmeasured_neurons"] == ["body"] and s["neurons"] == []
