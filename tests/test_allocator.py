"""utils/allocator.py: freed CPU tensor memory is reused without page faults."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from utils.allocator import keep_freed_memory
    assert keep_freed_memory()
for _ in range(10):  # warm up: the first cycles fault their pages in either way (the heap grows)
    torch.ones(8 << 20).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    torch.ones(8 << 20).sum()  # 32 MB allocated, touched and freed, five times
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_memory_is_reused_without_page_faults():
    default, kept = _faults("default"), _faults("keep")
    assert default > 5 * 8000  # 32 MB = 8192 pages faulted in again on every cycle
    assert kept <= default / 2  # measured: 0, now and then 2 cycles while the heap still grows
