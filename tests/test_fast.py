"""The fast neuron kernels and fast inference against the reference (identical forward,
gradients within 1e-5 relative), on CPU (tests/test_cuda.py has the CUDA ones)."""
from __future__ import annotations

import copy
import json
import logging
import sys
from pathlib import Path

import pytest
import torch

from models import build_model, kernels
from models.kernels import backend as kernel_backend, native
from models import neurons
from models.neurons import (
    LIF, NEURON_IMPLS, NILIF, VLIF, lif, neuron_impl, ni_lif_reference, patch_to_time, set_neuron_impl,
    time_to_patch,
)
from utils.fuse import auto_tile_batch, find_conv_bn_pairs, fold_batchnorm, prepare_for_inference
from utils.inference import restore

pytestmark = pytest.mark.exactness

GOLDEN64 = Path(__file__).parent / "data" / "golden64"
GOLDEN_FILES = ["vlifnet_small_f64.pt", "vlifnet_small_refine_f64.pt", "esdnet_small_f64.pt"]
BACKENDS = ["torch"] + (["native", "native-python-threads"] if native.load() is not None else [])


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Each kernel backend, with chunks small enough that the odd test sizes span several
    chunks and threads (the production chunk is far larger than these tensors). The native
    kernels run a call's parts on OpenMP threads where they were built with it, and
    ``native-python-threads`` runs them one call per part on Python threads (their fallback)."""
    monkeypatch.setattr(kernel_backend, "CPU_CHUNK", 64)
    if request.param == "native-python-threads":
        monkeypatch.setattr(native, "_parallel", False)
        return "native"
    return request.param


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _nilif_input(shape=(16, 2, 3, 9, 13)) -> torch.Tensor:
    x = torch.randn(shape) * 2
    flat = x.view(-1)
    # membranes exactly at the rounding midpoints and the clamp limits of the first step
    flat[:9] = torch.tensor([0.5, 1.5, 2.5, 3.5, 0.0, 4.0, -0.0, 4.0001, -1e-7])
    return x


def _fwd_bwd(fn, x: torch.Tensor, grad: torch.Tensor):
    leaf = x.clone().requires_grad_(True)
    y = fn(leaf)
    y.backward(grad)
    return y.detach(), leaf.grad


# ------------------------------------------------------------------ NI-LIF / VLIF
def test_nilif_identical_spikes_and_gradients(backend):
    x = _nilif_input()
    grad = torch.randn_like(x)
    y_ref, g_ref = _fwd_bwd(ni_lif_reference, x, grad)
    y_fast, g_fast = _fwd_bwd(lambda v: kernels.ni_lif(v, backend), x, grad)
    assert torch.equal(y_fast, y_ref)
    assert torch.equal(g_fast, g_ref)  # the recurrence sums the same two terms: bit-identical
    with torch.inference_mode():
        assert torch.equal(kernels.ni_lif(x, backend), y_ref)


def test_nilif_rounds_half_to_even(backend):
    x = torch.tensor([0.5, 1.5, 2.5, 3.5, 4.5, -0.5]).view(1, 6)
    assert kernels.ni_lif(x, backend).mul(4).tolist() == [[0.0, 2.0, 2.0, 4.0, 4.0, 0.0]]


def test_nilif_nan_propagates_like_the_reference(backend):
    x = torch.randn(5, 70)
    x[0, 3] = float("nan")
    torch.testing.assert_close(kernels.ni_lif(x, backend), ni_lif_reference(x), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("r", [2, 3])
def test_vlif_layer_identical(backend, r):
    torch.manual_seed(1)
    layer = VLIF(3, r)
    x = torch.randn(4, 2, 3, 6 * r, 5 * r) * 2
    grad = torch.randn_like(x)
    with neuron_impl(layer, "reference"):
        y_ref, g_ref = _fwd_bwd(layer, x, grad)
        w_ref = layer.channel_adjust.weight.grad.clone()
    layer.zero_grad()
    with neuron_impl(layer, "fast", backend):
        y_fast, g_fast = _fwd_bwd(layer, x, grad)
        w_fast = layer.channel_adjust.weight.grad.clone()
        with torch.no_grad():
            assert torch.equal(layer(x), y_ref)
    assert torch.equal(y_fast, y_ref)
    assert _rel(g_fast, g_ref) <= 1e-5 and _rel(w_fast, w_ref) <= 1e-5


@pytest.mark.parametrize("impl", NEURON_IMPLS)
@pytest.mark.parametrize("r", [2, 3])
def test_vlif_adjust_first_is_the_same_function(backend, impl, r):
    """Mixing the spikes before resizing them (VLIF.adjust_first) computes the same function and
    gradients as the released order; float64, where the two roundings cannot flip a spike."""
    torch.manual_seed(2)
    layer = set_neuron_impl(VLIF(3, r).double(), impl, backend)
    x = torch.randn(4, 2, 3, 6 * r, 5 * r, dtype=torch.float64) * 2
    grad = torch.randn_like(x)
    y_ref, g_ref = _fwd_bwd(layer, x, grad)
    w_ref = layer.channel_adjust.weight.grad.clone()
    layer.zero_grad()
    layer.adjust_first = True
    y_new, g_new = _fwd_bwd(layer, x, grad)
    w_new = layer.channel_adjust.weight.grad.clone()
    assert (y_new - y_ref).abs().max().item() < 1e-12 and y_ref.abs().max().item() > 0.1
    assert _rel(g_new, g_ref) < 1e-12 and _rel(w_new, w_ref) < 1e-12
    with torch.no_grad():  # and float32, to float rounding
        y32 = layer.float()(x.float())
    assert (y32.double() - y_ref).abs().max().item() < 1e-5


def test_vlif_spikes_match_reordered_reference(backend):
    x = torch.randn(4, 2, 3, 8, 10) * 2
    grad = torch.randn(8, 12, 4, 5)
    ref = lambda v: time_to_patch(ni_lif_reference(patch_to_time(v, 2)), 4, 2)  # noqa: E731
    y_ref, g_ref = _fwd_bwd(ref, x, grad)
    y_fast, g_fast = _fwd_bwd(lambda v: kernels.vlif_spikes(v, 2, backend), x, grad)
    assert torch.equal(y_fast, y_ref) and torch.equal(g_fast, g_ref)


# ------------------------------------------------------------------ LIF
def _lif_run(impl: str, x: torch.Tensor, grad: torch.Tensor, v_th: float, backend: str):
    node = set_neuron_impl(lif(v_th), impl, backend)
    y, g = _fwd_bwd(node, x, grad)
    return y, g, node.v


@pytest.mark.parametrize("v_th", [0.15, 0.03])
def test_lif_identical_spikes_membrane_and_close_gradients(backend, v_th):
    x = torch.randn(4, 2, 3, 9, 13) * 0.3
    x.view(-1)[:3] = v_th  # charged exactly at the threshold: fires
    grad = torch.randn_like(x)
    y_ref, g_ref, v_ref = _lif_run("reference", x, grad, v_th, "auto")
    y_fast, g_fast, v_fast = _lif_run("fast", x, grad, v_th, backend)
    assert torch.equal(y_fast, y_ref)
    assert torch.equal(v_fast, v_ref)
    assert _rel(g_fast, g_ref) <= 1e-5
    assert 0.05 < y_ref.mean() < 0.6  # the test exercises firing and resets


def test_lif_state_carries_across_calls_without_grad(backend):
    x1, x2 = torch.randn(2, 4, 2, 3, 5, 7) * 0.3
    outs = {}
    for impl in NEURON_IMPLS:
        node = set_neuron_impl(lif(), impl, backend)
        with torch.no_grad():
            outs[impl] = (node(x1), node(x2), node.v)
    for a, b in zip(outs["reference"], outs["fast"]):
        assert torch.equal(a, b)


# ------------------------------------------------------------------ networks
@pytest.mark.parametrize("name", ["vlifnet", "esdnet"])
def test_network_fast_equals_reference(backend, tiny_config, name):
    torch.manual_seed(0)
    net = build_model(name, **tiny_config)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(2, 3, 32, 48)
    results = {}
    for impl in NEURON_IMPLS:
        net.load_state_dict(state)
        net.zero_grad()
        with neuron_impl(net, impl, backend):
            xr = x.clone().requires_grad_(True)
            out = net.train()(xr)
            (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
            with torch.no_grad():
                net.load_state_dict(state)
                ev = net.eval()(x)
        grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
        results[impl] = (out.detach(), xr.grad, ev, grads)
    ref, fst = results["reference"], results["fast"]
    assert torch.equal(fst[0], ref[0]) and torch.equal(fst[2], ref[2])
    assert _rel(fst[1], ref[1]) <= 1e-5
    assert ref[3].keys() == fst[3].keys()
    keys = sorted(ref[3])
    flat_ref = torch.cat([ref[3][k].flatten() for k in keys])
    flat_fast = torch.cat([fst[3][k].flatten() for k in keys])
    assert _rel(flat_fast, flat_ref) <= 1e-5  # the whole parameter gradient (measured: < 1e-8)
    for key in keys:
        # per tensor, float rounding is amplified where a tiny gradient is a sum that cancels
        # (shape-(1,) frequency scales, attention MLPs: measured up to 4e-4); a wrong or
        # missing gradient term gives an error of order 1
        assert _rel(fst[3][key], ref[3][key]) <= 1e-3, key


@pytest.mark.parametrize("file", GOLDEN_FILES)
def test_golden_cases_fast_equals_reference_float32(file):
    """Float32 on the golden weights and inputs: the two paths give the same bits on this
    machine (the float64 golden tests pin both against the released code on any machine)."""
    net, ref = _golden_net(file)
    outs = {}
    for impl in NEURON_IMPLS:
        with neuron_impl(net, impl), torch.no_grad():
            outs[impl] = net(ref["input"])
    assert torch.equal(outs["fast"], outs["reference"])


def _impls(net: torch.nn.Module) -> set[tuple[str, str]]:
    return {(m.impl, m.kernel_backend) for m in net.modules() if isinstance(m, (LIF, NILIF, VLIF))}


def test_selection_is_per_network_and_changes_no_keys(tiny_config):
    net, other = build_model("vlifnet", **tiny_config), build_model("vlifnet", **tiny_config)
    keys = set(net.state_dict())
    assert _impls(net) == {("fast", "auto")}  # the default, on every neuron
    with neuron_impl(net, "reference"):
        assert _impls(net) == {("reference", "auto")}
        assert _impls(other) == {("fast", "auto")}  # another network keeps its own choice
        assert set(net.state_dict()) == keys
    assert _impls(net) == {("fast", "auto")}  # restored
    assert set_neuron_impl(net, "fast", "torch") is net and _impls(net) == {("fast", "torch")}
    with pytest.raises(ValueError, match="reference, fast"):
        set_neuron_impl(net, "triton")
    with pytest.raises(ValueError, match="auto, native, triton, torch"):
        set_neuron_impl(net, "fast", "cupy")


def test_lif_fallback_is_logged_once(caplog):
    node = lif()
    x = torch.rand(4, 2, 3, 5, 5, dtype=torch.float64)
    with caplog.at_level("INFO", logger="models.neurons"):
        neurons._fallbacks_logged.discard("torch.float64")
        for _ in range(3):
            node.reset()
            node(x)
    lines = [r.getMessage() for r in caplog.records if "fast LIF kernel not used" in r.getMessage()]
    assert lines == ["fast LIF kernel not used for torch.float64: running spikingjelly's LIF (same results)"]


def test_native_build_failure_falls_back(monkeypatch):
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_parallel", native._parallel)  # restored afterwards with the others
    monkeypatch.setattr(native, "_build", lambda: (_ for _ in ()).throw(RuntimeError("no cc")))
    x = _nilif_input()
    assert torch.equal(kernels.ni_lif(x), ni_lif_reference(x))
    with pytest.raises(RuntimeError):
        kernels.check_backend("native")


# ------------------------------------------------------------------ inference
def _golden_net(file: str = "vlifnet_small_f64.pt"):
    ref = torch.load(GOLDEN64 / file, weights_only=True)
    net = build_model("esdnet" if file.startswith("esdnet") else "vlifnet", **ref["config"])
    net.load_state_dict(ref["state_dict"], strict=True)
    return net.eval(), ref


@pytest.mark.parametrize("file", GOLDEN_FILES)
def test_fold_batchnorm(file):
    """Folding changes the rounding (``sum(W a x)`` for ``a sum(W x)``); in float32 that can
    flip a spike on some CPU, so the comparison runs in float64, where it cannot."""
    net, ref = _golden_net(file)
    net.double()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert len(find_conv_bn_pairs(net)) == n_bn  # every tdBN of these networks follows a conv
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())  # original untouched
    with torch.no_grad():
        a, b = net(ref["input"].double()), folded(ref["input"].double())
    assert (a - ref["output_eval"]).abs().max().item() < 1e-9
    assert (a - b).abs().max().item() < 1e-9


def _adjust_first(net) -> list[bool]:
    return [m.adjust_first for m in net.modules() if isinstance(m, VLIF)]


def test_fold_inplace_and_prepare():
    net, ref = _golden_net()
    prepared = prepare_for_inference(net)
    assert not any(p.requires_grad for p in prepared.parameters()) and not prepared.training
    assert _adjust_first(prepared) and all(_adjust_first(prepared))
    assert not any(_adjust_first(net))  # the original keeps the released order
    assert not any(_adjust_first(prepare_for_inference(net, fold=False)))
    assert all(_adjust_first(prepare_for_inference(net, fold=False, adjust_first=True)))
    with torch.no_grad():  # the prepared network reproduces the float64 golden output
        out = prepared.double()(ref["input"].double())
    assert (out - ref["output_eval"]).abs().max().item() < 1e-9
    assert fold_batchnorm(net, inplace=True) is net


def test_attention_parts_change_no_value():
    """mda() swaps parts of spikingjelly's MultiDimensionalAttention (max pooling as amax without
    gradients, the spatial gate, float32 MLPs, the products in the input's layout): the same keys,
    the same values bit for bit in float32 with and without gradients; the gradients are the same
    sums in another memory order (equal to float32 rounding), on tied maxima too."""
    from spikingjelly.activation_based.layer import MultiDimensionalAttention

    from models.layers import GlobalMaxPool, SpatialGate, mda

    torch.manual_seed(3)
    ours = mda(16, 4)
    assert isinstance(ours.sa, SpatialGate) and isinstance(ours.ca.max_pool, GlobalMaxPool)
    theirs = MultiDimensionalAttention(T=4, C=16, reduction_t=4, reduction_c=16, kernel_size=3)
    assert list(theirs.state_dict()) == list(ours.state_dict())
    theirs.load_state_dict(ours.state_dict())
    for module in (ours.ta.sharedMLP, theirs.ta.sharedMLP):  # bias the time gate's ReLU on,
        torch.nn.init.constant_(module[0].weight, 0.3)       # so that its gradient is not zero
    x = (torch.rand(4, 2, 16, 6, 7) * 4).round() / 4  # spike-like: many tied maxima
    with torch.inference_mode():
        assert torch.equal(ours(x), theirs(x))
    grad = torch.randn_like(x)
    y_ref, g_ref = _fwd_bwd(theirs, x, grad)
    with neuron_impl(ours, "reference"):  # spikingjelly's layout: the same gradients bit for bit
        y_old, g_old = _fwd_bwd(ours, x, grad)
    assert torch.equal(y_old, y_ref) and torch.equal(g_old, g_ref)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a.grad, b.grad)
        a.grad = None
    y_new, g_new = _fwd_bwd(ours, x, grad)
    assert torch.equal(y_new, y_ref) and y_new.is_contiguous()
    torch.testing.assert_close(g_new, g_ref, rtol=1e-6, atol=1e-7)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert b.grad.abs().max() > 0
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6 * b.grad.abs().max().item())


def test_gate_pool_is_the_gates_pooling_with_one_gradient():
    """GatePool (the fast attention's pooling in training) returns each gate's mean and max bit for
    bit, and its one-tensor backward equals autograd's through the gates' own pooling, the max's
    gradient at the same one of tied maxima; float32 under bf16 autocast, as adaptive pooling."""
    import torch.nn.functional as F

    from models.kernels.pooling import GATE_AXES, gate_mean_max

    torch.manual_seed(4)
    x = (torch.rand(4, 3, 16, 5, 6) * 4).round() / 4  # many tied maxima
    for axis in GATE_AXES:
        ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
        mean, peak = gate_mean_max(ours, axis)
        view = theirs.transpose(0, 1)
        if axis == "spatial":
            flat = view.flatten(1, 2)
            ref = flat.mean(dim=1, keepdim=True), flat.max(dim=1, keepdim=True).values
        else:
            pooled = view.transpose(1, 2) if axis == "channel" else view
            ref = F.adaptive_avg_pool3d(pooled, 1), F.adaptive_max_pool3d(pooled, 1)
        assert torch.equal(mean, ref[0]) and torch.equal(peak, ref[1]), axis
        weights = torch.randn_like(mean), torch.randn_like(peak)
        (mean * weights[0] + peak * weights[1]).sum().backward()
        (ref[0] * weights[0] + ref[1] * weights[1]).sum().backward()
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-6, atol=1e-7, msg=axis)
    low = x.to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mean, peak = gate_mean_max(low, "time")
    assert mean.dtype == peak.dtype == torch.float32
    (mean.sum() + peak.sum()).backward()
    assert low.grad.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="axis"):
        gate_mean_max(x, "depth")
    for axis in GATE_AXES:  # its index arithmetic stays on the input's device (CUDA training)
        mean, peak = gate_mean_max(torch.empty(x.shape, device="meta"), axis)
        assert mean.device.type == peak.device.type == "meta"


def test_gate_maxima_are_torch_max_with_its_index(backend):
    """The gates' maxima in training (:func:`max_first`, :func:`max_first_over_rows`) are
    ``torch.max``'s values and indices on every backend: the first of tied maxima (ties within and
    across the native kernel's chunks), the first NaN where there is one, rows of one element."""
    from models.kernels.pooling import max_first, max_first_over_rows

    torch.manual_seed(5)
    for shape in [(3, 5), (7, 64), (5, 9000), (2, 3, 130), (6, 1), (1, 1)]:
        x = (torch.rand(shape) * 2).round() / 2  # half the elements are maxima
        x[..., -1] = 2.0  # a later, larger maximum in the last chunk
        for case in ("ties", "nan", "-inf"):
            if case == "nan":
                x[..., shape[-1] // 2] = float("nan")
                x[..., -1] = float("nan")
            elif case == "-inf":
                x.fill_(-float("inf"))
            peak, at = max_first(x, backend)
            ref = x.max(dim=-1)
            assert torch.equal(peak.isnan(), ref.values.isnan()) and torch.equal(at, ref.indices), (shape, case)
            assert torch.equal(peak.nan_to_num(), ref.values.nan_to_num()), (shape, case)
    for shape in [(2, 5, 7), (3, 16, 700), (1, 1, 5), (2, 40, 64)]:
        x = (torch.rand(shape) * 2).round() / 2
        for case in ("ties", "nan"):
            if case == "nan":
                x[:, min(2, shape[1] - 1), ::3] = float("nan")
                x[:, -1, ::2] = float("nan")
            peak, at = max_first_over_rows(x, backend)
            ref = x.max(dim=1)
            assert torch.equal(peak.isnan(), ref.values.isnan()) and torch.equal(at, ref.indices), (shape, case)
            assert torch.equal(peak.nan_to_num(), ref.values.nan_to_num()), (shape, case)


def test_gate_pool_gives_the_same_bits_on_every_backend(backend):
    """GatePool's statistics and its gradient do not depend on where its maxima come from."""
    from models.kernels.pooling import GATE_AXES, gate_mean_max

    torch.manual_seed(6)
    x = (torch.rand(4, 3, 16, 9, 10) * 4).round() / 4
    for axis in GATE_AXES:
        grads = []
        for b in (backend, "torch"):
            xi = x.clone().requires_grad_()
            mean, peak = gate_mean_max(xi, axis, b)
            (mean * 3 + peak * torch.arange(peak.numel()).view(peak.shape)).sum().backward()
            grads.append((mean, peak, xi.grad))
        for a, b in zip(*grads):
            assert torch.equal(a, b), axis


def test_gated_product_backward_is_autograds(backend):
    """The attention's gated products in training (:func:`gated_product`): the product and the
    activations' gradient bit for bit as autograd's ``gate * x``, the gate's gradient (float64
    sums in another order) to float32 rounding, for the three gates, on every backend; float64 and
    gates of other shapes take PyTorch's product."""
    from models.kernels.gating import GATE_AXES, _gate_shape, gated_product

    torch.manual_seed(7)
    x0 = torch.randn(4, 3, 5, 7, 9)
    grad = torch.randn(x0.shape)
    for axis in GATE_AXES:
        results = []
        for fast in (True, False):
            x = x0.clone().requires_grad_()
            gate = torch.rand(_gate_shape(x0, axis)).requires_grad_()
            torch.manual_seed(8)
            gate.data = torch.rand(gate.shape)
            y = gated_product(gate, x, axis, backend) if fast else gate * x
            y.backward(grad)
            results.append((y, x.grad, gate.grad))
        (y, gx, gg), (y_ref, gx_ref, gg_ref) = results
        assert torch.equal(y, y_ref) and torch.equal(gx, gx_ref), axis
        torch.testing.assert_close(gg, gg_ref, rtol=1e-6, atol=1e-6, msg=axis)
    x = x0.double().requires_grad_()
    y = gated_product(torch.rand(4, 3, 1, 1, 1, dtype=torch.float64), x, "time", backend)
    assert type(y.grad_fn).__name__ == "MulBackward0"
    y = gated_product(torch.rand(4, 3, 5, 1, 1), x0.requires_grad_(), "time", backend)  # not the time gate's shape
    assert type(y.grad_fn).__name__ == "MulBackward0"


def test_attention_output_stays_contiguous_for_several_images():
    """The attention's output is a contiguous [T, B, C, H, W] tensor for B > 1 too (its gated
    products keep the input's layout), so the next neuron reads it without a copy; float32 and
    bf16 inference and training, with the values of spikingjelly's order."""
    from models.layers import mda

    torch.manual_seed(5)
    attn = mda(16, 4).eval()
    x = torch.rand(4, 3, 16, 6, 7)
    with torch.inference_mode():
        y = attn(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_low = attn(x.to(torch.bfloat16))
        out = x.transpose(0, 1)
        for gate in (attn.ta, attn.ca, attn.sa):
            out = gate(out) * out
        ref = attn.relu(out).transpose(0, 1)
    y_train = attn(x.clone().requires_grad_())
    assert y.is_contiguous() and y_low.is_contiguous() and y_train.is_contiguous()
    assert torch.equal(y, ref) and torch.equal(y_train, ref)


def test_attention_mlp_runs_in_float32_under_autocast():
    """The gates' shared MLPs leave autocast: float32 arithmetic, the input's dtype back; plain
    nn.Sequential outside autocast."""
    from models.layers import Float32MLP, mda

    torch.manual_seed(4)
    attn = mda(16, 4)
    mlp = attn.ca.sharedMLP
    assert isinstance(mlp, Float32MLP) and isinstance(attn.ta.sharedMLP, Float32MLP)
    plain = torch.nn.Sequential(*mlp)
    x = torch.randn(2, 16, 4, 1, 1)
    assert torch.equal(mlp(x), plain(x))
    mlp64 = copy.deepcopy(mlp).double()
    assert torch.equal(mlp64(x.double()), torch.nn.Sequential(*mlp64)(x.double()))
    assert mlp64(x.double()).dtype == torch.float64
    low = x.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mlp(low)
        in_bf16 = plain(low)
    assert out.dtype == torch.bfloat16 and in_bf16.dtype == torch.bfloat16
    assert torch.equal(out, plain(low.float()).bfloat16())  # float32 arithmetic, rounded once


def test_batched_folded_tiles_equal_one_at_a_time():
    """Folded, batched tiles against the reference path one tile at a time: different
    rounding, so float64 (see test_fold_batchnorm)."""
    net, _ = _golden_net()
    net.double()
    img = torch.rand(1, 3, 70, 93, dtype=torch.float64)
    with neuron_impl(net, "reference"):
        one = restore(net, img, crop_size=32, overlap=8, tile_batch=1)
    batched = restore(prepare_for_inference(net), img, crop_size=32, overlap=8, tile_batch=16)
    assert batched.dtype == torch.float64
    assert (batched - one).abs().max().item() < 1e-9


def test_auto_tile_batch(monkeypatch):
    import utils.fuse as fuse

    cpu_tile_limit = fuse.cpu_tile_limit
    net = build_model("vlifnet")  # about 1 GB per 80x80 tile by the estimate
    monkeypatch.setattr(fuse, "_available_cpu_bytes", lambda: 64 * 2**30)
    monkeypatch.setattr(fuse, "cpu_tile_limit", lambda: 64)
    assert auto_tile_batch(net, 80) == 32 * 2**30 // fuse.tile_bytes(net, 80) == 34  # half the memory
    assert auto_tile_batch(net, 80, limit=8) == 8
    monkeypatch.setattr(fuse, "cpu_tile_limit", lambda: 3)
    assert auto_tile_batch(net, 80) == 3  # cache-sized on a CPU
    monkeypatch.setattr(fuse, "_available_cpu_bytes", lambda: 2**20)
    assert auto_tile_batch(net, 80) == 1
    monkeypatch.setattr(fuse, "_available_cpu_bytes", lambda: None)
    assert auto_tile_batch(net, 80) == 3
    fuse.cast_conv_weights(net, torch.bfloat16)  # prepared for bf16 autocast: more tiles per call
    assert auto_tile_batch(net, 80) == 3 * fuse.LOW_PRECISION_CPU_TILES
    threads = torch.get_num_threads()
    try:
        for n, expected in ((1, 1), (2, 1), (8, 2), (16, 4)):
            torch.set_num_threads(n)
            assert cpu_tile_limit() == expected
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------ benchmark harness
def test_benchmark_harness_records(tmp_path, monkeypatch):
    import tools.speed.run as run
    from tools.speed.measure import Pair

    x = torch.randn(16, 2, 3, 8, 8)
    pair = Pair("toy", "NI-LIF toy", lambda: ni_lif_reference(x), lambda: kernels.ni_lif(x), reps=3)
    asked: list[bool] = []

    def cases(device, quick, bf16):
        asked.append(bf16)
        return {"neurons": lambda: [pair]}

    monkeypatch.setattr(run, "all_cases", cases)
    assert run.main(["--quick", "--json", str(tmp_path / "out.json")]) == 0
    payload = json.loads((tmp_path / "out.json").read_text())
    record = payload["records"][0]
    assert {"name", "reference_ms", "fast_ms", "speedup", "max_abs_diff"} <= record.keys()
    assert record["name"] == "toy" and record["max_abs_diff"] == 0.0 and len(record["fast_samples_ms"]) == 3
    assert {"reference_faulted_samples", "fast_faulted_samples"} <= record.keys()
    assert payload["meta"]["threads"] >= 1
    assert asked == [not payload["meta"]["bf16_emulated"]]


@pytest.mark.parametrize("emulated", [False, True])
def test_benchmark_leaves_emulated_bf16_out_unless_asked(monkeypatch, emulated):
    """bf16 rows on a CPU without bfloat16 instructions would take hours: left out by default."""
    import tools.speed.run as run

    asked: list[bool] = []
    monkeypatch.setattr(run, "all_cases", lambda device, quick, bf16: asked.append(bf16) or {})
    monkeypatch.setattr(run, "bf16_is_emulated", lambda device: emulated)
    for flag in ("auto", "on", "off"):
        assert run.main(["--quick", "--bf16", flag]) == 0
    assert asked == [not emulated, True, False]


def test_amp_bf16_warns_where_the_cpu_emulates_it(monkeypatch, caplog):
    from utils.training import device as device_module

    assert device_module.bf16_is_emulated(torch.device("cuda")) is False
    cpu = torch.device("cpu")
    for emulated in (False, True):
        monkeypatch.setattr(device_module, "bf16_is_emulated", lambda d: emulated)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert device_module.setup_amp("bf16", cpu).dtype == torch.bfloat16
        assert ("no bfloat16 instructions" in caplog.text) == emulated


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="getrusage page-fault counts")
def test_benchmark_reports_each_timed_calls_page_faults():
    """A sample that faulted its memory in (the heap reshaped by another path or row) must show
    it: each timed call's kernel time and minor page faults are kept beside its time."""
    import mmap

    from tools.speed.measure import Pair, measure_pair
    from tools.speed.run import table

    pages = 65536  # 256 MB, mapped and touched one page at a time

    def faulting():  # fresh anonymous pages, touched once each: one minor fault per page
        with mmap.mmap(-1, pages * mmap.PAGESIZE) as m:
            for i in range(0, pages * mmap.PAGESIZE, mmap.PAGESIZE):
                m[i] = 1
        return torch.ones(2)

    lines: list[str] = []
    record = measure_pair(Pair("toy", "toy", lambda: torch.ones(2), faulting, reps=3), torch.device("cpu"),
                          log=lines.append)
    flagged = [line for line in lines if "faulted its memory in" in line]
    assert flagged and all("[fast]" in line for line in flagged)  # measured: all three, 0.3 s in the kernel each
    assert len(record.fast_faults) == len(record.reference_faults) == len(record.fast_sys_s) == 3
    assert min(record.fast_faults) >= pages > max(record.reference_faults)
    assert all(s >= 0 for s in record.fast_sys_s + record.reference_sys_s)
    # the summary table counts the flagged samples, so a row timed with faults is marked there too
    assert record.faulted_samples("fast") == len(flagged) and record.faulted_samples("reference") == 0
    assert table([record]).splitlines()[-1].endswith(f"| 0/3 / {len(flagged)}/3 |")


def test_benchmark_peak_memory_is_never_measured_in_a_timed_call(monkeypatch):
    """Measuring peak memory hands the free heap back first, so the call it wraps pays for
    faulting its memory in again: that call must be an extra one, after the timed calls."""
    from tools.speed import measure

    calls: list[tuple[str, bool]] = []
    inside = [False]
    real = measure.PeakMemory.measure

    def tracked(self, fn):
        inside[0] = True
        try:
            return real(self, fn)
        finally:
            inside[0] = False

    monkeypatch.setattr(measure.PeakMemory, "measure", tracked)
    x = torch.randn(8, 8)

    def path(name):
        def run():
            calls.append((name, inside[0]))
            return x * 2
        return run

    record = measure.measure_pair(measure.Pair("toy", "toy", path("ref"), path("fast"), reps=3), torch.device("cpu"),
                                  log=lambda _: None)
    for name in ("ref", "fast"):
        mine = [under for n, under in calls if n == name]
        assert mine == [False] * 4 + [True], name  # warm-up, three timed calls, then the memory call
    assert len(record.fast_samples_ms) == len(record.reference_samples_ms) == 3


def test_kernels_are_pytorch_operators():
    """The kernels are registered operators (profiler names, device dispatch, fake tensors for
    torch.compile); opcheck validates their schemas and fake implementations."""
    ops = torch.ops.spiking_derain
    x = torch.randn(16, 40)
    cases = [
        (ops.nilif_forward, (x, True, "auto")), (ops.nilif_forward, (x, False, "torch")),
        (ops.nilif_backward, (x, x > 0, "auto")),
        (ops.vlif_forward, (torch.randn(4, 2, 3, 6, 8), 2, True, "auto")),
        (ops.vlif_forward, (torch.randn(4, 2, 3, 6, 8), 2, False, "torch")),
        (ops.lif_forward, (x, torch.zeros(40), 2.0, 0.15, True, "auto")),
        (ops.lif_backward, (x, torch.randn(16, 40), 2.0, 0.15, 4.0, "torch")),
    ]
    if native.load() is not None:
        cases.append((ops.upsample2x, (torch.randint(0, 5, (2, 3, 4, 5)).float() / 4,)))
        cases.append((ops.sdem_mix_forward, (x, x.round(), 0.8, 1.3)))
        cases.append((ops.sdem_mix_backward, (x, torch.randn(16, 40), x.round(), 0.8, 1.3)))
        y = torch.randn(4, 3, 5, 6, 7)
        for mode, gate in enumerate((torch.rand(4, 3, 1, 1, 1), torch.rand(1, 3, 5, 1, 1), torch.rand(1, 3, 1, 6, 7))):
            cases.append((ops.gated_product_backward, (torch.randn(y.shape), y, gate, mode)))
    for op, args in cases:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("hw", [(1, 1), (1, 2), (2, 1), (2, 2), (3, 5), (7, 4), (6, 9)])
def test_spike_resize_and_its_adjoint_match_interpolate(backend, hw):
    """The x2 spike resize equals F.interpolate bit for bit, and its gathered adjoint equals
    interpolate's gradient to float32 rounding, edges and one-pixel sizes included."""
    h, w = hw
    y = (torch.randint(0, 5, (2, 3, h, w)).float() / 4).requires_grad_(True)
    grad = torch.randn(2, 3, 2 * h, 2 * w)
    expected = torch.nn.functional.interpolate(y, size=(2 * h, 2 * w), mode="bilinear", align_corners=False)
    out = kernels.upsample_spikes(y, (2 * h, 2 * w), backend)
    assert torch.equal(out, expected)
    (g_fast,) = torch.autograd.grad(out, y, grad)
    (g_ref,) = torch.autograd.grad(expected, y, grad)
    assert _rel(g_fast, g_ref) <= 1e-6


@pytest.mark.parametrize("hw", [(1, 1), (1, 2), (3, 5), (7, 4)])
def test_real_valued_x2_upsampling_keeps_interpolates_forward(backend, hw):
    """The layers' bilinear x2 upsampling in fast training (:func:`kernels.interpolate2x`, through
    ``upsample_seq`` with a backend) is F.interpolate's forward bit for bit on real values, its
    gradient the native adjoint's, equal to interpolate's to float32 rounding; the reference
    implementation (no backend) keeps PyTorch's backward."""
    from models.layers import upsample_seq

    h, w = hw
    y = torch.randn(4, 2, 3, h, w).requires_grad_(True)
    grad = torch.randn(4, 2, 3, 2 * h, 2 * w)
    expected = upsample_seq(y, 2)
    assert type(expected.grad_fn.next_functions[0][0]).__name__.startswith("UpsampleBilinear2D")
    out = upsample_seq(y, 2, backend)
    assert torch.equal(out, expected)
    (g_fast,) = torch.autograd.grad(out, y, grad)
    (g_ref,) = torch.autograd.grad(expected, y, grad)
    assert _rel(g_fast, g_ref) <= 1e-6
    if backend != "torch":
        assert type(out.grad_fn.next_functions[0][0]).__name__ == "Interpolate2xFunctionBackward"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_fire_in_float32(backend, dtype, caplog):
    """Mixed precision: the kernels take bf16/fp16 tensors, decide spikes from float32
    membranes, and return spikes (exact multiples of 1/4) and gradients in the input dtype."""
    x = (torch.randn(4, 2, 3, 8, 10) * 2).to(dtype)
    grad = torch.randn_like(x)
    y, g = _fwd_bwd(lambda v: kernels.ni_lif(v, backend), x, grad)
    y32, g32 = _fwd_bwd(ni_lif_reference, x.float(), grad.float())
    assert y.dtype == g.dtype == dtype and torch.equal(y.float(), y32) and torch.equal(g, g32.to(dtype))
    spikes = kernels.upsample_spikes(kernels.vlif_spikes(x, 2, backend), (8, 10), backend)
    assert spikes.dtype == dtype
    assert torch.equal(spikes.float(), kernels.upsample_spikes(kernels.vlif_spikes(x.float(), 2), (8, 10)))
    node = set_neuron_impl(lif(), "fast", backend)
    with caplog.at_level("INFO", logger="models.neurons"):
        y_lif = node(x * 0.1)
    assert y_lif.dtype == dtype and not [r for r in caplog.records if "not used" in r.getMessage()]
    node_ref = set_neuron_impl(lif(), "reference")
    assert torch.equal(y_lif.float(), node_ref((x * 0.1).float()))


class _Conversions(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the dtype conversions (``aten.to`` / ``_to_copy``) run inside it, by element count."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[torch.dtype, torch.dtype, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.__name__.startswith(("to.", "_to_copy")) and isinstance(out, torch.Tensor) and args[0].dtype != out.dtype:
            self.seen.append((args[0].dtype, out.dtype, out.numel()))
        return out


@pytest.mark.skipif(native.load() is None, reason="no C compiler: the bf16 kernels are native only")
def test_gradient_free_bf16_runs_the_bf16_kernels_exactly():
    """Mixed-precision inference: gradient-free bfloat16 input goes to the bfloat16 instances of
    the C kernels, with no conversion copies, and gives exactly what the float32 kernels give on
    the widened input (spikes, membranes; the x2 resize rounded once, NaN and infinities
    included)."""
    bf16 = torch.bfloat16
    x = (torch.randn(4, 2, 3, 8, 10) * 2).to(bf16)
    y = torch.cat([torch.randn(2, 3, 5, 7) * 1e3, torch.randn(2, 3, 5, 7)]).to(bf16)
    y[0, 0, 0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 3e38])
    v0 = torch.zeros(x.shape[1:], dtype=bf16)
    with torch.inference_mode(), _Conversions() as conv:
        spikes = kernels.ni_lif(x)
        vlif = kernels.vlif_spikes(x, 2)
        resized = kernels.upsample_spikes(vlif, (8, 10))
        values = kernels.upsample_spikes(y, (10, 14))
        lif_spikes, v = kernels.lif_multi_step(x * 0.1, v0, 2.0, 0.15, 4.0)
    big = [c for c in conv.seen if c[2] > v0.numel()]  # only the LIF's initial membrane (one step) widens
    assert not big, f"bf16 activations converted: {big}"
    for out in (spikes, vlif, resized, values, lif_spikes):
        assert out.dtype == bf16
    assert v.dtype == torch.float32
    assert torch.equal(spikes.float(), kernels.ni_lif(x.float()))
    assert torch.equal(vlif.float(), kernels.vlif_spikes(x.float(), 2))
    assert torch.equal(resized.float(), kernels.upsample_spikes(vlif.float(), (8, 10)))
    ref = torch.nn.functional.interpolate(y.float(), size=(10, 14), mode="bilinear", align_corners=False).to(bf16)
    assert torch.equal(values.isnan(), ref.isnan())
    assert torch.equal(values.nan_to_num(), ref.nan_to_num())
    lif32, v32 = kernels.lif_multi_step((x * 0.1).float(), v0.float(), 2.0, 0.15, 4.0)
    assert torch.equal(lif_spikes.float(), lif32) and torch.equal(v, v32)
    with torch.enable_grad():  # with gradients: the float32 kernels on widened copies, as before
        xg = x.clone().requires_grad_()
        assert not kernel_backend.runs_bf16_natively(xg, "auto")
        assert torch.equal(kernels.ni_lif(xg).float(), kernels.ni_lif(x.float()))


@pytest.mark.skipif(native.load() is None, reason="no C compiler: the bf16 kernels are native only")
def test_bf16_training_runs_the_bf16_kernels():
    """Mixed-precision training: bfloat16 input with gradients goes to the bfloat16 instances of
    the LIF, NI-LIF and VLIF kernels and of the spike resize, forward and backward, with no
    conversion copies, and gives what the float32 kernels give between conversions: the same
    spikes, and the same gradients rounded once (NI-LIF and VLIF bit for bit; LIF and the resize,
    whose backward is built with fast math, within one bfloat16 step)."""
    bf16 = torch.bfloat16
    torch.manual_seed(3)
    x = (torch.randn(4, 2, 3, 8, 10) * 2).to(bf16)
    x.view(-1)[:2] = torch.tensor([float("nan"), 0.5])
    v0 = torch.zeros(x.shape[1:])
    grad = torch.randn(x.shape).to(bf16)
    grad_vlif = torch.randn(8, 12, 4, 5).to(bf16)
    spikes = (torch.randint(0, 5, (8, 12, 4, 5)) / 4).to(bf16)  # VLIF's spikes, resized x2
    grad_resized = torch.randn(8, 12, 8, 10).to(bf16)
    cases = {  # name: (bf16 in and out, float32 between conversions, input, incoming gradient)
        "nilif": (kernels.ni_lif, lambda v: kernels.ni_lif(v.float()).to(bf16), x, grad),
        "vlif": (lambda v: kernels.vlif_spikes(v, 2), lambda v: kernels.vlif_spikes(v.float(), 2).to(bf16), x,
                 grad_vlif),
        "lif": (lambda v: kernels.lif_multi_step(v * 0.1, v0, 2.0, 0.15, 4.0)[0],
                lambda v: kernels.lif_multi_step((v * 0.1).float(), v0, 2.0, 0.15, 4.0)[0].to(bf16), x, grad),
        "resize": (lambda v: kernels.upsample_spikes(v, (8, 10)),
                   lambda v: kernels.upsample_spikes(v.float(), (8, 10)).to(bf16), spikes, grad_resized),
    }
    for name, (direct, converted, inputs, g) in cases.items():
        with _Conversions() as conv:
            y, gx = _fwd_bwd(direct, inputs, g)
        assert not [c for c in conv.seen if c[2] > v0.numel()], f"{name}: bf16 converted: {conv.seen}"
        y_ref, gx_ref = _fwd_bwd(converted, inputs, g)
        assert y.dtype == gx.dtype == bf16, name
        torch.testing.assert_close(y, y_ref, rtol=0, atol=0, equal_nan=True, msg=name)
        tol = 2 ** -7 if name in ("lif", "resize") else 0
        torch.testing.assert_close(gx, gx_ref, rtol=tol, atol=0, equal_nan=True, msg=name)
        assert gx.float().nan_to_num().abs().sum() > 0, name


@pytest.mark.skipif(native.load() is None, reason="no C compiler: the bf16 kernels are native only")
def test_bf16_training_mixes_sdem_in_one_pass():
    """SDEM's mix in bfloat16 training: one autograd node, the same bfloat16 values as the
    gradient-free (inference) kernel, and gradients rounded once from float32: within one bfloat16
    rounding of the float64 values (autograd's bfloat16 terms were not), the scalars' to 1e-5."""
    from models.vlifnet import decompose

    bf16 = torch.bfloat16
    torch.manual_seed(4)
    u = torch.randn(4, 2, 8, 16, 16).to(bf16)
    h = (torch.randint(0, 5, u.shape) / 4).to(bf16)
    high, low = torch.nn.Parameter(torch.tensor([0.7])), torch.nn.Parameter(torch.tensor([0.3]))
    g = torch.randn(u.shape).to(bf16)
    uu, hh = u.clone().requires_grad_(), h.clone().requires_grad_()
    out = decompose(uu, hh, high, low, fast=True)
    assert type(out.grad_fn).__name__ == "SDEMMixFunctionBackward" and out.dtype == bf16
    out.backward(g)
    with torch.no_grad():
        assert torch.equal(out, decompose(u, h, high, low, fast=True))  # the inference kernel's values
    u64, h64, g64, hi, lo = u.double(), h.double(), g.double(), high.double().item(), low.double().item()
    for got, want in ((uu.grad, g64 * (lo + h64)), (hh.grad, g64 * (hi - lo + u64))):
        assert got.dtype == bf16
        assert ((got.double() - want).abs() <= want.abs() * 2 ** -8 + 1e-30).all()
    assert abs(high.grad.item() - (g64 * h64).sum().item()) <= 1e-5 * (g64 * h64).abs().sum().item()
    assert abs(low.grad.item() - (g64 * (u64 - h64)).sum().item()) <= 1e-5 * (g64 * (u64 - h64)).abs().sum().item()


@pytest.mark.skipif(native.load() is None, reason="no C compiler: the bf16 kernels are native only")
def test_bf16_inference_keeps_activations_in_bf16(tiny_config):
    """``prepare_for_inference(amp=torch.bfloat16)`` under autocast: convolution weights stored in
    bf16 (the attention MLPs excepted), no activation converted between layers (only the output
    added to the float32 image), and the result close to float32's."""
    from models.layers import Float32MLP

    torch.manual_seed(0)
    net = build_model("vlifnet", **tiny_config).eval()
    for m in net.modules():  # trained-looking batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
    fp32 = prepare_for_inference(net)
    bf = prepare_for_inference(net, amp=torch.bfloat16)
    mlp_params = {id(p) for m in bf.modules() if isinstance(m, Float32MLP) for p in m.parameters()}
    for m in bf.modules():
        if isinstance(m, torch.nn.modules.conv._ConvNd):
            for p in m.parameters(recurse=False):
                assert p.dtype == (torch.float32 if id(p) in mlp_params else torch.bfloat16)
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        ref = fp32(x)
        with torch.autocast("cpu", dtype=torch.bfloat16), _Conversions() as conv:
            out = bf(x)
    big = [(a, b, n) for a, b, n in conv.seen if n >= 4 * 32 * 32]  # an activation: T planes or more;
    # pooled statistics are smaller (the spatial gate's: 2 planes)
    assert big == [(torch.float32, torch.bfloat16, 4 * 3 * 32 * 32)], big  # the image, repeated T times
    assert out.dtype == torch.float32
    assert 10 * torch.log10(1 / (out - ref).pow(2).mean()) > 30


@pytest.mark.skipif(native.load() is None, reason="no C compiler: the bf16 kernels are native only")
def test_bf16_sdem_mix_is_the_float32_expression_rounded_once():
    """SDEM's mixing in bf16 inference (one C pass): exactly the float32 expression on the
    widened inputs, rounded to bf16 once; with gradients or in float32 the PyTorch expression."""
    from models.vlifnet import decompose

    torch.manual_seed(6)
    u = (torch.randn(4, 2, 8, 6, 7) * 3).to(torch.bfloat16)
    h = kernels.ni_lif(u.float()).to(torch.bfloat16)
    high, low = torch.tensor([0.8]), torch.tensor([1.3])
    with torch.inference_mode():
        mixed = decompose(u, h, high, low)
    wide = high * h.float() + low * (u.float() - h.float()) + u.float() * h.float()
    assert mixed.dtype == torch.bfloat16 and torch.equal(mixed, wide.to(torch.bfloat16))
    assert torch.equal(decompose(u.float(), h.float(), high, low), wide)


@pytest.mark.skipif(native.load() is None, reason="no C compiler: the fused mix is native only")
def test_float32_sdem_mix_is_the_expression_and_its_gradient():
    """SDEM's float32 mixing in the fast implementation (one C pass, one autograd node): the
    PyTorch expression bit for bit, with and without gradients; its gradients (one pass, the
    scalars' sums in float64) equal autograd's to float32 rounding; the reference
    implementation and the torch backend keep the expression."""
    from models.kernels.mixing import sdem_mix_one_pass
    from models.vlifnet import SDEM, decompose

    torch.manual_seed(7)
    u0 = torch.randn(4, 2, 8, 6, 7) * 3
    h0 = kernels.ni_lif(u0)
    grad = torch.randn_like(u0)

    def run(fn):
        u, h = u0.clone().requires_grad_(), h0.clone().requires_grad_()
        high, low = torch.tensor([0.8], requires_grad=True), torch.tensor([1.3], requires_grad=True)
        out = fn(u, h, high, low)
        out.backward(grad)
        return out, [t.grad for t in (u, h, high, low)]

    ref, ref_grads = run(lambda u, h, a, b: a * h + b * (u - h) + u * h)
    out, grads = run(sdem_mix_one_pass)
    assert out.grad_fn is not None and "SDEMMix" in type(out.grad_fn).__name__
    assert torch.equal(out, ref)
    for g, r in zip(grads, ref_grads):
        assert g.shape == r.shape and g.dtype == r.dtype
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-6 * r.abs().max().item())
    with torch.inference_mode():
        assert torch.equal(decompose(u0, h0, torch.tensor([0.8]), torch.tensor([1.3]), fast=True), ref.detach())
    assert sdem_mix_one_pass(u0, h0, torch.tensor([0.8]), torch.tensor([1.3]), backend="torch") is None
    block = SDEM(16)
    with neuron_impl(block, "reference"):
        assert block.impl == "reference"  # SDEM switches with the neurons
    assert block.impl == "fast"


@pytest.mark.skipif(native.load() is None, reason="no C compiler: the bf16 kernels are native only")
def test_bf16_attention_pools_in_one_pass():
    """bfloat16 inference: the pooling kernel's mean and max equal PyTorch's (max exactly, NaN
    kept; mean to float32 rounding), and the attention gates built on it match their float32
    results to bfloat16 rounding."""
    from models.kernels.pooling import col_mean_max, row_mean_max
    from models.layers import TimeAttention, mda

    torch.manual_seed(0)
    x = torch.randn(3, 5, 333).to(torch.bfloat16)  # a row length with a tail
    x[1, 2, 7] = float("nan")
    with torch.inference_mode():
        mean, peak = row_mean_max(x)
        cmean, cpeak = col_mean_max(x)
    wide = x.float()
    assert torch.equal(peak.isnan(), wide.amax(-1).isnan()) and torch.equal(peak.nan_to_num(), wide.amax(-1).nan_to_num())
    torch.testing.assert_close(mean, wide.mean(-1), equal_nan=True, rtol=1e-5, atol=1e-6)
    assert torch.equal(cpeak.nan_to_num(), wide.amax(1).nan_to_num())
    torch.testing.assert_close(cmean, wide.mean(1), equal_nan=True, rtol=1e-5, atol=1e-6)

    attn, time_attn = mda(32, 4).eval(), TimeAttention(16).eval()
    x_seq = torch.randn(4, 1, 32, 12, 10)
    s = torch.randn(1, 16, 32, 6, 5)
    with torch.inference_mode():
        ref, ref_t = attn(x_seq), time_attn(s)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, low_t = attn(x_seq.to(torch.bfloat16)), time_attn(s.to(torch.bfloat16))
    assert low.dtype == low_t.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=0.03, atol=0.03)
    torch.testing.assert_close(low_t.float(), ref_t, rtol=0.01, atol=0.01)


