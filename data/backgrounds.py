"""Synthetic clean backgrounds: the dead-leaves model, with colours taken from photos.

A dead-leaves image stacks opaque shapes of random position, orientation and size, sizes drawn
from a power law (density ``r^-3``), so that it has the scale invariance and the edge and
occlusion statistics of natural photographs (Lee, Mumford and Huang, IJCV 2001). It gives the
demo set backgrounds of every colour, contrast and brightness, beyond the few photos that
scikit-image ships, so that a network trained on them cannot take a bright or colourful scene
for haze.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["dead_leaves"]


def _power_law_radii(rng: np.random.Generator, n: int, r_min: float, r_max: float) -> np.ndarray:
    """``n`` radii with density proportional to ``r^-3`` on ``[r_min, r_max]`` (inverse CDF)."""
    u = rng.random(n)
    return 1.0 / np.sqrt(u / r_max**2 + (1.0 - u) / r_min**2)


def dead_leaves(rng: np.random.Generator, height: int, width: int, palette: np.ndarray,
                r_min: float = 2.0, r_max: float | None = None, leaves: int = 4000,
                shading: float = 0.15, blur: float = 0.8) -> np.ndarray:
    """An ``height x width x 3`` uint8 dead-leaves image.

    ``palette``: ``N x 3`` uint8 RGB colours (e.g. pixels of photos) that the leaves take at
    random; each leaf is an ellipse (axis ratio 1-3, random angle), radii from ``r_min`` to
    ``r_max`` (default a third of the longer side), with a linear shading across it whose slope
    is normal with standard deviation ``shading`` x 255 grey levels per radius. ``leaves``
    shapes are drawn, later ones occluding earlier ones, over a canvas of one palette colour; a
    Gaussian blur of ``blur`` pixels softens the edges as a lens would. Deterministic in ``rng``.
    """
    palette = np.asarray(palette, dtype=np.float32).reshape(-1, 3)
    if palette.size == 0:
        raise ValueError("dead_leaves needs a non-empty palette of RGB colours")
    r_max = r_max if r_max is not None else max(height, width) / 3
    canvas = np.empty((height, width, 3), np.float32)
    canvas[:] = palette[rng.integers(len(palette))]
    radii = _power_law_radii(rng, leaves, r_min, r_max)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    mask = np.zeros((height, width), np.uint8)
    for r in radii:
        cy, cx = rng.uniform(-r, height + r), rng.uniform(-r, width + r)
        axes = (max(1, round(r)), max(1, round(r / rng.uniform(1.0, 3.0))))
        angle = rng.uniform(0, 180)
        colour = palette[rng.integers(len(palette))]
        slope = rng.normal(0, shading, size=2) * 255 / max(r, 1.0)  # grey levels per pixel
        y0, y1 = max(0, int(cy - r) - 1), min(height, int(cy + r) + 2)
        x0, x1 = max(0, int(cx - r) - 1), min(width, int(cx + r) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        mask[y0:y1, x0:x1] = 0
        cv2.ellipse(mask, (round(cx), round(cy)), axes, angle, 0, 360, 1, thickness=-1)
        inside = mask[y0:y1, x0:x1].astype(bool)
        if not inside.any():
            continue
        shade = (ys[y0:y1, x0:x1] - cy) * slope[0] + (xs[y0:y1, x0:x1] - cx) * slope[1]
        canvas[y0:y1, x0:x1][inside] = colour + shade[inside, None]
    if blur > 0:
        canvas = cv2.GaussianBlur(canvas, (0, 0), blur)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
