"""Every CUDA test: float64 goldens, fast against reference, CPU against CUDA, test.py on CUDA
(with and without CUDA graphs).

Each test skips without CUDA; ``scripts/gpu_check.sh`` runs this file on a GPU machine. The
golden and comparison helpers take the device as an argument: on ``"cpu"`` they are the
procedure of ``tests/test_golden.py`` (they pass there too).
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch

from cli_helpers import TINY_NET_FLAGS, load_script
from models import build_model, kernels
from models.neurons import NEURON_IMPLS, VLIF, lif, neuron_impl, ni_lif_reference, set_neuron_impl

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
pytestmark = CUDA

GOLDEN64 = Path(__file__).parent / "data" / "golden64"
GOLDEN64_FILES = ["vlifnet_small_f64.pt", "vlifnet_small_refine_f64.pt", "esdnet_small_f64.pt"]
TINY = dict(dim=16, en_num_blocks=(1, 1, 2, 2), de_num_blocks=(1, 1, 1, 1))
OUTPUT_ATOL = 1e-9  # float64: outputs agree up to rounding (SPEC 5b)
GRAD_RTOL = 1e-7  # float64: gradients, relative norm error (SPEC 5b)
ZERO_GRAD_ATOL = 1e-12  # where the reference gradient is exactly zero
FAST_GRAD_RTOL = 1e-5  # float32, fast against reference
FAST_TENSOR_GRAD_RTOL = 1e-3  # per parameter tensor: rounding amplified by cancelling sums (see test_fast.py)
FLOAT32_MEAN_ABS = 1e-3  # float32, CPU against CUDA: rare spike flips only


# ------------------------------------------------------------------ helpers
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative norm error of ``a`` against ``b`` (both moved to CPU float64)."""
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().cpu().double() - b.detach().cpu().double()).abs().max().item()


def assert_grad_close(grad: torch.Tensor | None, grad_ref: torch.Tensor, rtol: float, what: str) -> None:
    """``grad`` within ``rtol`` relative norm error of ``grad_ref``; an all-zero reference needs
    ``grad`` to be missing or at most ``ZERO_GRAD_ATOL`` everywhere."""
    if grad_ref.abs().max().item() == 0:
        assert grad is None or grad.abs().max().item() <= ZERO_GRAD_ATOL, f"{what}: reference is zero, got {grad}"
        return
    assert grad is not None, f"{what}: no gradient"
    rel = _rel(grad, grad_ref)
    assert rel < rtol, f"{what}: relative gradient error {rel:.3g} >= {rtol:g}"


@contextlib.contextmanager
def ieee_float32() -> Iterator[None]:
    """Plain float32 convolutions and matrix products on CUDA (no TF32) inside the block.

    PyTorch lets cuDNN convolutions use TF32 by default, which rounds their inputs to 10
    mantissa bits (relative error up to about 5e-4). Uses the fp32_precision API where it
    exists (reading the legacy ``allow_tf32`` flags after setting it raises), the legacy
    flags otherwise.
    """
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    flags = [getattr(cudnn, "conv", None), matmul]
    if all(hasattr(f, "fp32_precision") for f in flags):
        saved = [f.fp32_precision for f in flags]
        for f in flags:
            f.fp32_precision = "ieee"
        try:
            yield
        finally:
            for f, value in zip(flags, saved):
                f.fp32_precision = value
    else:
        saved = cudnn.allow_tf32, matmul.allow_tf32
        cudnn.allow_tf32 = matmul.allow_tf32 = False
        try:
            yield
        finally:
            cudnn.allow_tf32, matmul.allow_tf32 = saved


@pytest.fixture
def deterministic() -> Iterator[None]:
    """Deterministic cuDNN algorithms, so that equal inputs give equal outputs run to run."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


# ------------------------------------------------------------------ float64 goldens
def golden64_net(file: str, device: str | torch.device) -> tuple[torch.nn.Module, dict]:
    """A freshly loaded float64 network of golden file ``file`` on ``device``, and the file's tensors."""
    ref = torch.load(GOLDEN64 / file, weights_only=True)
    net = build_model("esdnet" if file.startswith("esdnet") else "vlifnet", **ref["config"])
    net.load_state_dict(ref["state_dict"], strict=True)
    return net.double().to(device), ref


