"""Shared fixtures: tiny network configurations (dim 16) for fast CPU tests."""
from __future__ import annotations

import pytest
import torch

TINY = dict(dim=16, en_num_blocks=(1, 1, 2, 2), de_num_blocks=(1, 1, 1, 1))


@pytest.fixture
def tiny_config() -> dict:
    return dict(TINY)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors on a shared CPU: one thread avoids OpenMP oversubscription (20x faster)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _pipeline_write_pairs(root, names=("a", "b", "c"), size=(32, 48), seed=0):
    """Write ``root/input/<name>.png`` (rainy) and ``root/target/<name>.png`` (clean), RGB uint8
    of ``size`` = (H, W): smooth gradients plus bright vertical streaks in the input."""
    import cv2
    import numpy as np
    from pathlib import Path

    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "input").mkdir(parents=True, exist_ok=True)
    (root / "target").mkdir(parents=True, exist_ok=True)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    for name in names:
        base = rng.uniform(40, 200, size=3)
        clean = np.clip(base + 30 * np.sin(yy[..., None] / 5 + xx[..., None] / 7 + rng.uniform(0, 6, 3)), 0, 255)
        rain = np.zeros((h, w))
        rain[:, rng.choice(w, size=max(1, w // 8), replace=False)] = 60.0
        rainy = np.clip(clean + rain[..., None], 0, 255)
        cv2.imwrite(str(root / "input" / f"{name}.png"), rainy.astype(np.uint8)[..., ::-1])
        cv2.imwrite(str(root / "target" / f"{name}.png"), clean.astype(np.uint8)[..., ::-1])
    return root


@pytest.fixture(scope="session")
def pipeline_write_pairs():
    """Factory: ``pipeline_write_pairs(root, names=..., size=(H, W), seed=0) -> root``."""
    return _pipeline_write_pairs
