"""Inference-time preparation: batch-norm folding, VLIF's cheaper order, memory-sized tile batches.

In eval mode a batch norm is an affine map per channel, ``y = x * a + b`` with
``a = weight / sqrt(running_var + eps)`` and ``b = bias - running_mean * a``; directly after a
convolution it folds into that convolution (``W' = W * a``, ``bias' = bias * a + b``).
The folded network computes the same function; its values differ from the unfolded one by
float rounding only (``sum(W a x)`` instead of ``a sum(W x)``), which can move a membrane
across a firing threshold now and then - see :func:`fold_batchnorm`.
"""
from __future__ import annotations

import copy
import math
import os

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from models.kernels.common import LOW_PRECISION
from models.layers import Float32MLP
from models.neurons import set_adjust_first

__all__ = ["find_conv_bn_pairs", "fold_batchnorm", "prepare_for_inference", "cast_conv_weights", "auto_tile_batch"]


def _example_input(model: nn.Module) -> torch.Tensor:
    m = getattr(model, "size_multiple", None)
    if m is None:
        raise ValueError("pass example=... : the model is not a SpikingRestorationNet")
    side = 4 * int(m)
    param = next(model.parameters())
    return torch.rand(1, 3, side, side, device=param.device, dtype=param.dtype)


@torch.no_grad()
def find_conv_bn_pairs(model: nn.Module, example: torch.Tensor | None = None) -> list[tuple[str, str]]:
    """``(conv_name, bn_name)`` for every batch norm whose input is exactly a convolution's
    output, found by running ``example`` (a small random image for the networks of this
    toolkit) with hooks. Convolutions or batch norms called more than once are left out."""
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    bns = {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats}
    calls: dict[str, int] = {}
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    fed: dict[str, str] = {}
    handles = []

    def conv_hook(name):
        def hook(_module, _inputs, output):
            calls[name] = calls.get(name, 0) + 1
            produced[id(output)] = (name, output)  # keep the tensor alive so ids stay unique
        return hook

    def bn_hook(name):
        def hook(_module, inputs):
            calls[name] = calls.get(name, 0) + 1
            source = produced.get(id(inputs[0]))
            if source is not None and source[1] is inputs[0]:
                fed[name] = source[0]
        return hook

    for n, m in convs.items():
        handles.append(m.register_forward_hook(conv_hook(n)))
    for n, m in bns.items():
        handles.append(m.register_forward_pre_hook(bn_hook(n)))
    was_training = model.training
    try:
        model.eval()
        model(_example_input(model) if example is None else example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [(c, b) for b, c in fed.items() if calls.get(b) == 1 and calls.get(c) == 1]


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example: torch.Tensor | None = None, inplace: bool = False) -> nn.Module:
    """Fold every eval-mode batch norm that directly follows a convolution into it.

    Returns a folded copy in eval mode (``inplace=True`` folds ``model`` itself); the
    original's parameters and state dict are untouched. The folded model is for inference:
    its convolutions gain biases and the batch norms become ``nn.Identity``, so its state
    dict no longer loads into the unfolded architecture, and training it would not
    normalise. Outputs equal the unfolded model's up to float rounding; a rounding
    difference can flip a spike where a membrane sits within ~1e-7 of a threshold.
    """
    target = model if inplace else copy.deepcopy(model)
    target.eval()
    for conv_name, bn_name in find_conv_bn_pairs(target, example):
        conv: nn.Conv2d = target.get_submodule(conv_name)
        bn: _BatchNorm = target.get_submodule(bn_name)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
        shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
        bias = conv.bias * scale + shift if conv.bias is not None else shift
        conv.weight = nn.Parameter(conv.weight * scale.view(-1, *([1] * (conv.weight.dim() - 1))))
        conv.bias = nn.Parameter(bias)
        _set_submodule(target, bn_name, nn.Identity())
    return target


def prepare_for_inference(model: nn.Module, fold: bool = True, example: torch.Tensor | None = None,
                          adjust_first: bool | None = None, amp: torch.dtype | None = None) -> nn.Module:
    """An eval-mode, gradient-free copy of ``model`` with batch norms folded (``fold=True``)
    and every VLIF mixing its spikes before resizing them (``adjust_first``, default: as
    ``fold``; :class:`models.neurons.VLIF`). Both are the same function computed in fewer
    operations, with other float rounding; ``fold=False`` alone gives the layers as trained.

    ``amp`` (``torch.bfloat16`` or ``torch.float16``): the copy will run under
    ``torch.autocast`` with that dtype, and its convolutions' weights and biases are stored in
    it (:func:`cast_conv_weights`), as autocast would cast them at every call.

    Use under ``torch.inference_mode()`` with the fast neurons
    (``models.neurons.set_neuron_impl("fast")``, the default).
    """
    out = fold_batchnorm(model, example) if fold else copy.deepcopy(model).eval()
    set_adjust_first(out, fold if adjust_first is None else adjust_first)
    out.requires_grad_(False)
    if amp is not None:
        cast_conv_weights(out, amp)
    return out