def check_golden64_eval(file: str, device: str | torch.device, impl: str = "reference") -> None:
    """Eval-mode output in float64 on ``device`` within ``OUTPUT_ATOL`` of the golden file."""
    net, ref = golden64_net(file, device)
    with neuron_impl(net, impl), torch.no_grad():
        out = net.eval()(ref["input"].to(device, torch.float64))
    assert out.dtype == torch.float64 and out.device.type == torch.device(device).type
    err = _max_abs(out, ref["output_eval"])
    assert err < OUTPUT_ATOL, f"{file} ({impl}, {device}): eval output off by {err:.3g}"


def check_golden64_train(file: str, device: str | torch.device, impl: str = "reference") -> None:
    """Train-mode output, input gradient and every listed parameter gradient in float64 on
    ``device`` against the golden file (loss: output weighted by ``linspace(-1, 1)``)."""
    net, ref = golden64_net(file, device)
    x = ref["input"].to(device, torch.float64).requires_grad_(True)
    with neuron_impl(net, impl):
        out = net.train()(x)
        err = _max_abs(out, ref["output_train"])
        assert err < OUTPUT_ATOL, f"{file} ({impl}, {device}): train output off by {err:.3g}"
        weights = torch.linspace(-1, 1, out.numel(), dtype=torch.float64, device=out.device).view_as(out)
        (out * weights).sum().backward()
    assert_grad_close(x.grad, ref["input_grad"], GRAD_RTOL, f"{file} ({impl}, {device}) input")
    params = dict(net.named_parameters())
    assert ref["param_grads"], "the golden file lists parameter gradients"
    for key, grad_ref in ref["param_grads"].items():
        assert_grad_close(params[key].grad, grad_ref, GRAD_RTOL, f"{file} ({impl}, {device}) {key}")


@pytest.mark.parametrize("file", GOLDEN64_FILES)
def test_golden64_eval_cuda(file):
    check_golden64_eval(file, "cuda")


@pytest.mark.parametrize("file", GOLDEN64_FILES)
def test_golden64_train_cuda(file):
    check_golden64_train(file, "cuda")


@pytest.mark.parametrize("file", GOLDEN64_FILES)
def test_golden64_fast_cuda(file):
    """The fast path in float64: NI-LIF and VLIF run the in-place PyTorch loops in float64,
    LIF goes to spikingjelly (the fast LIF kernel is CPU float32 only)."""
    check_golden64_eval(file, "cuda", "fast")
    check_golden64_train(file, "cuda", "fast")


# ------------------------------------------------------------------ fast against reference, float32
def _fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
             grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.clone().requires_grad_(True)
    y = fn(leaf)
    y.backward(grad)
    return y.detach(), leaf.grad


def _nilif_input(shape: tuple[int, ...] = (16, 2, 3, 9, 13)) -> torch.Tensor:
    """Random membranes, plus values exactly at the rounding midpoints and clamp limits."""
    x = torch.randn(shape) * 2
    x.view(-1)[:9] = torch.tensor([0.5, 1.5, 2.5, 3.5, 0.0, 4.0, -0.0, 4.0001, -1e-7])
    return x.cuda()


def test_nilif_fast_equals_reference_cuda():
    x = _nilif_input()
    grad = torch.randn_like(x)
    y_ref, g_ref = _fwd_bwd(ni_lif_reference, x, grad)
    y_fast, g_fast = _fwd_bwd(kernels.ni_lif, x, grad)
    assert torch.equal(y_fast, y_ref)
    assert _rel(g_fast, g_ref) <= FAST_GRAD_RTOL
    with torch.inference_mode():
        assert torch.equal(kernels.ni_lif(x), y_ref)


@pytest.mark.parametrize("v_th", [0.15, 0.03])
def test_lif_fast_equals_reference_cuda(v_th):
    x = (torch.randn(4, 2, 3, 9, 13) * 0.3).cuda()
    x.view(-1)[:3] = v_th  # charged exactly at the threshold: fires
    grad = torch.randn_like(x)
    runs = {}
    for impl in NEURON_IMPLS:
        node = set_neuron_impl(lif(v_th), impl).cuda()
        runs[impl] = (*_fwd_bwd(node, x, grad), node.v)
    (y_ref, g_ref, v_ref), (y_fast, g_fast, v_fast) = runs["reference"], runs["fast"]
    assert torch.equal(y_fast, y_ref) and torch.equal(v_fast, v_ref)
    assert _rel(g_fast, g_ref) <= FAST_GRAD_RTOL
    assert 0.05 < y_ref.mean().item() < 0.6  # the test exercises firing and resets


