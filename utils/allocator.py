"""Keep freed CPU memory in the process: glibc malloc settings for PyTorch's CPU tensors.

PyTorch allocates CPU tensors with glibc's ``posix_memalign``. glibc serves blocks above its
mmap threshold (128 KB at start, rising to at most 32 MB) with fresh pages from the kernel and
gives them back on ``free``, so every training step faults its activations in again, page by page.
Measured on this project's machine (AMD EPYC, 2 cores): two training steps of the full
VLIFNet (batch 12, 64x64) took 54.0 s, 30.9 s of it in the kernel with 8.75 million page
faults; with large blocks served from the heap and freed memory kept, 30.3 s, 0.1 s in the
kernel (docs/speed.md). The price: the process holds on to the memory it frees (glibc trims
only a free top of the heap above 2 GB), which a training or inference process reaches again
at its next step anyway.
"""
from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = (
    (M_MMAP_THRESHOLD, 1 << 30),  # blocks below 1 GB come from the heap, not from fresh mmap pages
    # hand freed heap memory back only once more than 2 GB lie free at the top of the heap: the
    # largest limit mallopt takes. A step that frees more (the reference path's training step,
    # 14.7 GB at its peak) is trimmed and faults its memory in again. -1 (never trim) is no cure:
    # glibc 2.36 did not reuse freed blocks for PyTorch's aligned allocations (posix_memalign),
    # and a process cycling three 800 MB tensors grew by 2.4 GB a cycle (docs/speed.md)
    (M_TRIM_THRESHOLD, 2**31 - 1),
    (M_TOP_PAD, 1 << 29),  # grow the heap 512 MB at a time (address space; pages are touched on use)
)


def keep_freed_memory() -> bool:
    """Apply :data:`SETTINGS` to this process's glibc allocator (Linux); returns whether they took
    effect. Call it once at start-up, before the large allocations."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    ok = all(mallopt(param, value) == 1 for param, value in SETTINGS)
    if not ok:
        log.debug("glibc refused a malloc setting; CPU memory is returned to the kernel as usual")
    return ok
