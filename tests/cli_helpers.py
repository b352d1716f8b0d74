"""Helpers of the CLI tests: ``train.py`` / ``test.py`` as modules (``main(argv)`` in-process), and
the flags of the tiny network they train."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str) -> ModuleType:
    """``train`` or ``test`` loaded by path (``import test`` could find the standard library's
    package), once per process."""
    key = f"{name}_cli"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[key]


# dim 16, one or two blocks per level: a network that trains in well under a second per step
TINY_NET_FLAGS = ["--arch", "vlifnet", "--dim", "16", "--en_num_blocks", "1", "1", "2", "2",
                  "--de_num_blocks", "1", "1", "1", "1"]