@pytest.mark.parametrize("r", [2, 3])
def test_vlif_layer_fast_equals_reference_cuda(r, deterministic):
    torch.manual_seed(1)
    layer = VLIF(3, r).cuda()
    x = (torch.randn(4, 2, 3, 6 * r, 5 * r) * 2).cuda()
    grad = torch.randn_like(x)
    runs = {}
    for impl in NEURON_IMPLS:
        layer.zero_grad()
        with neuron_impl(layer, impl):
            y, g = _fwd_bwd(layer, x, grad)
            with torch.no_grad():
                y_eval = layer(x)
        runs[impl] = (y, g, layer.channel_adjust.weight.grad.clone(), y_eval)
    ref, fst = runs["reference"], runs["fast"]
    assert torch.equal(fst[0], ref[0]) and torch.equal(fst[3], ref[3])
    assert _rel(fst[1], ref[1]) <= FAST_GRAD_RTOL and _rel(fst[2], ref[2]) <= FAST_GRAD_RTOL


def run_network(name: str, state: dict[str, torch.Tensor], x: torch.Tensor, device: str | torch.device,
                impl: str) -> dict:
    """Eval output, then train output, input gradient and parameter gradients (loss: output
    weighted by ``linspace(-1, 1)``) of a fresh tiny network with ``state``, on ``device``."""
    net = set_neuron_impl(build_model(name, **TINY), impl)
    net.load_state_dict(state, strict=True)
    net = net.to(device=device, dtype=x.dtype)
    xd = x.to(device)
    with torch.no_grad():
        out_eval = net.eval()(xd)
    xd = xd.clone().requires_grad_(True)
    out_train = net.train()(xd)
    weights = torch.linspace(-1, 1, out_train.numel(), dtype=x.dtype, device=out_train.device)
    (out_train * weights.view_as(out_train)).sum().backward()
    return {"eval": out_eval.cpu(), "train": out_train.detach().cpu(), "input_grad": xd.grad.cpu(),
            "grads": {k: p.grad.cpu() for k, p in net.named_parameters() if p.grad is not None}}


def tiny_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights of the seeded tiny network (dim 16)."""
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in build_model(name, **TINY).state_dict().items()}


@pytest.mark.parametrize("name", ["vlifnet", "esdnet"])
def test_network_fast_equals_reference_cuda(name, deterministic):
    state = tiny_state(name)
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    ref, fst = (run_network(name, state, x, "cuda", impl) for impl in ("reference", "fast"))
    assert torch.equal(fst["eval"], ref["eval"]) and torch.equal(fst["train"], ref["train"])
    assert _rel(fst["input_grad"], ref["input_grad"]) <= FAST_GRAD_RTOL
    assert ref["grads"].keys() == fst["grads"].keys()
    keys = sorted(ref["grads"])
    whole = _rel(torch.cat([fst["grads"][k].flatten() for k in keys]),
                 torch.cat([ref["grads"][k].flatten() for k in keys]))
    assert whole <= FAST_GRAD_RTOL
    for key in keys:
        assert_grad_close(fst["grads"][key], ref["grads"][key], FAST_TENSOR_GRAD_RTOL, key)


# ------------------------------------------------------------------ CPU against CUDA
@functools.lru_cache(maxsize=None)
def cpu_float64_run(name: str) -> dict:
    """The seeded tiny network's float64 results on CPU, reference neurons (computed once:
    float64 is slow on CPU; the fast path gives the same values there)."""
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return run_network(name, tiny_state(name), x, "cpu", "reference") | {"input": x}


@pytest.mark.parametrize("impl", NEURON_IMPLS)
@pytest.mark.parametrize("name", ["vlifnet", "esdnet"])
def test_cpu_equals_cuda_float64(name, impl):
    """Same weights and input in float64: a spike flips only for a membrane within about 1e-15
    of a threshold, so CPU and CUDA agree to rounding."""
    cpu = cpu_float64_run(name)
    gpu = run_network(name, tiny_state(name), cpu["input"], "cuda", impl)
    for key in ("eval", "train"):
        err = _max_abs(gpu[key], cpu[key])
        assert err < OUTPUT_ATOL, f"{key} output: CPU and CUDA differ by {err:.3g}"
    assert_grad_close(gpu["input_grad"], cpu["input_grad"], GRAD_RTOL, "input")
    assert cpu["grads"].keys() == gpu["grads"].keys()
    for key, grad_cpu in cpu["grads"].items():
        assert_grad_close(gpu["grads"][key], grad_cpu, GRAD_RTOL, key)


@pytest.mark.parametrize("name", ["vlifnet", "esdnet"])
def test_cpu_close_to_cuda_float32(name):
    """Float32 cannot agree exactly across devices: oneDNN and cuDNN sum convolutions and
    batch-norm statistics in different orders, so values differ by about 1e-7 relative, and a
    membrane that close to a threshold fires on one device and not on the other; the flipped
    spike moves everything downstream of it. Such flips are rare, so the outputs agree on
    average. TF32 is switched off: its 10-bit rounding of convolution inputs would make flips
    far more likely."""
    state = tiny_state(name)
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    cpu = run_network(name, state, x, "cpu", "fast")
    with ieee_float32():
        gpu = run_network(name, state, x, "cuda", "fast")
    for key in ("eval", "train"):
        mean_abs = (gpu[key] - cpu[key]).abs().mean().item()
        assert mean_abs < FLOAT32_MEAN_ABS, f"{key} output: mean abs difference {mean_abs:.3g}"


# ------------------------------------------------------------------ command line on CUDA
@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A self-describing checkpoint of the seeded tiny VLIFNet."""
    from utils.checkpoint import atomic_save, make_checkpoint

    torch.manual_seed(0)
    path = tmp_path / "tiny.pth"
    atomic_save(make_checkpoint(build_model("vlifnet", **TINY)), path)
    return path


