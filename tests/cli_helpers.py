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


def train_tiny_run(root: Path, write_pairs, flags: list[str], train_size=(32, 48), val_size=(24, 40),
                   names=("a", "b", "c")) -> tuple[Path, Path]:
    """Build ``root/train`` and a one-image ``root/val`` with ``write_pairs`` (the conftest
    factory), train two steps of the tiny network with validation into ``root/run`` and
    return ``(root, run)``."""
    data = write_pairs(root / "train", names=names, size=train_size)
    write_pairs(root / "val", names=("v",), size=val_size, seed=1)
    run = root / "run"
    rc = load_script("train").main(["--train_dir", str(data), "--val_dir", str(root / "val"), "--model_save_dir",
                                    str(run), "--max_steps", "2", "--crop_size", "0", *flags])
    assert rc == 0
    return root, run
