"""The benchmark cases: reference and fast computing the same thing on the same data.

Shapes are those of the issue and do not change with ``--quick`` (only repetitions do):
- neurons, forward + backward on ``x_seq`` ``[4, 2, 48, 128, 128]``: LIF; NI-LIF over the 16
  patch-to-time steps of that input (SMU's neuron); VLIF's spiking part (patch-to-time,
  NI-LIF, inverse reordering); the whole VLIF layer (plus resize and ``channel_adjust``); on
  CUDA with Triton, NI-LIF and VLIF's spiking part again, the torch backend's loops against
  the Triton kernels (``_triton`` rows);
- a VLIFNet training step (dim 48, batch 12, 64x64, 1 - SSIM loss, AdamW): forward,
  backward and optimizer step;
- inference of a 481x321 image with the released tiling (80x80 tiles, overlap 8). Reference:
  one tile at a time as the released test did; fast: tiles batched, batch norm folded.
For the training step and the inference case two more rows: ``_bf16`` (fast fp32 in the
reference column against fast under bf16 autocast; left out with ``bf16=False``) and
``_conv_floor`` (fast fp32 in the reference column against the same convolutions run alone,
:mod:`tools.speed.floor`, timed interleaved so that a slow phase of the machine hits both: its
speed-up column reads fast / floor). On CUDA the inference case has one more: ``_cuda_graphs``
(fast fp32 against the same replayed from CUDA graphs, as ``test.py --cuda_graphs``).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable

import torch
import torch.nn as nn

from models import build_model
from models import kernels as fast_kernels
from models.kernels.backend import triton_kernels
from models.neurons import VLIF, lif, neuron_impl, ni_lif_reference, patch_to_time, time_to_patch
from utils.cuda_graphs import GraphedForward
from utils.fuse import auto_tile_batch, prepare_for_inference
from utils.inference import restore, tile_starts
from utils.losses import SSIMLoss

from .floor import record_convs, replay_convs
from .measure import Pair

NEURON_SHAPE = (4, 2, 48, 128, 128)
TRAIN_BATCH, TRAIN_SIZE = 12, 64
IMAGE_HW = (321, 481)
CROP, OVERLAP = 80, 8


def _grad_rel(ref: Any, fast: Any) -> dict[str, float]:
    g_ref, g_fast = ref[1].double(), fast[1].double()
    return {"grad_rel_diff": ((g_fast - g_ref).norm() / g_ref.norm().clamp_min(1e-30)).item(),
            "grad_max_abs_diff": (g_fast - g_ref).abs().max().item(),
            "output_identical": float(torch.equal(ref[0], fast[0]))}


def _fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor,
             impl: str, before: Callable[[], None] | None = None) -> Callable[[], tuple]:
    leaf = x.detach().clone().requires_grad_(True)

    def run() -> tuple:
        with neuron_impl(fn, impl) if isinstance(fn, nn.Module) else contextlib.nullcontext():
            if before is not None:
                before()
            leaf.grad = None
            y = fn(leaf)
            y.backward(grad)
            return y.detach(), leaf.grad
    return run


def neuron_cases(device: torch.device, reps: int) -> list[Pair]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(NEURON_SHAPE, generator=g).to(device)
    T, r = NEURON_SHAPE[0], 2
    cases = []

    node = lif().to(device)
    x_lif = x * 0.3  # about 30% of the membranes cross the 0.15 threshold
    grad = torch.randn(x.shape, generator=g).to(device)
    cases.append(Pair(
        "lif_fwd_bwd", f"LIF (spikingjelly LIFNode vs fast) on {list(NEURON_SHAPE)}",
        _fwd_bwd(node, x_lif, grad, "reference", node.reset), _fwd_bwd(node, x_lif, grad, "fast", node.reset),
        reps, compare=_grad_rel))

    x_ni = patch_to_time(x * 2, r)  # [16, 2, 48, 64, 64]: SMU's NI-LIF input
    cases.append(Pair(
        "nilif_fwd_bwd", f"NI-LIF over 16 steps, {list(x_ni.shape)} (SMU)",
        _fwd_bwd(ni_lif_reference, x_ni, grad.view(x_ni.shape), "reference"),
        _fwd_bwd(fast_kernels.ni_lif, x_ni, grad.view(x_ni.shape), "fast"), reps, compare=_grad_rel))

    grad_y = torch.randn(T * 2, 48 * r * r, 64, 64, generator=g).to(device)
    cases.append(Pair(
        "vlif_spikes_fwd_bwd", f"VLIF spiking part (patch-to-time, NI-LIF, inverse) on {list(NEURON_SHAPE)}",
        _fwd_bwd(lambda v: time_to_patch(ni_lif_reference(patch_to_time(v, r)), T, r), x * 2, grad_y, "reference"),
        _fwd_bwd(lambda v: fast_kernels.vlif_spikes(v, r), x * 2, grad_y, "fast"), reps, compare=_grad_rel))

    if device.type == "cuda" and triton_kernels("triton", x) is not None:  # what the Triton kernels replaced
        for name, what, fn, x_in, g_in in (
                ("nilif_fwd_bwd_triton", f"NI-LIF over 16 steps, {list(x_ni.shape)}", fast_kernels.ni_lif, x_ni,
                 grad.view(x_ni.shape)),
                ("vlif_spikes_fwd_bwd_triton", f"VLIF spiking part on {list(NEURON_SHAPE)}",
                 lambda v, b: fast_kernels.vlif_spikes(v, r, b), x * 2, grad_y)):
            cases.append(Pair(
                name, f"{what}: the torch backend's loops (reference column) against the Triton kernels",
                _fwd_bwd(lambda v, f=fn: f(v, "torch"), x_in, g_in, "fast"),
                _fwd_bwd(lambda v, f=fn: f(v, "triton"), x_in, g_in, "fast"), reps, compare=_grad_rel))

    layer = VLIF(48, r).to(device)
    cases.append(Pair(
        "vlif_layer_fwd_bwd", f"whole VLIF layer (+ bilinear resize, 1x1 channel_adjust) on {list(NEURON_SHAPE)}",
        _fwd_bwd(layer, x * 2, grad, "reference"), _fwd_bwd(layer, x * 2, grad, "fast"), reps,
        compare=_grad_rel))
    return cases


def train_cases(device: torch.device, reps: int, bf16: bool = True) -> list[Pair]:
    """The training step: reference against fast, fp32 fast against bf16 fast (with ``bf16``),
    and the convolution floor of the fast step."""
    torch.manual_seed(0)
    net = build_model("vlifnet").to(device).train()
    state = copy.deepcopy(net.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    opt_state = copy.deepcopy(opt.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.rand(TRAIN_BATCH, 3, TRAIN_SIZE, TRAIN_SIZE, generator=g).to(device)
    y = torch.rand(TRAIN_BATCH, 3, TRAIN_SIZE, TRAIN_SIZE, generator=g).to(device)
    loss_fn = SSIMLoss()  # 1 - SSIM, the released loss

    def reset() -> None:  # every step starts from the same weights and optimizer state
        net.load_state_dict(state)
        opt.load_state_dict(opt_state)

    def step(impl: str, n: int = TRAIN_BATCH, amp: bool = False) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with neuron_impl(net, impl):
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    out = net(x[:n])
                loss_fn(out.float(), y[:n]).backward()
                opt.step()
                return out.detach().float()
        return run

    what = f"VLIFNet dim 48 training step, batch {TRAIN_BATCH}, {TRAIN_SIZE}x{TRAIN_SIZE}"
    # every row warms up with a full step, --quick too: the first full-size step grows the heap
    # (about 2 million page faults, a quarter of its time in the kernel; docs/speed.md), which a
    # one-image warm-up left to the measured step
    cases = [Pair(
        "train_step_vlifnet", f"{what} (forward, 1-SSIM backward, AdamW step)",
        step("reference"), step("fast"), reps, reset=reset)]
    if bf16:
        cases.append(Pair(
            "train_step_vlifnet_bf16", f"{what}: fast fp32 (reference column) against fast under bf16 autocast",
            step("fast"), step("fast", amp=True), reps, reset=reset))
    reset()
    calls = record_convs(net, step("fast"))
    cases.append(Pair(
        "train_step_vlifnet_conv_floor", f"fast fp32 (reference column) against its {len(calls)} convolutions "
        "alone, forward and backward (the floor of train_step_vlifnet)", step("fast"),
        replay_convs(calls, backward=True), reps, reset=reset))
    return cases


def _image_diff(ref: torch.Tensor, fast: torch.Tensor) -> dict[str, float]:
    to8 = lambda t: (t.clamp(0, 1) * 255).round()  # noqa: E731 - what a saved PNG holds
    d8 = (to8(ref) - to8(fast)).abs()
    return {"uint8_max_diff": d8.max().item(), "uint8_pixels_differing": (d8 > 0).sum().item()}


def inference_cases(device: torch.device, reps: int, quick: bool, bf16: bool = True) -> list[Pair]:
    torch.manual_seed(0)
    net = build_model("vlifnet").to(device).eval()
    fast_net = prepare_for_inference(net)
    tile_batch = auto_tile_batch(fast_net, CROP, device)
    g = torch.Generator().manual_seed(2)
    img = torch.rand(1, 3, *IMAGE_HW, generator=g).to(device)
    tile = img[..., :CROP, :CROP]

    def run(impl: str, model: torch.nn.Module, batch: int, image: torch.Tensor, amp: bool = False,
            forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Callable[[], torch.Tensor]:
        def go() -> torch.Tensor:
            with neuron_impl(model, impl), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                return restore(forward or model, image, CROP, OVERLAP, tile_batch=batch).float()
        return go

    def warm(impl: str, model: torch.nn.Module, batch: int, amp: bool = False) -> Callable[[], torch.Tensor]:
        def go() -> torch.Tensor:
            with neuron_impl(model, impl), torch.inference_mode(), torch.autocast(
                    device.type, dtype=torch.bfloat16, enabled=amp):
                return model(tile.expand(batch, -1, -1, -1).contiguous())
        return go

    h, w = IMAGE_HW
    cases = [Pair(
        f"tiled_inference_{w}x{h}",
        f"VLIFNet dim 48, {w}x{h} image, {CROP}x{CROP} tiles overlap {OVERLAP}: reference one tile at a time; "
        f"fast {tile_batch} tiles per call, batch norm folded, VLIF mixing before resizing",
        run("reference", net, 1, img), run("fast", fast_net, tile_batch, img), reps,
        warmup_reference=warm("reference", net, 1), warmup_fast=warm("fast", fast_net, tile_batch),
        compare=_image_diff)]
    if bf16:
        bf16_net = prepare_for_inference(net, amp=torch.bfloat16)  # as test.py --amp bf16 prepares it
        bf16_batch = auto_tile_batch(bf16_net, CROP, device)
        cases.append(Pair(
            f"tiled_inference_{w}x{h}_bf16", "the same image: fast fp32 (reference column) against fast under bf16 "
            f"autocast as test.py --amp bf16 runs it ({bf16_batch} tiles per call)",
            run("fast", fast_net, tile_batch, img), run("fast", bf16_net, bf16_batch, img, amp=True), reps,
            warmup_reference=warm("fast", fast_net, tile_batch), warmup_fast=warm("fast", bf16_net, bf16_batch, amp=True),
            compare=_image_diff))
    if device.type == "cuda":  # the first call of the row (its warm-up) records the graphs
        cases.append(Pair(
            f"tiled_inference_{w}x{h}_cuda_graphs", f"the same image: fast fp32 (reference column) against the "
            f"same replayed from CUDA graphs as test.py --cuda_graphs runs it ({tile_batch} tiles per call)",
            run("fast", fast_net, tile_batch, img),
            run("fast", fast_net, tile_batch, img, forward=GraphedForward(fast_net)), reps, compare=_image_diff))
    calls = record_convs(fast_net, warm("fast", fast_net, tile_batch))
    network_calls = -(-len(tile_starts(h, CROP, CROP - OVERLAP)) * len(tile_starts(w, CROP, CROP - OVERLAP))
                      // tile_batch)
    cases.append(Pair(
        f"tiled_inference_{w}x{h}_conv_floor", f"fast fp32 (reference column) against the {len(calls)} "
        f"convolutions of one call of {tile_batch} tile(s), x {network_calls} calls, alone (its floor)",
        run("fast", fast_net, tile_batch, img), replay_convs(calls, backward=False, repeat=network_calls), reps,
        warmup_reference=warm("fast", fast_net, tile_batch)))
    if not quick:  # peak memory must not grow with the image: 4x the area, fast path only
        big = torch.rand(1, 3, 2 * h, 2 * w, generator=g).to(device)
        cases.append(Pair(
            f"tiled_inference_{2 * w}x{2 * h}", f"fast path only, {2 * w}x{2 * h} image (memory scaling)",
            None, run("fast", fast_net, tile_batch, big), 1, warmup=0))
    return cases


def all_cases(device: torch.device, quick: bool, bf16: bool = True) -> dict[str, Callable[[], list[Pair]]]:
    """Case groups by name, built lazily (a group allocates its model only when run); the
    ``_bf16`` rows only with ``bf16``."""
    return {
        "neurons": lambda: neuron_cases(device, 5 if quick else 15),
        "train": lambda: train_cases(device, 1 if quick else 3, bf16),
        "inference": lambda: inference_cases(device, 1 if quick else 2, quick, bf16),
    }
