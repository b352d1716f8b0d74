"""Fast NI-LIF and VLIF kernels (SPEC 1.2, 1.3), exact against :mod:`models.neurons`.

Where the reference spends its time: every step of every neuron is a handful of whole-tensor
operations (a pass over memory and, on a multi-core CPU, a fork-join each), plus an autograd
node and a saved membrane per step; NI-LIF walks 16 steps in VLIF and SMU. Here
- all steps of a neuron run inside one custom autograd Function, with no per-step graph;
- only what the backward needs is saved: a 1-byte "inside [0, 4]" mask per element;
- the backward is hand-derived (reset through a stop-gradient):
  ``dL/dm_t = dL/ds_t * [0 <= m_t <= 4] / 4 + 0.25 * dL/dm_{t+1}``, ``dL/dx_t = dL/dm_t``;
  the two gradient terms of ``m_t`` are summed once, so gradients are bit-identical too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import native
from .backend import (data_ptr, for_native, for_torch_chunks, native_kernel, native_lib, needs_grad,
                      neuron_takes_bf16, on_triton, runs_bf16_natively)
from .common import LOW_PRECISION, NILIF_DECAY, NILIF_LEVELS, patch_to_time, time_to_patch


@torch.library.custom_op("spiking_derain::nilif_forward", mutates_args=())
def nilif_forward(x: torch.Tensor, with_mask: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Spikes ``[L, N]`` of NI-LIF over contiguous ``x`` ``[L, N]`` and the backward mask
    ``0 <= m_t <= 4`` (bool ``[L, N]``; empty unless ``with_mask``). ``x`` is float32, or
    bfloat16 for the native backend (membranes float32, spikes in ``x``'s dtype)."""
    x = x.detach()
    L, N = x.shape
    spikes = torch.empty_like(x)
    mask = torch.empty(L, N if with_mask else 0, dtype=torch.bool, device=x.device)
    lib = native_lib(backend, x, bf16=True)
    if lib is not None:
        mask_ptr = data_ptr(mask) if with_mask else None
        kernel = native_kernel(lib, "nilif_forward", x.dtype)
        for_native(N, lambda parts, count, _: kernel(data_ptr(x), data_ptr(spikes), mask_ptr, L, N, parts, count))
        return spikes, mask
    done = on_triton(backend, lambda k: k.nilif_forward(x, with_mask), x)
    if done is not None:
        return done

    def body(c: slice) -> None:
        m = x[0, c].clone()
        for t in range(L):
            if t:
                m.sub_(s).mul_(NILIF_DECAY).add_(x[t, c])  # (m - stopgrad(s)) * 0.25 + x_t
            s = spikes[t, c]
            torch.clamp(m, 0, NILIF_LEVELS, out=s)
            if with_mask:
                torch.eq(s, m, out=mask[t, c])  # clamp(m) == m  <=>  0 <= m <= 4 (False for NaN)
            s.round_().div_(NILIF_LEVELS)

    for_torch_chunks(N, x.device, body)
    return spikes, mask


@nilif_forward.register_fake
def _(x: torch.Tensor, with_mask: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x), x.new_empty(x.shape[0], x.shape[1] if with_mask else 0, dtype=torch.bool)


@torch.library.custom_op("spiking_derain::nilif_backward", mutates_args=())
def nilif_backward(grad_s: torch.Tensor, mask: torch.Tensor, backend: str) -> torch.Tensor:
    """``dL/dx`` ``[L, N]`` from contiguous ``dL/ds`` ``[L, N]`` and the forward mask; float32, or
    bfloat16 for the native backend (the recurrence in float32, each gradient rounded once)."""
    grad_s = grad_s.detach()
    L, N = grad_s.shape
    grad_x = torch.empty_like(grad_s)
    lib = native_lib(backend, grad_s, bf16=True)
    if lib is not None:
        kernel = native_kernel(lib, "nilif_backward", grad_s.dtype)
        for_native(N, lambda parts, count, _: kernel(
            data_ptr(grad_s), data_ptr(mask), data_ptr(grad_x), L, N, parts, count))
        return grad_x
    done = on_triton(backend, lambda k: k.nilif_backward(grad_s.contiguous(), mask), grad_s)
    if done is not None:
        return done

    def body(c: slice) -> None:
        g = None
        for t in range(L - 1, -1, -1):
            o = grad_x[t, c]
            torch.mul(grad_s[t, c], mask[t, c], out=o)
            o.div_(NILIF_LEVELS)  # straight-through gradient of the quantiser
            if g is not None:
                o.add_(g, alpha=NILIF_DECAY)  # + dL/dm_{t+1} * 0.25
            g = o

    for_torch_chunks(N, grad_s.device, body)
    return grad_x


