"""Build and load the C kernels of :mod:`models.kernels` (``models/kernels/csrc``) with ctypes.

The two small C files are compiled once per machine with the system C compiler (``$CC`` or
``cc``; about a second), with OpenMP where the compiler has it, into a shared library cached
under ``$SPIKING_DERAIN_CACHE`` (default ``~/.cache/spiking_derain``), keyed by the sources, the
flags, the compiler and the CPU. No PyTorch headers and no build tools beyond the compiler are
needed. Where no compiler works, :func:`load` returns ``None`` and the callers use PyTorch
operations instead. The library links to ``libgomp.so.1`` by name, so inside PyTorch it finds
the OpenMP runtime PyTorch loaded and runs its parallel parts on PyTorch's threads.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_SRC = Path(__file__).with_name("csrc")
# exact: every operation rounds like the PyTorch reference (no contraction, no fast-math);
# -fno-trapping-math changes no value (it only lets comparisons be if-converted, so that
# loops such as LIF's spike test vectorise)
_EXACT = ("spiking_exact.c", ["-O3", "-ffp-contract=off", "-fno-trapping-math"])
# gradient only (compared with a tolerance): fast-math lets expf vectorise
_GRAD = ("spiking_grad.c", ["-O3", "-ffast-math"])

_P, _I64, _F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_PARTS = [_P, _I64]  # the bounds of a call's parts and their number (csrc/parts.h)
_SIGNATURES = {
    "nilif_forward": [_P, _P, _P, _I64, _I64, *_PARTS],
    "nilif_backward": [_P, _P, _P, _I64, _I64, *_PARTS],
    "lif_forward": [_P, _P, _P, _P, _P, _I64, _I64, *_PARTS, _F32, _F32],
    "lif_backward": [_P, _P, _P, _I64, _I64, *_PARTS, _F32, _F32, _F32],
    "vlif_forward": [_P, _P, _P, _I64, _I64, _I64, _I64, _I64, *_PARTS],
    "vlif_backward": [_P, _P, _P, _I64, _I64, _I64, _I64, _I64, *_PARTS],
    "upsample2x_bilinear": [_P, _P, _I64, _I64, *_PARTS],
    "upsample2x_bilinear_backward": [_P, _P, _I64, _I64, *_PARTS],
    "row_mean_max_bf16": [_P, _P, _P, _I64, *_PARTS],
    "col_mean_max_bf16": [_P, _P, _P, _I64, _I64, *_PARTS],
    "row_max_first": [_P, _P, _P, _I64, *_PARTS],
    "col_max_first": [_P, _P, _P, _I64, _I64, *_PARTS],
    "gated_product_backward": [_P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, *_PARTS],
    "sdem_mix_bf16": [_P, _P, _P, _F32, _F32, *_PARTS],
    "sdem_mix": [_P, _P, _P, _F32, _F32, *_PARTS],
    "sdem_mix_backward": [_P, _P, _P, _P, _P, _P, _F32, _F32, *_PARTS],
}
# the bfloat16 instances (csrc/forward.h, backward.h, grad.h): same arguments
_SIGNATURES.update({name + "_bf16": _SIGNATURES[name] for name in (
    "nilif_forward", "lif_forward", "vlif_forward", "upsample2x_bilinear", "nilif_backward", "vlif_backward",
    "lif_backward", "upsample2x_bilinear_backward", "sdem_mix_backward")})

_lib: ctypes.CDLL | None = None
_tried = False
_parallel = False


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _cache_dir() -> Path:
    root = os.environ.get("SPIKING_DERAIN_CACHE") or Path.home() / ".cache" / "spiking_derain"
    path = Path(root)
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:
        path = Path(tempfile.gettempdir()) / "spiking_derain"
        path.mkdir(parents=True, exist_ok=True)
        return path


def _compile(cc: str, flags: list[str], out: Path) -> None:
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        objects = []
        for name, own in (_EXACT, _GRAD):
            obj = Path(tmp) / (name + ".o")
            subprocess.run([cc, *own, *flags, "-fPIC", "-c", str(_SRC / name), "-o", str(obj)],
                           check=True, capture_output=True, timeout=120)
            objects.append(str(obj))
        lib = Path(tmp) / out.name
        subprocess.run([cc, "-shared", *flags, *objects, "-o", str(lib), "-lm"], check=True, capture_output=True,
                       timeout=120)
        os.replace(lib, out)  # atomic: concurrent processes never load a half-written file


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise FileNotFoundError(f"no C compiler {cc!r}")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    sources = b"".join(p.read_bytes() for p in sorted(_SRC.glob("*.[ch]")))  # headers too
    errors = []
    for flags in (["-march=native", "-fopenmp"], ["-march=native"], ["-fopenmp"], []):
        key = hashlib.sha256(
            sources + repr((_EXACT[1], _GRAD[1], flags, version, _cpu_signature(), platform.platform())).encode()
        ).hexdigest()[:16]
        path = _cache_dir() / f"spiking_kernels_{key}.so"
        try:
            if not path.exists():
                _compile(cc, flags, path)
            lib = ctypes.CDLL(str(path))
        except (OSError, subprocess.SubprocessError) as err:
            errors.append(getattr(err, "stderr", None) or err)
            continue
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, None
        lib.kernels_openmp.restype = ctypes.c_int
        return lib
    raise RuntimeError(f"compiling the spiking kernels failed: {errors[-1]!r}")


def _openmp_runtimes() -> set[str]:
    """Paths of the OpenMP runtimes mapped into this process (empty where that cannot be read)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/" in line}
    except OSError:
        return set()
    return {p for p in paths if re.match(r"lib[gi]?omp\d*[.-]", p.rsplit("/", 1)[-1])}  # libgomp, libiomp5, libomp


def load() -> ctypes.CDLL | None:
    """The compiled kernels, building them on first use; ``None`` where that is impossible."""
    global _lib, _tried, _parallel
    if not _tried:
        _tried = True
        try:
            _lib = _build()
        except Exception as err:  # no compiler, read-only cache, exotic platform: stay exact in torch
            log.warning("native spiking kernels unavailable (%s); using PyTorch operations", err)
            _lib = None
        # the kernels run a call's parts on OpenMP threads only where they share PyTorch's runtime
        _parallel = (_lib is not None and bool(_lib.kernels_openmp()) and len(_openmp_runtimes()) == 1
                     and "parallel backend: OpenMP" in torch.__config__.parallel_info())
    return _lib


def parallel() -> bool:
    """Whether the loaded kernels run the parts of a call on PyTorch's OpenMP threads themselves
    (built with OpenMP, PyTorch parallelises with OpenMP, and the process holds one OpenMP
    runtime: the one PyTorch loaded, which the kernels' ``libgomp.so.1`` then resolved to)."""
    load()
    return _parallel