@pytest.mark.parametrize("crop", [0, 16])
def test_test_py_on_cuda(tmp_path, pipeline_write_pairs, tiny_checkpoint, crop):
    """test.py's inference path on CUDA (whole images, and batched tiles sized to GPU memory)."""
    test_cli = load_script("test")
    data = pipeline_write_pairs(tmp_path / "data", names=("a", "b"), size=(40, 56))
    out = tmp_path / "out"
    rc = test_cli.main(["--data_path", str(data / "input"), "--target_path", str(data / "target"),
                        "--weights", str(tiny_checkpoint), "--save_path", str(out), "--device", "cuda",
                        "--crop_size", str(crop), "--overlap_size", "4"])
    assert rc == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png"]
    means = json.loads((out / "metrics.json").read_text())["means"]["derained"]
    assert all(math.isfinite(v) for k, v in means.items() if k.startswith("psnr_")), means


@pytest.mark.parametrize("amp", [False, True])
def test_graphed_forward_equals_eager_cuda(amp):
    """CUDA graphs replay the same kernels: the same output as eager calls, bit for bit, per shape
    and under bf16 autocast; each shape is recorded once."""
    from utils.cuda_graphs import GraphedForward
    from utils.fuse import prepare_for_inference

    torch.manual_seed(0)
    net = prepare_for_inference(build_model("vlifnet", **TINY).cuda().eval())
    forward = GraphedForward(net)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        for shape in ((4, 3, 16, 16), (2, 3, 16, 16), (4, 3, 16, 16)):
            x = torch.rand(shape, device="cuda")
            assert torch.equal(forward(x), net(x)), shape
    assert not forward.failed and len(forward.graphs) == 2


def test_test_py_cuda_graphs_same_pngs(tmp_path, pipeline_write_pairs, tiny_checkpoint):
    """test.py --cuda_graphs writes the same PNGs as without."""
    test_cli = load_script("test")
    data = pipeline_write_pairs(tmp_path / "data", names=("a", "b", "c"), size=(40, 56))
    outs = {}
    for graphs in (False, True):
        out = tmp_path / f"out_{graphs}"
        rc = test_cli.main(["--data_path", str(data / "input"), "--weights", str(tiny_checkpoint),
                            "--save_path", str(out), "--device", "cuda", "--crop_size", "16", "--overlap_size", "4",
                            "--tile_batch", "8", *(["--cuda_graphs"] if graphs else [])])
        assert rc == 0
        outs[graphs] = {p.name: p.read_bytes() for p in sorted(out.glob("*.png"))}
    assert list(outs[True]) == ["a.png", "b.png", "c.png"] and outs[True] == outs[False]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_train_py_on_cuda(tmp_path, pipeline_write_pairs, amp):
    """Two training steps on CUDA under mixed precision (fp16 with gradient scaling is CUDA-only)."""
    train_cli = load_script("train")
    data = pipeline_write_pairs(tmp_path / "data", names=("a", "b", "c", "d"))
    run = tmp_path / "run"
    rc = train_cli.main(["--train_dir", str(data), "--model_save_dir", str(run), *TINY_NET_FLAGS,
                         "--patch_size_train", "16", "--batch_size", "2", "--num_workers", "0", "--max_steps", "2",
                         "--warmup_epochs", "0", "--amp", amp, "--device", "cuda", "--no-progress",
                         "--no-tensorboard"])
    assert rc == 0
    ckpt = torch.load(run / "last.pth", weights_only=True)
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
