"""The Triton kernels of NI-LIF and VLIF (``kernel_backend="triton"``) against the reference, and
the backend's fallback when Triton fails.

The kernels run on CUDA; without a GPU they run on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1`` set before the first import of Triton), and Triton compiles them for a
Hopper GPU all the same (outside the interpreter), as ``.ci/run`` does in a step of its own.
Where triton is not installed, or there is neither a GPU nor the interpreter, those tests skip;
the fallback tests run everywhere.
"""
from __future__ import annotations

import logging
import os

import pytest
import torch

from models import build_model, kernels
from models.kernels import backend
from models.neurons import VLIF, neuron_impl, ni_lif_reference, patch_to_time, time_to_patch

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not backend.triton_installed() or not (torch.cuda.is_available() or INTERPRETED),
    reason="the Triton kernels need triton and a CUDA GPU, or TRITON_INTERPRET=1 to run on CPU tensors")


def _fwd_bwd(fn, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.clone().requires_grad_(True)
    y = fn(leaf)
    y.backward(grad)
    return y.detach(), leaf.grad


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(torch.nan_to_num(a, nan=7.0), torch.nan_to_num(b, nan=7.0))


@needs_triton
def test_triton_kernels_are_chosen():
    x = torch.zeros(3, device=DEVICE)
    assert backend.triton_kernels("triton", x) is not None
    assert backend.triton_kernels("torch", x) is None and backend.triton_kernels("native", x) is None
    assert backend.triton_kernels("triton", x.double()) is None  # float32 only
    assert (backend.triton_kernels("auto", x) is not None) == (DEVICE == "cuda")  # never the interpreter


@needs_triton
def test_triton_nilif_identical_to_reference():
    torch.manual_seed(0)
    x = torch.randn(16, 2, 3, 9, 13) * 2
    # rounding midpoints, clamp limits, a NaN
    x.view(-1)[:10] = torch.tensor([0.5, 1.5, 2.5, 3.5, 0.0, 4.0, -0.0, 4.0001, -1e-7, float("nan")])
    x, grad = x.to(DEVICE), torch.randn(x.shape).to(DEVICE)
    y_ref, g_ref = _fwd_bwd(ni_lif_reference, x, grad)
    y, g = _fwd_bwd(lambda v: kernels.ni_lif(v, "triton"), x, grad)
    assert _same(y, y_ref) and _same(g, g_ref)  # the gradient bit for bit too
    assert 0.1 < (y_ref > 0).float().mean().item() < 0.9  # spikes and silence both occur
    with torch.no_grad():
        assert _same(kernels.ni_lif(x, "triton"), y_ref)


@needs_triton
@pytest.mark.parametrize("r", [2, 3])
@pytest.mark.parametrize("shape", [(4, 2, 3, 5, 6), (1, 1, 2, 1, 1), (2, 3, 1, 7, 1)])  # T, B, C, h, w
def test_triton_vlif_spikes_identical_to_reference(r, shape):
    T, B, C, h, w = shape
    torch.manual_seed(1)
    x = (torch.randn(T, B, C, h * r, w * r) * 2).to(DEVICE)
    grad = torch.randn(T * B, C * r * r, h, w).to(DEVICE)
    ref = lambda v: time_to_patch(ni_lif_reference(patch_to_time(v, r)), T, r)  # noqa: E731
    y_ref, g_ref = _fwd_bwd(ref, x, grad)
    y, g = _fwd_bwd(lambda v: kernels.vlif_spikes(v, r, "triton"), x, grad)
    assert torch.equal(y, y_ref) and torch.equal(g, g_ref)
    with torch.no_grad():
        assert torch.equal(kernels.vlif_spikes(x, r, "triton"), y_ref)


@needs_triton
def test_triton_vlif_layer_and_network_identical_to_reference():
    torch.manual_seed(2)
    layer = VLIF(3, 2).to(DEVICE)
    x = (torch.randn(4, 2, 3, 12, 10) * 2).to(DEVICE)
    with torch.no_grad():
        with neuron_impl(layer, "reference"):
            y_ref = layer(x)
        with neuron_impl(layer, "fast", "triton"):
            assert torch.equal(layer(x), y_ref)
    net = build_model("vlifnet", dim=16, T=2).to(DEVICE).eval()
    img = torch.rand(1, 3, 16, 16).to(DEVICE)
    with torch.no_grad():
        with neuron_impl(net, "reference"):
            out_ref = net(img)
        with neuron_impl(net, "fast", "triton"):
            out = net(img)
    assert torch.equal(out, out_ref)


# ------------------------------------------------------------------ built for a GPU, without one
def _builds() -> list[tuple[str, dict, dict]]:
    """(kernel, signature, constants) for each kernel with and without its mask, r = 2 and 3, and
    sizes of 1, which Triton turns into constants."""
    fp, b1 = "*fp32", "*i1"
    nilif = {"x_ptr": fp, "s_ptr": fp, "mask_ptr": b1, "L": "i32", "N": "i32"}
    vlif = {"x_ptr": fp, "s_ptr": fp, "mask_ptr": b1, "T": "i32", "BC": "i32", "h": "i32", "w": "i32", "step": "i32"}
    grad_vlif = {"g_ptr": fp, "mask_ptr": b1, "out_ptr": fp, "T": "i32", "BC": "i32", "h": "i32", "w": "i32",
                 "step": "i32", "last_step": "i64"}
    grad_nilif = {"g_ptr": fp, "mask_ptr": b1, "out_ptr": fp, "L": "i32", "N": "i32", "last_step": "i64"}
    builds = []
    for mask in (True, False):
        builds.append(("_nilif_forward_kernel", nilif, {"WITH_MASK": mask, "BLOCK": 1024}))
        for r in (2, 3):
            builds.append(("_vlif_forward_kernel", vlif, {"WITH_MASK": mask, "BLOCK": 1024, "R": r}))
    builds.append(("_nilif_backward_kernel", grad_nilif, {"BLOCK": 1024}))
    builds.append(("_vlif_backward_kernel", grad_vlif, {"BLOCK": 1024, "R": 2}))
    builds.append(("_vlif_backward_kernel", {**grad_vlif, "h": "constexpr", "w": "constexpr", "T": "constexpr"},
                   {"BLOCK": 1024, "R": 3, "h": 1, "w": 1, "T": 1}))
    builds.append(("_nilif_forward_kernel", {**nilif, "L": "constexpr"}, {"WITH_MASK": True, "BLOCK": 1024, "L": 1}))
    return builds


@pytest.mark.skipif(not backend.triton_installed() or INTERPRETED,
                    reason="needs triton, not under its interpreter (which runs kernels instead of building them)")
@pytest.mark.parametrize("kernel, signature, constants", _builds())
def test_triton_kernels_compile_for_a_gpu_without_fused_multiply_adds(kernel, signature, constants):
    """Triton compiles each kernel to machine code for a Hopper GPU (sm_90) with no GPU present,
    and its PTX has no fused multiply-add: every product and sum rounds as PyTorch's do."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from models.kernels import triton_kernels

    source = ASTSource(fn=getattr(triton_kernels, kernel), signature={
        **signature, **{name: "constexpr" for name in constants}}, constexprs=constants)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=triton_kernels.LAUNCH)
    assert compiled.asm["cubin"]
    ptx = compiled.asm["ptx"]
    assert "st.global" in ptx and "fma." not in ptx


# ------------------------------------------------------------------ fallback (no Triton needed)
class _Broken:
    """Stands for a Triton install whose kernels fail to build."""

    def nilif_forward(self, *args):
        raise RuntimeError("PTX assembly failed")


def test_triton_kernel_failure_falls_back_under_auto(monkeypatch, caplog):
    monkeypatch.setattr(backend, "_triton_failed", [])
    monkeypatch.setattr(backend, "triton_kernels",
                        lambda name, *t: None if backend._triton_failed and name == "auto" else _Broken())
    x = torch.randn(3, 5)
    with caplog.at_level(logging.WARNING, logger=backend.__name__):
        assert backend.on_triton("auto", lambda k: k.nilif_forward(x), x) is None
        assert backend.on_triton("auto", lambda k: k.nilif_forward(x), x) is None
    warnings = [r.getMessage() for r in caplog.records if "Triton spiking kernels failed" in r.getMessage()]
    assert len(warnings) == 1 and "PTX assembly failed" in warnings[0]  # logged once
    with pytest.raises(RuntimeError, match="PTX assembly failed"):  # asked for by name: raised
        backend.on_triton("triton", lambda k: k.nilif_forward(x), x)


def test_triton_backend_without_triton_says_so(monkeypatch):
    monkeypatch.setattr(backend, "triton_installed", lambda: False)
    with pytest.raises(RuntimeError, match="needs the triton package"):
        kernels.check_backend("triton")
    x = torch.randn(16, 40)
    assert backend.triton_kernels("triton", x) is None
    with torch.no_grad():  # the neurons run the torch loops instead: same spikes
        assert torch.equal(kernels.ni_lif(x, "triton"), ni_lif_reference(x))
