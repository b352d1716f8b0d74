"""Where the spiking kernels run: the backend choice and the CPU work split.

Two backends compute the same step loops; every kernel takes ``backend`` (:data:`KERNEL_BACKENDS`):
``native``: small C kernels (``models/kernels/csrc``, built on first use by
:mod:`models.kernels.native`) that walk all steps of a block of 64 elements in registers;
``torch``: the same loops as in-place PyTorch operations on cache-sized chunks (CPU without a
C compiler, CUDA, dtypes other than float32). On CPU the element range is split over
``torch.get_num_threads()`` threads with a single join per call: the native kernels run their
parts on PyTorch's own OpenMP threads (:func:`for_native`), the torch backend on Python threads.
"""
from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch

from . import native

KERNEL_BACKENDS = ("auto", "native", "torch")

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
    return name


def native_lib(backend: str, *tensors: torch.Tensor, bf16: bool = False):
    """The C kernels if ``backend`` allows them and they apply to these tensors: CPU float32, or
    also bfloat16 with ``bf16=True`` (for the forward kernels, which have bfloat16 instances)."""
    dtypes = (torch.float32, torch.bfloat16) if bf16 else (torch.float32,)
    if backend == "torch" or any(t.device.type != "cpu" or t.dtype not in dtypes for t in tensors):
        return None
    return native.load()


def native_kernel(lib, name: str, dtype: torch.dtype):
    """The C kernel ``name`` for elements of ``dtype`` (its ``_bf16`` instance for bfloat16)."""
    return getattr(lib, name + "_bf16" if dtype == torch.bfloat16 else name)


def bf16_lib(x: torch.Tensor, backend: str = "auto"):
    """The C kernels if ``x`` is a gradient-free bfloat16 CPU tensor they take as it is (their
    bfloat16 instances), else ``None``."""
    if x.dtype != torch.bfloat16 or needs_grad(x):
        return None
    return native_lib(backend, x, bf16=True)


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