def cast_conv_weights(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Store the weights and biases of ``model``'s convolutions in ``dtype``, in place; returns it.

    Under ``torch.autocast(dtype=dtype)`` a convolution casts its float32 weights at every call
    (autocast keeps casts only of weights that require gradients); stored in ``dtype`` they are
    used as they are, with the same values. The attention MLPs
    (:class:`models.layers.Float32MLP`), which leave autocast, keep float32. The model then runs
    only under autocast.
    """
    keep = {id(c) for m in model.modules() if isinstance(m, Float32MLP) for c in m.modules()}
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd) and id(m) not in keep:
            for name in ("weight", "bias"):
                p = getattr(m, name)
                if p is not None:
                    p.data = p.data.to(dtype)
    return model


def _available_cpu_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def tile_bytes(model: nn.Module, crop_size: int) -> int:
    """Rough peak activation memory of one ``crop_size`` tile in inference (float32).

    Calibrated on VLIFNet (dim 48, T 4: about 200 feature maps of ``T x dim x crop^2`` live at
    the peak of an SMU, measured 0.2 GB for an 80x80 tile); scales with ``dim``, ``T`` and
    the tile area.
    """
    config = getattr(model, "config", {})
    dim, T = config.get("dim", 48), config.get("T", 4)
    return int(200 * T * dim * crop_size * crop_size * 4)


def cpu_tile_limit() -> int:
    """Tiles per call on a CPU: one per 4 threads (at least one).

    On a CPU, large batches do not pay: the activations of one 80x80 VLIFNet tile (about 5 MB a
    feature map) stay in cache, those of several do not. Measured on 2 cores, 481x321 image,
    fast path, interleaved: 1 tile per call 32.6 s, 3 tiles 35.2 s, 7 tiles 40.0 s (medians of 3).
    More threads have more cache and gain from a few tiles to split over. A network prepared
    for mixed precision (:func:`prepare_for_inference` with ``amp``) takes
    :data:`LOW_PRECISION_CPU_TILES` times as many: its activations are half the size, and on 2
    cores (Intel Xeon with AMX, 2026-12-07, bf16, 481x321, full VLIFNet, three runs each) 4 tiles
    per call took 7.3-7.9 s against 8.7-8.8 s for one, while in float32 4 tiles gained nothing
    (13.4-14.9 against 13.4-13.8 s).
    """
    return max(1, torch.get_num_threads() // 4)


LOW_PRECISION_CPU_TILES = 4


def _stores_low_precision(model: nn.Module) -> bool:
    return any(p.dtype in LOW_PRECISION for p in model.parameters())


def auto_tile_batch(model: nn.Module, crop_size: int, device: torch.device | str = "cpu",
                    limit: int = 64, fraction: float = 0.5) -> int:
    """Tiles per network call that fit in ``fraction`` of the free memory of ``device``.

    CUDA: ``torch.cuda.mem_get_info``; CPU: ``MemAvailable`` from ``/proc/meminfo``, and at
    most :func:`cpu_tile_limit` (times :data:`LOW_PRECISION_CPU_TILES` for a network whose
    weights are stored in bfloat16 / float16). Between 1 and ``limit``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = _available_cpu_bytes()
        limit = min(limit, cpu_tile_limit() * (LOW_PRECISION_CPU_TILES if _stores_low_precision(model) else 1))
        if free is None:
            return limit
    per_tile = max(tile_bytes(model, crop_size), 1)
    return int(max(1, min(limit, math.floor(free * fraction / per_tile))))


def resolve_tile_batch(model: nn.Module, crop_size: int, tile_batch: int, device: torch.device | str = "cpu") -> int:
    """``--tile_batch``: the given number, or (0) :func:`auto_tile_batch`; 1 for whole images."""
    if tile_batch > 0:
        return tile_batch
    return 1 if crop_size == 0 else auto_tile_batch(model, crop_size, device)
