"""Fast kernels for the spiking neurons, exact against the reference in :mod:`models.neurons`.

Where the reference spends its time: every step of every neuron is a handful of whole-tensor
operations (a pass over memory and, on a multi-core CPU, a fork-join each), plus an autograd
node and a saved membrane per step; NI-LIF walks 16 steps in VLIF and SMU. Here
- all steps of a neuron run inside one custom autograd Function, with no per-step graph;
- only what the backward needs is saved: a 1-byte "inside [0, 4]" mask per element for
  NI-LIF, the charged membranes for LIF;
- the backward is hand-derived. NI-LIF (SPEC 1.2, reset through a stop-gradient):
  ``dL/dm_t = dL/ds_t * [0 <= m_t <= 4] / 4 + 0.25 * dL/dm_{t+1}``, ``dL/dx_t = dL/dm_t``.
  LIF (SPEC 1.1, reset not detached): ``dL/dh_t = dL/ds_t sg_t + dL/dv_t ((1 - s_t) - h_t sg_t)``,
  ``dL/dv_{t-1} = dL/dh_t (1 - 1/tau)``, ``dL/dx_t = dL/dh_t``;
- the step loops run in one of two backends (:func:`set_kernel_backend`):
  ``native``: small C kernels (``models/csrc``, built on first use by :mod:`models._native`)
  that walk all steps of a block of 64 elements in registers; ``torch``: the same loops as
  in-place PyTorch operations on cache-sized chunks (CPU without a C compiler, CUDA, dtypes
  other than float32). On CPU the element range is split over ``torch.get_num_threads()``
  threads with a single join per call.

Forward arithmetic repeats the reference operation by operation (spikingjelly 2.0.0's
``v - (v - 0) / tau + x`` and ``s * 0 + (1 - s) * h`` for LIF), so spikes and membranes are
bit-identical; NI-LIF gradients are bit-identical too (the two gradient terms of ``m_t`` are
summed once, and float addition commutes); LIF gradients agree to float rounding.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import _native
from .neurons import NILIF_DECAY, NILIF_LEVELS, patch_to_time, time_to_patch

KERNEL_BACKENDS = ("auto", "native", "torch")
_backend = os.environ.get("SPIKING_DERAIN_KERNELS", "auto")
if _backend not in KERNEL_BACKENDS:
    _backend = "auto"

# torch backend on CPU: elements per step handled together. ATen runs an elementwise
# operation of at most this many elements (its grain size) on the calling thread, so a chunk
# never forks an OpenMP team; chunks are spread over Python threads instead (operations
# release the GIL). Native backend: elements below which one thread does the whole call.
CPU_CHUNK = 1 << 15
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def set_kernel_backend(name: str) -> str:
    """``auto`` (native C kernels where they build, else torch), ``native`` or ``torch``.

    Returns the previous choice; ``SPIKING_DERAIN_KERNELS`` sets the initial one.
    """
    global _backend
    if name not in KERNEL_BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {', '.join(KERNEL_BACKENDS)}")
    if name == "native" and _native.load() is None:
        raise RuntimeError("the native spiking kernels could not be built on this machine")
    previous, _backend = _backend, name
    return previous


def _native_lib(*tensors: torch.Tensor):
    """The C kernels if they apply to these tensors (CPU float32) and are selected."""
    if _backend == "torch" or any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return None
    return _native.load()


def _reset_pool() -> None:
    global _pool
    _pool = None  # a forked child has the executor object but not its threads


os.register_at_fork(after_in_child=_reset_pool)


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers != workers:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="spiking-kernel")
        return _pool


def _run_parallel(parts: list, body: Callable) -> None:
    """``body(part)`` for every part; the caller's thread takes the first one."""
    if len(parts) == 1:
        body(parts[0])
        return
    inference = torch.is_inference_mode_enabled()  # grad and inference modes are thread-local

    def run(part) -> None:
        with torch.inference_mode() if inference else torch.no_grad():
            body(part)

    futures = [_executor(len(parts) - 1).submit(run, part) for part in parts[1:]]
    run(parts[0])
    for f in futures:
        f.result()