def test_conv_floor_replays_exactly_the_recorded_convolutions(tiny_config):
    """The harness's conv floor: every convolution call of a forward, with its input, replayed
    alone (forward, or forward and backward without leaving gradients behind)."""
    from tools.speed.floor import record_convs, replay_convs

    net = build_model("vlifnet", **tiny_config).train()
    x = torch.rand(2, 3, 16, 24)
    calls = record_convs(net, lambda: net(x))
    n_convs = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)) for m in net.modules())
    assert len(calls) >= n_convs > 0  # every convolution ran at least once (SMU's Conv3d blocks more)
    counted = []
    handles = [m.register_forward_hook(lambda *a: counted.append(1))
               for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    replay_convs(calls, backward=True, repeat=2)()
    for h in handles:
        h.remove()
    assert len(counted) == 2 * len(calls)
    assert all(p.grad is None for p in net.parameters())


def test_conv_floor_is_timed_interleaved_with_the_path_it_bounds():
    """A floor row times the fast path (reference column) and its convolutions alone in turn, so
    that a slow phase of the machine hits both; the replay returns nothing to compare."""
    from tools.speed.measure import Pair, measure_pair

    order: list[str] = []
    pair = Pair("toy_conv_floor", "toy", lambda: order.append("fast") or torch.ones(2),
                lambda: order.append("floor"), reps=3, warmup=0)
    record = measure_pair(pair, torch.device("cpu"), log=lambda _: None)
    assert order[:6] == ["fast", "floor", "floor", "fast", "fast", "floor"]
    assert record.speedup is not None and record.max_abs_diff is None and len(record.reference_samples_ms) == 3


@pytest.mark.skipif(native.load() is None, reason="no C compiler: nothing native to split")
def test_native_kernels_give_the_same_bits_however_a_call_is_split(monkeypatch):
    """Every native kernel, split into three parts per call, gives the same bits on OpenMP
    threads as one call per part on Python threads (the fallback), and the same as one part,
    except the mix's scalar gradients, whose per-part float64 sums are added in another order."""
    from models.kernels.mixing import sdem_mix_one_pass
    from models.kernels.pooling import col_mean_max, row_mean_max

    torch.manual_seed(3)
    x = torch.randn(4, 2, 3, 10, 12) * 2
    spikes = (torch.randint(0, 5, (3, 4, 10, 12)) / 4).float()
    pooled = torch.randn(3, 40, 70).to(torch.bfloat16)
    high = torch.tensor([0.8], requires_grad=True)

    def fwd_bwd(fn, inp: torch.Tensor) -> list[torch.Tensor]:
        leaf = inp.clone().requires_grad_(True)
        y = fn(leaf)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(5)))
        return [y.detach(), leaf.grad]

    def run() -> tuple[list[torch.Tensor], torch.Tensor]:
        high.grad = None
        out = fwd_bwd(kernels.ni_lif, x) + fwd_bwd(lambda v: kernels.vlif_spikes(v, 2), x)
        out += fwd_bwd(lambda v: kernels.lif_multi_step(v, torch.zeros(v.shape[1:]), 2.0, 0.15, 4.0)[0], x)
        out += fwd_bwd(lambda v: sdem_mix_one_pass(v, v.round(), high, torch.tensor([1.3])), x)
        out += fwd_bwd(lambda v: kernels.upsample_spikes(v, (20, 24)), spikes)
        with torch.inference_mode():
            out += [*row_mean_max(pooled), *col_mean_max(pooled), kernels.ni_lif(x.to(torch.bfloat16))]
        return out, high.grad.clone()

    threads = torch.get_num_threads()
    monkeypatch.setattr(kernel_backend, "CPU_CHUNK", 64)
    try:
        torch.set_num_threads(1)
        one_part, scalar_one = run()
        torch.set_num_threads(3)
        on_openmp, scalar_openmp = run()
        monkeypatch.setattr(native, "_parallel", False)
        on_python_threads, scalar_python = run()
    finally:
        torch.set_num_threads(threads)
    assert len(one_part) == 15
    for a, b, c in zip(one_part, on_openmp, on_python_threads):
        assert torch.equal(b, c)
        assert torch.equal(a, b)
    assert torch.equal(scalar_openmp, scalar_python)
    torch.testing.assert_close(scalar_openmp, scalar_one, rtol=1e-6, atol=0)


def test_native_kernels_share_pytorchs_openmp_runtime():
    """Built with OpenMP, the kernels link to libgomp by name and so find the runtime PyTorch
    loaded: one OpenMP runtime in the process, and the kernels run their parts on it."""
    lib = native.load()
    if lib is None or not lib.kernels_openmp():
        pytest.skip("the native kernels were built without OpenMP here")
    if "OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("this PyTorch does not run on OpenMP")
    assert len(native._openmp_runtimes()) == 1
    assert native.parallel()
