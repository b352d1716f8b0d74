"""Timing and memory measurement for the reference-vs-fast benchmark.

Honesty rules the harness follows: both paths get the same inputs and weights and run in
the same process; warm-up calls are excluded; the timed calls alternate between the paths
(reference first on even repetitions, fast first on odd ones) so that a slow phase of a
shared machine hits both; the median is reported, with every sample kept in the JSON. Peak
memory is measured in one more call of each path after the timed ones, never in a timed call:
measuring it hands the free heap back to the kernel first, and the call after that faults its
memory in again (seconds for a training step), which neither train.py nor test.py pays. Each
timed call's kernel time and page faults are kept beside its time, and a call that spent more than
a tenth of it in the kernel is flagged in the log: it timed heap growth as well as the path.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

try:
    import resource
except ImportError:  # not a POSIX system: no kernel time or page faults to report
    resource = None

# a timed call is flagged when its kernel time exceeds this share of its wall time (and 10 ms: the
# kernel time of a short call is counted in scheduler ticks)
FAULTING_SHARE, FAULTING_MIN_S = 0.1, 0.01

__all__ = ["Pair", "Record", "measure_pair", "PeakMemory", "faulted"]


def faulted(sys_s: float, ms: float) -> bool:
    """Whether a timed call of ``ms`` milliseconds that spent ``sys_s`` seconds in the kernel
    faulted its memory in: more than :data:`FAULTING_SHARE` of its wall time, and more than
    :data:`FAULTING_MIN_S`."""
    return sys_s > max(FAULTING_SHARE * ms / 1e3, FAULTING_MIN_S)


@dataclass
class Pair:
    """A benchmark case: two callables computing the same thing, and how to compare them.

    Each callable runs one complete operation and returns a tensor (or a tuple) to compare;
    ``reset`` (optional) runs before every call, outside the timed region (e.g. reloading the
    weights an optimizer step changed).
    """

    name: str
    description: str
    reference: Callable[[], Any] | None
    fast: Callable[[], Any]
    reps: int
    warmup: int = 1
    reset: Callable[[], None] | None = None
    warmup_reference: Callable[[], Any] | None = None  # cheaper warm-up (e.g. one tile batch)
    warmup_fast: Callable[[], Any] | None = None
    compare: Callable[[Any, Any], dict[str, float]] | None = None


@dataclass
class Record:
    name: str
    description: str
    reference_ms: float | None
    fast_ms: float
    speedup: float | None
    max_abs_diff: float | None
    reference_peak_mb: float | None
    fast_peak_mb: float | None
    reps: int
    reference_samples_ms: list[float] = field(default_factory=list)
    fast_samples_ms: list[float] = field(default_factory=list)
    # per timed call, the process's kernel time and minor page faults: a sample that faulted its
    # memory in (heap growth after another path or row reshaped it) shows here, not only as time
    reference_sys_s: list[float] = field(default_factory=list)
    fast_sys_s: list[float] = field(default_factory=list)
    reference_faults: list[int] = field(default_factory=list)
    fast_faults: list[int] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)

    def faulted_samples(self, path: str) -> int:
        """How many timed samples of ``path`` (``reference`` or ``fast``) faulted their memory in
        (:func:`faulted`): their time is the allocator's as much as the path's."""
        ms = self.reference_samples_ms if path == "reference" else self.fast_samples_ms
        sys_s = self.reference_sys_s if path == "reference" else self.fast_sys_s
        return sum(faulted(k, t) for k, t in zip(sys_s, ms))


class PeakMemory:
    """Peak memory growth of a call: CUDA allocator peak, or on Linux the peak resident set.

    CPU: free heap pages are handed back first (glibc ``malloc_trim``) and the kernel's
    high-water mark is reset (``/proc/self/clear_refs``), so one path never reuses pages the
    other freed; the result is the peak RSS during the call minus the RSS before it. Where
    neither is possible the value is ``None``.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._trim = None
        try:
            self._trim = ctypes.CDLL("libc.so.6").malloc_trim
        except OSError:
            pass

    @staticmethod
    def _status(key: str) -> int | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def measure(self, fn: Callable[[], Any]) -> tuple[Any, float | None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            out = fn()
            torch.cuda.synchronize(self.device)
            return out, (torch.cuda.max_memory_allocated(self.device) - base) / 2**20
        if self._trim is not None:
            self._trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return fn(), None
        base = self._status("VmRSS")
        out = fn()
        peak = self._status("VmHWM")
        return out, None if base is None or peak is None else max(peak - base, 0) / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _max_abs_diff(a: Any, b: Any) -> float:
    """Largest difference of the outputs (the first element where a call returns a tuple,
    e.g. spikes before gradients)."""
    if isinstance(a, (tuple, list)):
        a, b = a[0], b[0]
    return (a.detach().double() - b.detach().double()).abs().max().item()


def _usage() -> tuple[float, int]:
    """The process's kernel time (s) and minor page faults so far (zeros where unavailable)."""
    if resource is None:
        return 0.0, 0
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_stime, r.ru_minflt


def _timed(fn: Callable[[], Any], reset: Callable[[], None] | None, device: torch.device
           ) -> tuple[Any, float, float, int]:
    """``fn()``'s output, wall milliseconds, and the kernel seconds and minor faults it took."""
    if reset is not None:
        reset()
    _sync(device)
    sys_before, faults_before = _usage()
    start = time.perf_counter()
    out = fn()
    _sync(device)
    ms = (time.perf_counter() - start) * 1e3
    sys_after, faults_after = _usage()
    return out, ms, sys_after - sys_before, faults_after - faults_before


def measure_pair(pair: Pair, device: torch.device, log: Callable[[str], None] = print) -> Record:
    """Warm up both paths, time them interleaved, then run each once more, untimed, for its
    peak memory."""
    memory = PeakMemory(device)
    peaks: dict[str, float | None] = {"reference": None, "fast": None}
    paths = {"fast": pair.fast} if pair.reference is None else {"reference": pair.reference, "fast": pair.fast}
    warm = {"reference": pair.warmup_reference or pair.reference, "fast": pair.warmup_fast or pair.fast}
    for path in paths:
        for _ in range(pair.warmup):
            if pair.reset is not None:
                pair.reset()
            warm[path]()
    samples: dict[str, list[float]] = {p: [] for p in paths}
    kernel: dict[str, list[float]] = {p: [] for p in paths}
    faults: dict[str, list[int]] = {p: [] for p in paths}
    outputs: dict[str, Any] = {}
    for rep in range(pair.reps):
        order = list(paths) if rep % 2 == 0 else list(reversed(paths))
        for path in order:
            outputs[path], ms, sys_s, page_faults = _timed(paths[path], pair.reset, device)
            samples[path].append(ms)
            kernel[path].append(round(sys_s, 3))
            faults[path].append(page_faults)
            log(f"  {pair.name} [{path}] rep {rep + 1}/{pair.reps}: {ms:.1f} ms "
                f"({sys_s:.2f} s in the kernel, {page_faults} page faults)")
            if faulted(sys_s, ms):
                log(f"  {pair.name} [{path}] rep {rep + 1}: {sys_s:.1f} s in the kernel (all threads) in "
                    f"{ms / 1e3:.1f} s: this sample faulted its memory in (heap growth), so it times the allocator "
                    "as much as the path")
    for path in paths:
        _, peaks[path] = memory.measure(lambda: _timed(paths[path], pair.reset, device))
    fast_ms = statistics.median(samples["fast"])
    ref_ms = statistics.median(samples["reference"]) if "reference" in samples else None
    diff, extra = None, {}
    if "reference" in outputs and outputs["fast"] is not None:  # a conv floor returns nothing to compare
        diff = _max_abs_diff(outputs["reference"], outputs["fast"])
        if pair.compare is not None:
            extra = pair.compare(outputs["reference"], outputs["fast"])
    return Record(
        name=pair.name, description=pair.description, reference_ms=ref_ms, fast_ms=fast_ms,
        speedup=None if ref_ms is None else ref_ms / fast_ms, max_abs_diff=diff,
        reference_peak_mb=peaks["reference"], fast_peak_mb=peaks["fast"], reps=pair.reps,
        reference_samples_ms=samples.get("reference", []), fast_samples_ms=samples["fast"],
        reference_sys_s=kernel.get("reference", []), fast_sys_s=kernel["fast"],
        reference_faults=faults.get("reference", []), fast_faults=faults["fast"], extra=extra,
    )


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers depend on: CPU, threads, load, library versions."""
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "device": str(device),
    }
    try:
        info["spikingjelly"] = importlib.metadata.version("spikingjelly")
    except importlib.metadata.PackageNotFoundError:
        info["spikingjelly"] = None
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        info["cpu"] = names[0] if names else None
    except OSError:
        info["cpu"] = None
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