@nilif_backward.register_fake
def _(grad_s: torch.Tensor, mask: torch.Tensor, backend: str) -> torch.Tensor:
    return torch.empty_like(grad_s)


class NILIFFunction(torch.autograd.Function):
    """NI-LIF over the first axis of ``[L, ...]``; saves one bool per element."""

    @staticmethod
    def forward(ctx, x_seq: torch.Tensor, backend: str) -> torch.Tensor:
        x = x_seq.contiguous()
        spikes, mask = nilif_forward(x.view(x.shape[0], -1), True, backend)
        ctx.save_for_backward(mask)
        ctx.backend = backend
        return spikes.view(x.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_s: torch.Tensor) -> torch.Tensor:
        (mask,) = ctx.saved_tensors
        g = grad_s.contiguous()
        return nilif_backward(g.view(mask.shape), mask, ctx.backend).view(g.shape), None


def ni_lif(x_seq: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Fast NI-LIF: same contract and bits as :func:`models.neurons.ni_lif_reference`.

    bfloat16 / float16 input (mixed precision): the membranes and spikes are computed in
    float32 and the spikes returned in the input's dtype (exact: they are multiples of 1/4);
    bfloat16 on the CPU goes to the native kernels' bfloat16 instances without conversions, in
    training too (the same spikes and gradients as between conversions)."""
    if x_seq.dtype in LOW_PRECISION and not neuron_takes_bf16(x_seq, backend):
        return ni_lif(x_seq.float(), backend).to(x_seq.dtype)
    if needs_grad(x_seq):
        return NILIFFunction.apply(x_seq, backend)
    x = x_seq.contiguous()
    return nilif_forward(x.view(x.shape[0], -1), False, backend)[0].view(x.shape)


@torch.library.custom_op("spiking_derain::vlif_forward", mutates_args=())
def vlif_forward(x_seq: torch.Tensor, r: int, with_mask: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Spikes ``[T*B, C*r*r, h, w]`` of VLIF's NI-LIF walk and its mask (same layout; empty
    unless ``with_mask``). ``x_seq`` is float32, or bfloat16 for the native backend."""
    T, B, C, H, W = x_seq.shape
    h, w = H // r, W // r
    lib = native_lib(backend, x_seq, bf16=True)
    done = None if lib is not None else on_triton(
        backend, lambda k: k.vlif_forward(x_seq.detach().contiguous(), r, with_mask), x_seq)
    if done is not None:
        return done
    if lib is None:  # reorder, run the plain kernel, reorder back
        y = patch_to_time(x_seq, r)  # [T*r*r, B, C, h, w]
        spikes, mask = nilif_forward(y.view(y.shape[0], -1), with_mask, backend)
        spikes = time_to_patch(spikes.view(y.shape), T, r)
        mask = (time_to_patch(mask.view(y.shape), T, r).contiguous() if with_mask
                else torch.empty(0, dtype=torch.bool, device=x_seq.device))
        return spikes.contiguous(), mask
    x = x_seq.detach().contiguous()
    spikes = x.new_empty(T * B, C * r * r, h, w)
    mask = torch.empty(spikes.shape if with_mask else (0,), dtype=torch.bool)
    mask_ptr = data_ptr(mask) if with_mask else None
    kernel = native_kernel(lib, "vlif_forward", x.dtype)
    for_native(B * C * h, lambda parts, count, _: kernel(
        data_ptr(x), data_ptr(spikes), mask_ptr, T, B * C, H, W, r, parts, count), unit=w * T * r * r, align=1)
    return spikes, mask


@vlif_forward.register_fake
def _(x_seq: torch.Tensor, r: int, with_mask: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    T, B, C, H, W = x_seq.shape
    spikes = x_seq.new_empty(T * B, C * r * r, H // r, W // r)
    return spikes, x_seq.new_empty(spikes.shape if with_mask else (0,), dtype=torch.bool)


@torch.library.custom_op("spiking_derain::vlif_backward", mutates_args=())
def vlif_backward(grad_y: torch.Tensor, mask: torch.Tensor, shape: list[int], r: int, backend: str) -> torch.Tensor:
    """``dL/dx`` ``[T, B, C, H, W]`` (``shape``) from ``dL/dspikes`` and the forward mask."""
    T, B, C, H, W = shape
    h, w = H // r, W // r
    grad_y = grad_y.detach().contiguous()
    lib = native_lib(backend, grad_y, bf16=True)
    done = None if lib is not None else on_triton(backend, lambda k: k.vlif_backward(grad_y, mask, shape, r), grad_y)
    if done is not None:
        return done
    if lib is None:
        L = T * r * r
        g = grad_y.view(T, B, C, r * r, h, w).permute(0, 3, 1, 2, 4, 5)  # [T, r*r, B, C, h, w]
        m = mask.view(T, B, C, r * r, h, w).permute(0, 3, 1, 2, 4, 5)
        g = nilif_backward(g.reshape(L, -1), m.reshape(L, -1), backend)  # [T*r*r, B*C*h*w]
        g = g.view(T, r * r, B, C, h, w).permute(0, 2, 3, 1, 4, 5)  # [T, B, C, r*r, h, w]
        return F.pixel_shuffle(g.reshape(T * B, C * r * r, h, w), r).reshape(shape)  # [T, B, C, H, W]
    grad_x = grad_y.new_empty(shape)
    kernel = native_kernel(lib, "vlif_backward", grad_y.dtype)
    for_native(B * C * h, lambda parts, count, _: kernel(
        data_ptr(grad_y), data_ptr(mask), data_ptr(grad_x), T, B * C, H, W, r, parts, count),
        unit=w * T * r * r, align=1)
    return grad_x


@vlif_backward.register_fake
def _(grad_y: torch.Tensor, mask: torch.Tensor, shape: list[int], r: int, backend: str) -> torch.Tensor:
    return grad_y.new_empty(shape)


class VLIFSpikeFunction(torch.autograd.Function):
    """``[T, B, C, H, W]`` -> NI-LIF spikes in the layout VLIF resizes, ``[T*B, C*r*r, H/r, W/r]``
    (patch-to-time, NI-LIF over ``T*r*r`` steps, inverse reordering; SPEC 1.3 steps 1-4). The
    native kernel reads and writes those layouts directly, without reordering copies."""

    @staticmethod
    def forward(ctx, x_seq: torch.Tensor, r: int, backend: str) -> torch.Tensor:
        spikes, mask = vlif_forward(x_seq, r, True, backend)
        ctx.save_for_backward(mask)
        ctx.shape, ctx.r, ctx.backend = list(x_seq.shape), r, backend
        return spikes

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return vlif_backward(grad_y, mask, ctx.shape, ctx.r, ctx.backend), None, None


def vlif_spikes(x_seq: torch.Tensor, r: int, backend: str = "auto") -> torch.Tensor:
    """Fast ``time_to_patch(ni_lif(patch_to_time(x_seq, r)), T, r)``: ``[T*B, C*r*r, H/r, W/r]``."""
    if x_seq.shape[-2] % r or x_seq.shape[-1] % r:
        raise ValueError(f"patch-to-time needs H and W divisible by r={r}, got {tuple(x_seq.shape[-2:])}")
    if x_seq.dtype in LOW_PRECISION and not neuron_takes_bf16(x_seq, backend):  # membranes in float32, as ni_lif
        return vlif_spikes(x_seq.float(), r, backend).to(x_seq.dtype)
    if needs_grad(x_seq):
        return VLIFSpikeFunction.apply(x_seq, r, backend)
    return vlif_forward(x_seq, r, False, backend)[0]


def _native_resize(t: torch.Tensor, up: bool) -> torch.Tensor:
    """The native x2 bilinear kernel (``up``) or its adjoint, ``[N, C, h, w]`` <-> ``[N, C, 2h, 2w]``."""
    lib = native.load()
    t = t.detach().contiguous()
    N, C, H, W = t.shape
    h, w = (H, W) if up else (H // 2, W // 2)
    out = t.new_empty(N, C, 2 * h, 2 * w) if up else t.new_empty(N, C, h, w)
    kernel = native_kernel(lib, "upsample2x_bilinear" if up else "upsample2x_bilinear_backward", t.dtype)
    for_native(N * C, lambda parts, count, _: kernel(data_ptr(t), data_ptr(out), h, w, parts, count),
               unit=4 * h * w, align=1)
    return out


@torch.library.custom_op("spiking_derain::upsample2x", mutates_args=())
def upsample2x(y: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 resize (``align_corners=False``) ``[N, C, h, w]`` -> ``[N, C, 2h, 2w]``, native
    kernel. Exact for inputs that are multiples of 1/4 in [0, 1] (every product and sum is
    exact in float32), which NI-LIF spikes are. bfloat16 input: float32 arithmetic, each output
    rounded once to bfloat16 (exact for spikes)."""
    return _native_resize(y, up=True)


@upsample2x.register_fake
def _(y: torch.Tensor) -> torch.Tensor:
    N, C, h, w = y.shape
    return y.new_empty(N, C, 2 * h, 2 * w)


@torch.library.custom_op("spiking_derain::upsample2x_backward", mutates_args=())
def upsample2x_backward(grad: torch.Tensor) -> torch.Tensor:
    """The adjoint of :func:`upsample2x`: ``[N, C, 2h, 2w]`` -> ``[N, C, h, w]``."""
    return _native_resize(grad, up=False)


@upsample2x_backward.register_fake
def _(grad: torch.Tensor) -> torch.Tensor:
    N, C, H, W = grad.shape
    return grad.new_empty(N, C, H // 2, W // 2)


class Upsample2xFunction(torch.autograd.Function):
    """:func:`upsample2x` with its adjoint as the backward (VLIF's spike resize)."""

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:
        return upsample2x(y)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return upsample2x_backward(grad)


class Interpolate2xFunction(torch.autograd.Function):
    """``F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)`` of real values:
    PyTorch's forward (the same bits), the native adjoint :func:`upsample2x_backward` as its
    backward (equal to PyTorch's backward to float rounding; one pass where PyTorch scatters)."""

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:
        return F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return upsample2x_backward(grad)


def interpolate2x(y: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Bilinear x2 resize of ``y`` ``[N, C, h, w]`` (``align_corners=False``) as ``F.interpolate``
    computes it; for float32 CPU input with gradients, its backward is the native adjoint
    (:class:`Interpolate2xFunction`)."""
    if needs_grad(y) and y.dim() == 4 and y.numel() and native_lib(backend, y) is not None:
        return Interpolate2xFunction.apply(y)
    return F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)


def upsample_spikes(y: torch.Tensor, size: tuple[int, int], backend: str = "auto") -> torch.Tensor:
    """``F.interpolate(y, size, mode="bilinear", align_corners=False)`` for VLIF: the native x2
    kernel where it applies, ``F.interpolate`` otherwise. On spikes (multiples of 1/4) the two
    agree bit for bit; on other values (VLIF's ``adjust_first``) to float rounding. bfloat16
    spikes on the CPU go to the kernels' bfloat16 instances, in training too (the gradient in
    float32, rounded once)."""
    h, w = y.shape[-2:]
    x2 = tuple(size) == (2 * h, 2 * w) and h > 0 and w > 0
    if y.dtype in LOW_PRECISION and not (runs_bf16_natively(y, backend) or x2 and neuron_takes_bf16(y, backend)):
        return upsample_spikes(y.float(), size, backend).to(y.dtype)  # on spikes: multiples of 1/16, exact
    if x2 and native_lib(backend, y, bf16=True) is not None:
        return Upsample2xFunction.apply(y)
    return F.interpolate(y, size=size, mode="bilinear", align_corners=False)
