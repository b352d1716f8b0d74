"""Neuron behaviour that the golden vectors cannot pin (SPEC 1)."""
from __future__ import annotations

import torch

from models.neurons import NILIF, VLIF, QuantizeSpike, lif, ni_lif_reference, patch_to_time, time_to_patch


def test_quantiser_rounds_half_to_even():
    m = torch.tensor([0.5, 1.5, 2.5, 3.5, 0.49, 2.51, -1.0, 7.0])
    expected = torch.tensor([0, 2, 2, 4, 0, 3, 0, 4]) / 4
    assert torch.equal(QuantizeSpike.apply(m), expected)


def test_quantiser_gradient_is_quarter_inside_closed_interval():
    m = torch.tensor([-0.01, 0.0, 2.0, 4.0, 4.01], requires_grad=True)
    QuantizeSpike.apply(m).sum().backward()
    assert torch.equal(m.grad, torch.tensor([0.0, 0.25, 0.25, 0.25, 0.0]))


def test_ni_lif_recurrence_by_hand():
    x = torch.tensor([1.3, 0.9, 2.2])
    s = ni_lif_reference(x)
    # m0 = 1.3 -> s0 = 1/4; m1 = (1.3 - .25) * .25 + .9 = 1.1625 -> 1/4;
    # m2 = (1.1625 - .25) * .25 + 2.2 = 2.428125 -> 2/4
    assert torch.allclose(s, torch.tensor([0.25, 0.25, 0.5]))


def test_ni_lif_reset_is_stop_gradient():
    x = torch.tensor([1.3, 0.9], requires_grad=True)
    ni_lif_reference(x)[1].backward()
    # ds1/dx0 flows only through m0 (factor .25), not through the detached spike s0
    assert torch.allclose(x.grad, torch.tensor([0.25 * 0.25, 0.25]))


def test_patch_to_time_is_time_major_sub_pixel_minor():
    T, B, C, H, W, r = 2, 1, 1, 4, 4, 2
    x = torch.arange(T * B * C * H * W, dtype=torch.float32).view(T, B, C, H, W)
    seq = patch_to_time(x, r)
    assert seq.shape == (T * r * r, B, C, H // r, W // r)
    for t in range(T):
        for i in range(r):
            for j in range(r):
                assert torch.equal(seq[t * r * r + i * r + j, 0, 0], x[t, 0, 0, i::r, j::r])
    back = time_to_patch(seq, T, r)
    assert torch.equal(back, torch.nn.functional.pixel_unshuffle(x.flatten(0, 1), r))


def test_vlif_shapes_and_real_output():
    vlif = VLIF(channels=3, r=2)
    out = vlif(torch.rand(4, 2, 3, 8, 12) * 3)
    assert out.shape == (4, 2, 3, 8, 12)
    assert vlif.channel_adjust.weight.shape == (3, 12, 1, 1)


def test_lif_matches_spec_dynamics():
    node = lif()
    x = torch.tensor([[0.1], [0.1], [0.2], [0.0]])
    s = node(x)
    node.reset()
    # h: .1 (no spike), .15 (spike, >= threshold), .2 (spike), 0
    assert torch.equal(s.flatten(), torch.tensor([0.0, 1.0, 1.0, 0.0]))


def test_nilif_module_is_stateless():
    node = NILIF()
    x = torch.rand(16, 2, 3, 4, 4) * 4
    assert torch.equal(node(x), node(x))
