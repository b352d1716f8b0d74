"""Network construction, released checkpoint layout, any input size, ablations (SPEC 3-4)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from spikingjelly.activation_based import layer

from models import build_model

pytestmark = pytest.mark.exactness

DATA = Path(__file__).parent / "data"


def _reference_keys(file: str) -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in (DATA / file).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape = line.split("\t")
        rows.append((name, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return rows


@pytest.mark.parametrize(
    "name,kwargs,file,params",
    [
        ("vlifnet", {}, "vlifnet_state_dict_keys.txt", 14_023_911),
        ("vlifnet", {"use_refinement": True}, "vlifnet_refine_state_dict_keys.txt", 14_312_031),
        ("esdnet", {}, "esdnet_state_dict_keys.txt", 12_811_463),
    ],
)
def test_default_models_match_released_state_dicts(name, kwargs, file, params):
    net = build_model(name, **kwargs)
    ours = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    assert ours == _reference_keys(file)
    assert sum(p.numel() for p in net.parameters()) == params


def test_build_model_rejects_unknown_name_and_arguments():
    with pytest.raises(ValueError, match="vlifnet"):
        build_model("unet")
    with pytest.raises(ValueError, match="ESDNet has no argument.* use_refinement"):
        build_model("esdnet", use_refinement=True)


def _excite(net: torch.nn.Module) -> None:
    """Make every neuron fire and every attention ReLU pass, as the golden files do.

    At PyTorch's default initialisation several branches are silent (NI-LIF needs a membrane
    of 0.5 to emit its first level; the SMU's compressed spikes stay under the LIF threshold;
    the one-unit attention MLPs can start with a dead ReLU). A silent branch has legitimately
    zero weight gradients, which would hide a broken gradient path.
    """
    with torch.no_grad():
        for key, p in net.named_parameters():
            if key.endswith("sharedMLP.0.weight"):
                p.abs_()
            if "temporal_compress" in key:
                p.mul_(4)
        for module in net.modules():
            if isinstance(module, layer.ThresholdDependentBatchNorm2d):
                module.weight.fill_(1.0)
        net.patch_embed.proj.weight.mul_(4)


@pytest.mark.parametrize("name", ["vlifnet", "esdnet"])
def test_every_parameter_gets_a_finite_nonzero_gradient(name, tiny_config):
    net = build_model(name, **tiny_config, **({"use_refinement": True} if name == "vlifnet" else {})).train()
    _excite(net)
    x = torch.rand(2, 3, 32, 48)
    out = net(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    for key, p in net.named_parameters():
        assert p.grad is not None, key
        assert torch.isfinite(p.grad).all(), key
        assert p.grad.abs().sum() > 0, key


@pytest.mark.parametrize("name", ["vlifnet", "esdnet"])
def test_no_state_leaks_between_calls_or_batches(name, tiny_config):
    # float64: a batch of 4 may run other convolution kernels than a batch of 1, whose float32
    # rounding can flip a spike on some CPU; in float64 it cannot (SPEC 5b)
    net = build_model(name, **tiny_config).eval().double()
    a, b = torch.rand(1, 3, 32, 48, dtype=torch.float64), torch.rand(3, 3, 32, 48, dtype=torch.float64)
    with torch.no_grad():
        first = net(a)
        net(b)  # a different batch size in between
        again = net(a)
        batched = net(torch.cat([a, b]))
    assert torch.equal(first, again)
    assert torch.allclose(batched[:1], first, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["vlifnet", "esdnet"])
@pytest.mark.parametrize("size", [(37, 53), (1, 1), (5, 90), (33, 8)])
def test_any_input_size(name, size, tiny_config):
    net = build_model(name, **tiny_config).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, *size))
    assert out.shape == (2, 3, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["vlifnet", "esdnet"])
def test_padding_is_bypassed_when_size_divides(name, tiny_config):
    net = build_model(name, **tiny_config).eval()
    x = torch.rand(1, 3, 32, 40)
    with torch.no_grad():
        assert torch.equal(net(x), net.forward_aligned(x))
        # odd sizes go through padding and agree with padding by hand
        y = torch.rand(1, 3, 29, 37)
        padded = torch.nn.functional.pad(y, (0, 3, 0, 3), mode="reflect")
        assert torch.equal(net(y), net.forward_aligned(padded)[..., :29, :37])


def test_rejects_non_rgb_input(tiny_config):
    net = build_model("vlifnet", **tiny_config)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        net(torch.rand(3, 32, 32))


@pytest.mark.parametrize(
    "kwargs",
    [{"neuron": "lif"}, {"neuron": "nilif"}, {"T": 2}, {"T": 6}, {"r": 3}, {"r": 1, "T": 3}],
)
def test_ablations_build_run_and_train(kwargs, tiny_config):
    net = build_model("vlifnet", **tiny_config, **kwargs).train()
    x = torch.rand(2, 3, 24, 36, requires_grad=True)
    out = net(x)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    missing = [k for k, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert net.config["neuron"] == kwargs.get("neuron", "vlif")


def test_ablation_neuron_changes_checkpoint_layout(tiny_config):
    keys_vlif = set(build_model("vlifnet", **tiny_config).state_dict())
    keys_lif = set(build_model("vlifnet", **tiny_config, neuron="lif").state_dict())
    assert {k for k in keys_vlif - keys_lif if "channel_adjust" not in k} == set()
    assert any("channel_adjust" in k for k in keys_vlif - keys_lif)


def test_unknown_neuron_is_a_clear_error(tiny_config):
    with pytest.raises(ValueError, match="vlif, lif, nilif"):
        build_model("vlifnet", **tiny_config, neuron="izhikevich")
