"""Where the spiking kernels run: the backend choice and the CPU work split.

Three backends compute the same step loops; every kernel takes ``backend`` (:data:`KERNEL_BACKENDS`):
``native``: small C kernels (``models/kernels/csrc``, built on first use by
:mod:`models.kernels.native`) that walk all steps of a block of 64 elements in registers;
``triton``: NI-LIF's and VLIF's walks as Triton kernels on float32 CUDA tensors
(:mod:`models.kernels.triton_kernels`, where Triton is installed);
``torch``: the same loops as in-place PyTorch operations on cache-sized chunks (CPU without a
C compiler, CUDA without Triton, dtypes other than float32). ``auto`` takes the first of
``native``, ``triton``, ``torch`` that applies to a call. On CPU the element range is split over
``torch.get_num_threads()`` threads with a single join per call: the native kernels run their
parts on PyTorch's own OpenMP threads (:func:`for_native`), the torch backend on Python threads.
"""
from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch

from . import native

KERNEL_BACKENDS = ("auto", "native", "triton", "torch")
log = logging.getLogger(__name__)

# torch backend on CPU: elements per step handled together. ATen runs an elementwise
# operation of at most this many elements (its grain size) on the calling thread, so a chunk
# never forks an OpenMP team; chunks are spread over Python threads instead (operations
# release the GIL). Native backend: elements below which one thread does the whole call.
CPU_CHUNK = 1 << 15
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def check_backend(name: str) -> str:
    """Validate a kernel backend name: ``auto`` (native C kernels where they build and apply,
    else torch), ``native`` or ``torch``; returns it."""
    if name not in KERNEL_BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {', '.join(KERNEL_BACKENDS)}")
    if name == "native" and native.load() is None:
        raise RuntimeError("the native spiking kernels could not be built on this machine")
    if name == "triton" and not triton_installed():
        raise RuntimeError("kernel backend 'triton' needs the triton package, which is not installed here; "
                           "use 'auto' (it falls back to the torch loops) or install triton")
    return name


def native_lib(backend: str, *tensors: torch.Tensor, bf16: bool = False):
    """The C kernels if ``backend`` allows them and they apply to these tensors: CPU float32, or
    also bfloat16 with ``bf16=True`` (for the forward kernels, which have bfloat16 instances)."""
    dtypes = (torch.float32, torch.bfloat16) if bf16 else (torch.float32,)
    if backend not in ("auto", "native") or any(t.device.type != "cpu" or t.dtype not in dtypes for t in tensors):
        return None
    return native.load()


_triton_failed: list[str] = []  # the first Triton failure of this process, if any


@functools.cache
def triton_installed() -> bool:
    """Whether the triton package is installed (it is imported only when a kernel needs it)."""
    return importlib.util.find_spec("triton") is not None


def triton_kernels(backend: str, *tensors: torch.Tensor):
    """The Triton kernels (:mod:`models.kernels.triton_kernels`) if ``backend`` allows them and
    they apply to these tensors: float32 on CUDA, Triton installed (and, under ``auto``, not failed
    before in this process). Asked for by name (``backend="triton"``) they also take CPU tensors
    when Triton's interpreter is on (``TRITON_INTERPRET=1``), as the tests run them; else ``None``."""
    if (backend not in ("auto", "triton") or (_triton_failed and backend == "auto")
            or any(t.dtype != torch.float32 for t in tensors)):
        return None
    on_cuda = all(t.device.type == "cuda" for t in tensors)
    if not on_cuda and not (backend == "triton" and os.environ.get("TRITON_INTERPRET", "0") == "1"):
        return None
    if not triton_installed():
        return None
    try:
        from . import triton_kernels
    except Exception as exc:  # an installed Triton that does not import with this torch
        triton_failed(exc)
        return None
    return triton_kernels