def _split(n: int, align: int, min_part: int) -> list[tuple[int, int]]:
    """``[0, n)`` in up to ``torch.get_num_threads()`` ranges aligned to ``align``."""
    workers = max(1, min(torch.get_num_threads(), n // max(min_part, 1)))
    per = -(-n // workers)
    per = -(-per // align) * align
    return [(a, min(n, a + per)) for a in range(0, n, per)] or [(0, 0)]


def _for_torch_chunks(n: int, device: torch.device, body: Callable[[slice], None]) -> None:
    """torch backend: ``body(chunk)`` over slices of ``range(n)`` (whole range off the CPU)."""
    if device.type != "cpu":
        body(slice(0, n))
        return

    def run(rng: tuple[int, int]) -> None:
        for a in range(rng[0], rng[1], CPU_CHUNK):
            body(slice(a, min(rng[1], a + CPU_CHUNK)))

    _run_parallel(_split(n, CPU_CHUNK, CPU_CHUNK), run)


def _for_native(n: int, call: Callable[[int, int], None], unit: int = 1, align: int = 64) -> None:
    """native backend: ``call(lo, hi)`` over ranges of ``[0, n)``, one per thread; ``unit`` is
    the number of elements an index stands for (a thread gets at least CPU_CHUNK elements)."""
    _run_parallel(_split(n, align, -(-CPU_CHUNK // max(unit, 1))), lambda rng: call(*rng))


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _needs_grad(x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


# ---------------------------------------------------------------------------------------------
# NI-LIF (SPEC 1.2)
# ---------------------------------------------------------------------------------------------
def nilif_forward(x: torch.Tensor, with_mask: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Spikes ``[L, N]`` of NI-LIF over contiguous ``x`` ``[L, N]`` and, if asked, the backward
    mask ``0 <= m_t <= 4`` (bool ``[L, N]``)."""
    x = x.detach()
    L, N = x.shape
    spikes = torch.empty_like(x)
    mask = torch.empty(L, N, dtype=torch.bool, device=x.device) if with_mask else None
    lib = _native_lib(x)
    if lib is not None:
        _for_native(N, lambda lo, hi: lib.nilif_forward(_ptr(x), _ptr(spikes), _ptr(mask), L, N, lo, hi))
        return spikes, mask

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

    _for_torch_chunks(N, x.device, body)
    return spikes, mask


def nilif_backward(grad_s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``dL/dx`` ``[L, N]`` from contiguous ``dL/ds`` ``[L, N]`` and the forward mask."""
    grad_s = grad_s.detach()
    L, N = grad_s.shape
    grad_x = torch.empty_like(grad_s)
    lib = _native_lib(grad_s)
    if lib is not None:
        _for_native(N, lambda lo, hi: lib.nilif_backward(_ptr(grad_s), _ptr(mask), _ptr(grad_x), L, N, lo, hi))
        return grad_x

    def body(c: slice) -> None:
        g = None
        for t in range(L - 1, -1, -1):
            o = grad_x[t, c]
            torch.mul(grad_s[t, c], mask[t, c], out=o)
            o.div_(NILIF_LEVELS)  # straight-through gradient of the quantiser
            if g is not None:
                o.add_(g, alpha=NILIF_DECAY)  # + dL/dm_{t+1} * 0.25
            g = o

    _for_torch_chunks(N, grad_s.device, body)
    return grad_x


class NILIFFunction(torch.autograd.Function):
    """NI-LIF over the first axis of ``[L, ...]``; saves one bool per element."""

    @staticmethod
    def forward(ctx, x_seq: torch.Tensor) -> torch.Tensor:
        x = x_seq.contiguous()
        spikes, mask = nilif_forward(x.view(x.shape[0], -1), True)
        ctx.save_for_backward(mask)
        return spikes.view(x.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_s: torch.Tensor) -> torch.Tensor:
        (mask,) = ctx.saved_tensors
        g = grad_s.contiguous()
        return nilif_backward(g.view(mask.shape), mask).view(g.shape)


def ni_lif(x_seq: torch.Tensor) -> torch.Tensor:
    """Fast NI-LIF: same contract and bits as :func:`models.neurons.ni_lif_reference`."""
    if _needs_grad(x_seq):
        return NILIFFunction.apply(x_seq)
    x = x_seq.contiguous()
    return nilif_forward(x.view(x.shape[0], -1), False)[0].view(x.shape)


def _vlif_forward(x_seq: torch.Tensor, r: int, with_mask: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Spikes ``[T*B, C*r*r, h, w]`` (and mask, same layout) of VLIF's NI-LIF walk."""
    T, B, C, H, W = x_seq.shape
    h, w = H // r, W // r
    lib = _native_lib(x_seq)
    if lib is None:  # reorder, run the plain kernel, reorder back
        y = patch_to_time(x_seq, r)  # [T*r*r, B, C, h, w]
        spikes, mask = nilif_forward(y.view(y.shape[0], -1), with_mask)
        mask = None if mask is None else time_to_patch(mask.view(y.shape), T, r)
        return time_to_patch(spikes.view(y.shape), T, r), mask
    x = x_seq.detach().contiguous()
    spikes = x.new_empty(T * B, C * r * r, h, w)
    mask = torch.empty(spikes.shape, dtype=torch.bool) if with_mask else None
    _for_native(B * C * h, lambda lo, hi: lib.vlif_forward(
        _ptr(x), _ptr(spikes), _ptr(mask), T, B * C, H, W, r, lo, hi), unit=w * T * r * r, align=1)
    return spikes, mask


def _vlif_backward(grad_y: torch.Tensor, mask: torch.Tensor, shape: torch.Size, r: int) -> torch.Tensor:
    T, B, C, H, W = shape
    h, w = H // r, W // r
    grad_y = grad_y.detach().contiguous()
    lib = _native_lib(grad_y)
    if lib is None:
        L = T * r * r
        g = grad_y.view(T, B, C, r * r, h, w).permute(0, 3, 1, 2, 4, 5)  # [T, r*r, B, C, h, w]
        m = mask.view(T, B, C, r * r, h, w).permute(0, 3, 1, 2, 4, 5)
        g = nilif_backward(g.reshape(L, -1), m.reshape(L, -1))  # [T*r*r, B*C*h*w]
        g = g.view(T, r * r, B, C, h, w).permute(0, 2, 3, 1, 4, 5)  # [T, B, C, r*r, h, w]
        return F.pixel_shuffle(g.reshape(T * B, C * r * r, h, w), r).view(shape)  # [T, B, C, H, W]
    grad_x = grad_y.new_empty(shape)
    _for_native(B * C * h, lambda lo, hi: lib.vlif_backward(
        _ptr(grad_y), _ptr(mask), _ptr(grad_x), T, B * C, H, W, r, lo, hi), unit=w * T * r * r, align=1)
    return grad_x


class VLIFSpikeFunction(torch.autograd.Function):
    """``[T, B, C, H, W]`` -> NI-LIF spikes in the layout VLIF resizes, ``[T*B, C*r*r, H/r, W/r]``
    (patch-to-time, NI-LIF over ``T*r*r`` steps, inverse reordering; SPEC 1.3 steps 1-4). The
    native kernel reads and writes those layouts directly, without reordering copies."""

    @staticmethod
    def forward(ctx, x_seq: torch.Tensor, r: int) -> torch.Tensor:
        spikes, mask = _vlif_forward(x_seq, r, True)
        ctx.save_for_backward(mask)
        ctx.shape, ctx.r = x_seq.shape, r
        return spikes

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return _vlif_backward(grad_y, mask, ctx.shape, ctx.r), None


def vlif_spikes(x_seq: torch.Tensor, r: int) -> torch.Tensor:
    """Fast ``time_to_patch(ni_lif(patch_to_time(x_seq, r)), T, r)``: ``[T*B, C*r*r, H/r, W/r]``."""
    if x_seq.shape[-2] % r or x_seq.shape[-1] % r:
        raise ValueError(f"patch-to-time needs H and W divisible by r={r}, got {tuple(x_seq.shape[-2:])}")
    if _needs_grad(x_seq):
        return VLIFSpikeFunction.apply(x_seq, r)
    return _vlif_forward(x_seq, r, False)[0]


class Upsample2xFunction(torch.autograd.Function):
    """Bilinear x2 resize (``align_corners=False``) of VLIF's spikes, ``[N, C, h, w]`` ->
    ``[N, C, 2h, 2w]``, native kernels both ways. Exact for inputs that are multiples of 1/4
    in [0, 1] (every product and sum is exact in float32), which NI-LIF spikes are."""

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:
        lib = _native.load()
        y = y.detach().contiguous()
        N, C, h, w = y.shape
        out = y.new_empty(N, C, 2 * h, 2 * w)
        _for_native(N * C, lambda lo, hi: lib.upsample2x_bilinear(_ptr(y), _ptr(out), h, w, lo, hi),
                    unit=4 * h * w, align=1)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        lib = _native.load()
        grad = grad.contiguous()
        N, C, H, W = grad.shape
        h, w = H // 2, W // 2
        out = grad.new_empty(N, C, h, w)
        _for_native(N * C, lambda lo, hi: lib.upsample2x_bilinear_backward(_ptr(grad), _ptr(out), h, w, lo, hi),
                    unit=4 * h * w, align=1)
        return out


def upsample_spikes(y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(y, size, mode="bilinear", align_corners=False)`` for VLIF's spikes:
    the native exact x2 kernel where it applies, ``F.interpolate`` otherwise."""
    h, w = y.shape[-2:]
    if tuple(size) == (2 * h, 2 * w) and h > 0 and w > 0 and _native_lib(y) is not None:
        return Upsample2xFunction.apply(y)
    return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------
# LIF (SPEC 1.1: decay_input=False, hard reset to 0 not detached, sigmoid surrogate)
# ---------------------------------------------------------------------------------------------
def lif_forward(
    x: torch.Tensor, v0: torch.Tensor, tau: float, v_th: float, keep_h: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Spikes ``[L, N]``, charged membranes ``h`` (if ``keep_h``) and final membrane ``[N]``
    from contiguous ``x`` ``[L, N]`` and ``v0`` ``[N]``.

    torch backend: the hard reset ``v = s * 0 + (1 - s) * h`` is taken as ``h * [h < v_th]``
    (equal values, also for NaN and infinite ``h``; a zero may change sign, which no later
    step can see).
    """
    x, v0 = x.detach(), v0.detach().contiguous()
    L, N = x.shape
    spikes = torch.empty_like(x)
    charged = torch.empty_like(x) if keep_h else None
    v_out = torch.empty_like(v0)
    lib = _native_lib(x, v0)
    if lib is not None:
        _for_native(N, lambda lo, hi: lib.lif_forward(
            _ptr(x), _ptr(v0), _ptr(spikes), _ptr(charged), _ptr(v_out), L, N, lo, hi, tau, v_th))
        return spikes, charged, v_out

    def body(c: slice) -> None:
        v = v0[c].clone()
        tmp = torch.empty_like(v)
        h = None if keep_h else torch.empty_like(v)
        for t in range(L):
            ht = charged[t, c] if keep_h else h
            torch.div(v, tau, out=tmp)
            torch.sub(v, tmp, out=ht)
            ht.add_(x[t, c])
            torch.ge(ht, v_th, out=spikes[t, c])
            torch.lt(ht, v_th, out=tmp)
            torch.mul(ht, tmp, out=v)
        v_out[c] = v

    _for_torch_chunks(N, x.device, body)
    return spikes, charged, v_out


def lif_backward(grad_s: torch.Tensor, h: torch.Tensor, tau: float, v_th: float, alpha: float) -> torch.Tensor:
    """``dL/dx`` ``[L, N]`` from contiguous ``dL/ds`` and the saved charged membranes ``h``."""
    grad_s = grad_s.detach()
    L, N = grad_s.shape
    grad_x = torch.empty_like(grad_s)
    lib = _native_lib(grad_s)
    if lib is not None:
        _for_native(N, lambda lo, hi: lib.lif_backward(
            _ptr(grad_s), _ptr(h), _ptr(grad_x), L, N, lo, hi, tau, v_th, alpha))
        return grad_x

    def body(c: slice) -> None:
        sg = torch.empty_like(h[0, c])
        tmp = torch.empty_like(sg)
        carry = None  # dL/dv_t, flowing in from step t + 1
        for t in range(L - 1, -1, -1):
            ht, o = h[t, c], grad_x[t, c]
            torch.sub(ht, v_th, out=tmp)
            tmp.mul_(alpha).sigmoid_()
            torch.neg(tmp, out=sg).add_(1).mul_(tmp).mul_(alpha)  # sg = alpha * sig * (1 - sig)
            torch.mul(grad_s[t, c], sg, out=o)
            if carry is not None:
                torch.lt(ht, v_th, out=tmp)  # 1 - s_t
                tmp.sub_(ht * sg)  # dv_t/dh_t = (1 - s_t) + (0 - h_t) * sg_t
                o.addcmul_(carry, tmp)
            carry = o * (1 - 1 / tau)

    _for_torch_chunks(N, grad_s.device, body)
    return grad_x


class LIFFunction(torch.autograd.Function):
    """Multi-step LIF from a constant initial membrane; returns spikes and the final membrane."""

    @staticmethod
    def forward(ctx, x_seq, v0, tau, v_th, alpha):
        x = x_seq.contiguous()
        spikes, h, v = lif_forward(x.view(x.shape[0], -1), v0.reshape(-1), tau, v_th, True)
        ctx.save_for_backward(h)
        ctx.consts = (tau, v_th, alpha)
        ctx.mark_non_differentiable(v)
        return spikes.view(x.shape), v.view(x.shape[1:])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_s, grad_v):
        (h,) = ctx.saved_tensors
        g = grad_s.contiguous()
        return lif_backward(g.view(h.shape), h, *ctx.consts).view(g.shape), None, None, None, None


def lif_multi_step(
    x_seq: torch.Tensor, v0: torch.Tensor, tau: float, v_th: float, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spikes ``[T, ...]`` and final membrane ``[...]`` of the released LIF from ``v0``.

    ``v0`` is a constant (no gradient flows into it): :class:`models.neurons.LIF` only calls
    this on a freshly reset or gradient-free state.
    """
    if _needs_grad(x_seq):
        return LIFFunction.apply(x_seq, v0.detach(), tau, v_th, alpha)
    x = x_seq.contiguous()
    spikes, _, v = lif_forward(x.view(x.shape[0], -1), v0.reshape(-1), tau, v_th, False)
    return spikes.view(x.shape), v.view(x.shape[1:])
