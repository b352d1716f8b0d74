"""Our energy counts against spikingjelly's op_counter on the same forward (docs/energy.md):
equal where both count the same thing, and different, as documented, where they do not."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from models import build_model
from utils.energy.meter import measure
from utils.energy.op_counter import measure_with_op_counter
from utils.energy.report import format_op_counter


def _conv_counts(conv: nn.Module, x: torch.Tensor) -> tuple[float, float, float, float]:
    s = measure_with_op_counter(nn.Sequential(conv), x)
    return s["mac_ops"], s["sops"], s["op_counter"]["mac"], s["op_counter"]["synop"]


def test_real_input_macs_are_op_counters_and_bias_is_not_counted():
    x = torch.rand(1, 2, 5, 6) * 0.9 + 0.05  # 3x4 outputs x 3 channels x 2*9 fan-in = 648
    assert _conv_counts(nn.Conv2d(2, 3, 3, bias=True), x) == (648, 0, 648, 0)


def test_binary_sops_equal_op_counters_without_padding():
    assert _conv_counts(nn.Conv2d(2, 3, 3, bias=False), torch.ones(1, 2, 5, 6)) == (0, 648, 0, 648)


def test_padding_taps_are_events_for_spec9_not_for_op_counter():
    """3x3, padding 1, all-ones 4x4: 16 x 9 = 144 dense taps, (2 + 3 + 3 + 2)^2 = 100 on the image."""
    assert _conv_counts(nn.Conv2d(1, 1, 3, padding=1, bias=False), torch.ones(1, 1, 4, 4)) == (0, 144, 0, 100)


def test_multi_level_spikes_are_k_events_for_us_and_macs_for_op_counter():
    x = torch.zeros(1, 2, 5, 6)
    x[:, 0] = 0.75  # k = 3 on half the elements: 1.5 events per element
    assert _conv_counts(nn.Conv2d(2, 3, 3, bias=False), x) == (0, 648 * 1.5, 648, 0)


@pytest.mark.parametrize("arch", ["vlifnet", "esdnet"])
def test_tiny_networks_agree_with_op_counter_where_they_count_the_same(arch, tiny_config):
    net = build_model(arch, **tiny_config).train()  # batch statistics: the neurons fire
    x = torch.rand(1, 3, 16, 16)
    s = measure_with_op_counter(net, x)
    oc = s["op_counter"]
    assert oc["outside_layers"] == {"mac": 0, "synop": 0}  # no convolution or matmul escapes our hooks
    assert {k: v for k, v in s.items() if k != "op_counter"} == measure(net, x)  # op_counter changes nothing
    kinds = {r["input_kind"] for r in oc["layers"]}
    assert {"real", "binary"} <= kinds
    for r in oc["layers"]:
        if r["input_kind"] == "real":
            assert r["op_counter_mac"] == r["mac_ops"] and r["op_counter_synop"] == 0, r["name"]
        if r["input_kind"] == "binary":
            assert r["op_counter_mac"] == 0, r["name"]
            assert r["op_counter_synop"] <= r["sops"] * (1 + 1e-6), r["name"]  # we count padding taps
    multi = s["input_kind_fraction"]["multi-level"] * s["dense_macs"]
    assert oc["mac"] == pytest.approx(s["mac_ops"] + multi, rel=1e-9)
    assert (multi > 0) == (arch == "vlifnet")  # SMU's time attention max-pools NI-LIF spikes
    assert 0.8 * s["sops"] < oc["synop"] < s["sops"]
    assert "layers that differ" in format_op_counter(s)
