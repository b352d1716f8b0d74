"""NI-LIF and VLIF kernels in Triton for CUDA: the same spikes, masks and gradients as the C kernels.

The ``torch`` backend walks NI-LIF's steps as whole-tensor operations: on a GPU, seven kernel
launches and passes over memory per step (112 for VLIF's and the SMU's 16 steps). These kernels
walk all steps of a block of elements in registers, reading each input once and writing each
spike (and each 1-byte mask value) once; VLIF's kernels read and write the patch-to-time layouts
directly, as the C kernels do (``csrc/forward.h``).

Exact by construction: the kernels are built without fused multiply-adds, so the membrane
update ``(m - s) * 0.25 + x`` rounds as PyTorch's separate operations do, and the quantiser
``round(clamp(m, 0, 4)) / 4`` (round half to even) is written as comparisons: on ``[0, 4]`` it
counts the thresholds 0.5, 1.5, 2.5 and 3.5 that ``m`` passes, ties going to the even level; NaN
stays NaN. The backward computes the reference's
``dL/ds_t * [0 <= m_t <= 4] / 4 + 0.25 * dL/dm_{t+1}`` with the same roundings.

Imported only where Triton is installed (:func:`models.kernels.backend.triton_kernels`). Under
Triton's interpreter (``TRITON_INTERPRET=1`` before this module is imported) the kernels also
run on CPU tensors, which is how the tests check them on machines without a GPU; and Triton
builds them for a GPU without one (``tests/test_triton.py``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024  # elements (NI-LIF) or output sites (VLIF) per program
# no fused multiply-adds: every product and sum rounds on its own, as PyTorch's kernels do
LAUNCH = dict(num_warps=4, enable_fp_fusion=False)


@triton.jit
def _spike(m):
    """``round(clamp(m, 0, 4)) / 4``, ties to even, NaN kept."""
    k = ((m > 0.5).to(tl.float32) + (m >= 1.5).to(tl.float32)
         + (m > 2.5).to(tl.float32) + (m >= 3.5).to(tl.float32))
    return tl.where(m == m, k * 0.25, m)


@triton.jit
def _inside(m):
    """The straight-through gradient's support ``0 <= m <= 4`` (False for NaN)."""
    return (m >= 0.0) & (m <= 4.0)