def triton_failed(exc: Exception) -> None:
    """Remember that Triton failed (to import or to compile a kernel) and log it once: the torch
    loops compute the same spikes for the rest of the process."""
    if not _triton_failed:
        _triton_failed.append(repr(exc))
        log.warning("Triton spiking kernels failed (%s); running the torch loops instead (same results, slower)",
                    exc)


def on_triton(backend: str, call: Callable, *tensors: torch.Tensor):
    """``call(kernels)`` with the Triton kernels where :func:`triton_kernels` gives them, else
    ``None`` (the caller runs another backend). Under ``auto`` a kernel that fails to build is
    logged once and the torch loops take over; asked for by name, the error is raised."""
    kernels = triton_kernels(backend, *tensors)
    if kernels is None:
        return None
    try:
        return call(kernels)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:
        if backend == "triton":
            raise
        triton_failed(exc)
        return None


def native_kernel(lib, name: str, dtype: torch.dtype):
    """The C kernel ``name`` for elements of ``dtype`` (its ``_bf16`` instance for bfloat16)."""
    return getattr(lib, name + "_bf16" if dtype == torch.bfloat16 else name)


def bf16_lib(x: torch.Tensor, backend: str = "auto"):
    """The C kernels if ``x`` is a gradient-free bfloat16 CPU tensor they take as it is (their
    bfloat16 instances), else ``None``."""
    if x.dtype != torch.bfloat16 or needs_grad(x):
        return None
    return native_lib(backend, x, bf16=True)


def neuron_takes_bf16(x: torch.Tensor, backend: str) -> bool:
    """Whether LIF, NI-LIF and VLIF take bfloat16 ``x`` as it is, with or without gradients: the C
    kernels' bfloat16 instances of their forward and backward (bfloat16 spikes and gradients,
    float32 arithmetic, each value rounded once: what the float32 kernels give between
    conversions, without the conversions' four passes over memory)."""
    return x.dtype == torch.bfloat16 and native_lib(backend, x, bf16=True) is not None


def runs_bf16_natively(x: torch.Tensor, backend: str) -> bool:
    """Whether ``x``, a gradient-free bfloat16 tensor, goes to the bfloat16 instances of the
    forward C kernels as it is (:func:`bf16_lib`). Otherwise low-precision input is converted to
    float32 and the spikes back (two copies per neuron call); the arithmetic is float32 in both cases."""
    return bf16_lib(x, backend) is not None


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


def for_torch_chunks(n: int, device: torch.device, body: Callable[[slice], None]) -> None:
    """torch backend: ``body(chunk)`` over slices of ``range(n)`` (whole range off the CPU)."""
    if device.type != "cpu":
        body(slice(0, n))
        return

    def run(rng: tuple[int, int]) -> None:
        for a in range(rng[0], rng[1], CPU_CHUNK):
            body(slice(a, min(rng[1], a + CPU_CHUNK)))

    _run_parallel(_split(n, CPU_CHUNK, CPU_CHUNK), run)


def for_native(n: int, call: Callable[[int, int, int], None], unit: int = 1, align: int = 64) -> None:
    """native backend: ``call(parts, count, first)`` runs a kernel on ``count`` parts of ``[0, n)``,
    from part ``first`` on; ``parts`` is the address of their int64 bounds (``csrc/parts.h``).

    ``[0, n)`` is cut into one part per thread (at least CPU_CHUNK elements each; ``unit`` is the
    number of elements an index stands for). Where the kernels run their parts on PyTorch's OpenMP
    threads (:func:`native.parallel`), that is one call; otherwise each part is a call of its own
    on a Python thread. The parts are the same either way, so are the results.
    """
    ranges = _split(n, align, -(-CPU_CHUNK // max(unit, 1)))
    bounds = (ctypes.c_int64 * (2 * len(ranges)))(*(b for rng in ranges for b in rng))
    address = ctypes.addressof(bounds)
    if len(ranges) == 1 or native.parallel():
        call(address, len(ranges), 0)
    else:
        _run_parallel(list(range(len(ranges))), lambda k: call(address + 16 * k, 1, k))


def data_ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def needs_grad(x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad
