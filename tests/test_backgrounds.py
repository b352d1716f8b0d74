"""The dead-leaves backgrounds of the demo set: determinism, colours, and the r^-3 size law."""
from __future__ import annotations

import numpy as np
import pytest

from data.backgrounds import _power_law_radii, dead_leaves

PALETTE = np.array([[200, 30, 30], [20, 160, 40], [30, 40, 220], [240, 240, 240], [10, 10, 10]], np.uint8)


def test_dead_leaves_is_deterministic_and_uses_its_palette():
    a = dead_leaves(np.random.default_rng(3), 64, 80, PALETTE)
    b = dead_leaves(np.random.default_rng(3), 64, 80, PALETTE)
    c = dead_leaves(np.random.default_rng(4), 64, 80, PALETTE)
    assert a.shape == (64, 80, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # without blur or shading every pixel is one of the palette's colours, and most colours show
    flat = dead_leaves(np.random.default_rng(3), 64, 80, PALETTE, blur=0, shading=0)
    colours = {tuple(v) for v in flat.reshape(-1, 3)}
    assert colours <= {tuple(v) for v in PALETTE} and len(colours) >= 4
    # leaves of many sizes: edges everywhere, yet large uniform regions too
    edges = (np.abs(np.diff(flat.astype(int), axis=1)).sum(-1) > 0).mean()
    assert 0.05 < edges < 0.6


def test_leaf_sizes_follow_the_inverse_cube_law():
    r = _power_law_radii(np.random.default_rng(0), 200_000, 2.0, 40.0)
    assert r.min() >= 2.0 and r.max() <= 40.0
    # P(r < 2 r_min) = (1 - 1/4) / (1 - (r_min / r_max)^2) for density r^-3
    expected = 0.75 / (1 - (2.0 / 40.0) ** 2)
    assert abs((r < 4.0).mean() - expected) < 0.005


def test_dead_leaves_rejects_an_empty_palette():
    with pytest.raises(ValueError, match="palette"):
        dead_leaves(np.random.default_rng(0), 8, 8, np.zeros((0, 3), np.uint8))