@triton.jit
def _nilif_forward_kernel(x_ptr, s_ptr, mask_ptr, L, N, WITH_MASK: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    x_ptrs, s_ptrs, mask_ptrs = x_ptr + offs, s_ptr + offs, mask_ptr + offs
    m = tl.load(x_ptrs, mask=ok, other=0.0)
    s = _spike(m)
    tl.store(s_ptrs, s, mask=ok)
    if WITH_MASK:
        tl.store(mask_ptrs, _inside(m), mask=ok)
    for _ in range(1, L):
        x_ptrs += N
        s_ptrs += N
        mask_ptrs += N
        m = (m - s) * 0.25 + tl.load(x_ptrs, mask=ok, other=0.0)
        s = _spike(m)
        tl.store(s_ptrs, s, mask=ok)
        if WITH_MASK:
            tl.store(mask_ptrs, _inside(m), mask=ok)


@triton.jit
def _nilif_backward_kernel(g_ptr, mask_ptr, out_ptr, L, N, last_step, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    last = last_step + offs  # the walk runs from the last step, at offset last_step = (L - 1) * N, back
    g_ptrs, mask_ptrs, out_ptrs = g_ptr + last, mask_ptr + last, out_ptr + last
    gs = tl.load(g_ptrs, mask=ok, other=0.0)
    inside = tl.load(mask_ptrs, mask=ok, other=0).to(tl.float32)
    g = gs * inside * 0.25
    tl.store(out_ptrs, g, mask=ok)
    for _ in range(1, L):
        g_ptrs -= N
        mask_ptrs -= N
        out_ptrs -= N
        gs = tl.load(g_ptrs, mask=ok, other=0.0)
        inside = tl.load(mask_ptrs, mask=ok, other=0).to(tl.float32)
        g = gs * inside * 0.25 + g * 0.25
        tl.store(out_ptrs, g, mask=ok)


@triton.jit
def _vlif_offsets(pid, BC, h, w, BLOCK: tl.constexpr, R: tl.constexpr):
    """A block of output sites ``(b*C + c, y, x)``: their mask, their input offset at step 0 and
    sub-pixel 0 in ``[T, B*C, H, W]``, and their output offset at step 0 and sub-pixel 0 in
    ``[T*B*C, R*R, h, w]``."""
    n = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = n < BC * h * w
    xx = n % w
    yy = (n // w) % h
    bc = n // (h * w)
    H, W = h * R, w * R
    src = bc * H * W + yy * R * W + xx * R
    dst = bc * R * R * h * w + yy * w + xx
    return ok, src, dst


@triton.jit
def _vlif_forward_kernel(x_ptr, s_ptr, mask_ptr, T, BC, h, w, step, WITH_MASK: tl.constexpr, BLOCK: tl.constexpr,
                         R: tl.constexpr):
    ok, src, dst = _vlif_offsets(tl.program_id(0), BC, h, w, BLOCK, R)
    plane = h * w  # step = B*C*H*W elements per time step, in either layout
    m = tl.load(x_ptr + src, mask=ok, other=0.0)
    s = _spike(m)
    tl.store(s_ptr + dst, s, mask=ok)
    if WITH_MASK:
        tl.store(mask_ptr + dst, _inside(m), mask=ok)
    for p in tl.static_range(1, R * R):  # the rest of step 0's sub-pixels
        m = (m - s) * 0.25 + tl.load(x_ptr + src + (p // R) * w * R + p % R, mask=ok, other=0.0)
        s = _spike(m)
        tl.store(s_ptr + dst + p * plane, s, mask=ok)
        if WITH_MASK:
            tl.store(mask_ptr + dst + p * plane, _inside(m), mask=ok)
    for _ in range(1, T):
        src += step
        dst += step
        for p in tl.static_range(R * R):
            m = (m - s) * 0.25 + tl.load(x_ptr + src + (p // R) * w * R + p % R, mask=ok, other=0.0)
            s = _spike(m)
            tl.store(s_ptr + dst + p * plane, s, mask=ok)
            if WITH_MASK:
                tl.store(mask_ptr + dst + p * plane, _inside(m), mask=ok)


@triton.jit
def _vlif_backward_kernel(g_ptr, mask_ptr, out_ptr, T, BC, h, w, step, last_step, BLOCK: tl.constexpr,
                          R: tl.constexpr):
    ok, dst, src = _vlif_offsets(tl.program_id(0), BC, h, w, BLOCK, R)  # reads the spikes' layout
    plane = h * w
    src += last_step  # (T - 1) * step: the walk runs from the last step back
    dst += last_step
    last = R * R - 1
    gs = tl.load(g_ptr + src + last * plane, mask=ok, other=0.0)
    inside = tl.load(mask_ptr + src + last * plane, mask=ok, other=0).to(tl.float32)
    g = gs * inside * 0.25
    tl.store(out_ptr + dst + (last // R) * w * R + last % R, g, mask=ok)
    for q in tl.static_range(1, R * R):  # the rest of the last step's sub-pixels, backwards
        p = last - q
        gs = tl.load(g_ptr + src + p * plane, mask=ok, other=0.0)
        inside = tl.load(mask_ptr + src + p * plane, mask=ok, other=0).to(tl.float32)
        g = gs * inside * 0.25 + g * 0.25
        tl.store(out_ptr + dst + (p // R) * w * R + p % R, g, mask=ok)
    for _ in range(1, T):
        src -= step
        dst -= step
        for q in tl.static_range(R * R):
            p = last - q
            gs = tl.load(g_ptr + src + p * plane, mask=ok, other=0.0)
            inside = tl.load(mask_ptr + src + p * plane, mask=ok, other=0).to(tl.float32)
            g = gs * inside * 0.25 + g * 0.25
            tl.store(out_ptr + dst + (p // R) * w * R + p % R, g, mask=ok)


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, BLOCK),)


def nilif_forward(x: torch.Tensor, with_mask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Spikes ``[L, N]`` of NI-LIF over contiguous float32 ``x`` ``[L, N]`` and, ``with_mask``, the
    backward mask (bool ``[L, N]``; else empty)."""
    L, N = x.shape
    spikes = torch.empty_like(x)
    mask = torch.empty(L, N if with_mask else 0, dtype=torch.bool, device=x.device)
    if x.numel():
        _nilif_forward_kernel[_grid(N)](x, spikes, mask if with_mask else spikes, L, N, WITH_MASK=with_mask,
                                        BLOCK=BLOCK, **LAUNCH)
    return spikes, mask


def nilif_backward(grad_s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``dL/dx`` ``[L, N]`` from contiguous float32 ``dL/ds`` ``[L, N]`` and the forward mask."""
    L, N = grad_s.shape
    grad_x = torch.empty_like(grad_s)
    if grad_s.numel():
        _nilif_backward_kernel[_grid(N)](grad_s, mask, grad_x, L, N, (L - 1) * N, BLOCK=BLOCK, **LAUNCH)
    return grad_x


def vlif_forward(x_seq: torch.Tensor, r: int, with_mask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """VLIF's spikes ``[T*B, C*r*r, H/r, W/r]`` from contiguous float32 ``x_seq`` ``[T, B, C, H, W]``
    and, ``with_mask``, the backward mask in the same layout (else empty)."""
    T, B, C, H, W = x_seq.shape
    h, w = H // r, W // r
    spikes = x_seq.new_empty(T * B, C * r * r, h, w)
    mask = torch.empty(spikes.shape if with_mask else (0,), dtype=torch.bool, device=x_seq.device)
    if spikes.numel():
        _vlif_forward_kernel[_grid(B * C * h * w)](x_seq, spikes, mask if with_mask else spikes, T, B * C, h, w,
                                                   B * C * H * W,
                                                   WITH_MASK=with_mask, BLOCK=BLOCK, R=r, **LAUNCH)
    return spikes, mask


def vlif_backward(grad_y: torch.Tensor, mask: torch.Tensor, shape: list[int], r: int) -> torch.Tensor:
    """``dL/dx`` ``[T, B, C, H, W]`` (``shape``) from contiguous float32 ``dL/dspikes`` and the mask."""
    T, B, C, H, W = shape
    h, w = H // r, W // r
    grad_x = grad_y.new_empty(shape)
    if grad_x.numel():
        _vlif_backward_kernel[_grid(B * C * h * w)](grad_y, mask, grad_x, T, B * C, h, w, B * C * H * W,
                                                    (T - 1) * B * C * H * W, BLOCK=BLOCK, R=r, **LAUNCH)
    return grad_x
