"""Pictures to look at: labelled side-by-side panels (rainy | derained | clean) and a contact
sheet of several of them, as ``uint8`` RGB arrays (written by test.py ``--compare``).

OpenCV draws the labels (its built-in Hershey font: no font file, no extra dependency).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

LABEL_HEIGHT = 18  # pixels of the white band above each panel
GAP = 4  # pixels between panels and between sheet rows
FONT = cv2.FONT_HERSHEY_SIMPLEX


def scaled(img: np.ndarray, side: int) -> np.ndarray:
    """``img`` scaled so that its longer side is ``side`` pixels (area when shrinking, cubic
    when enlarging)."""
    scale = side / max(img.shape[:2])
    if scale == 1:
        return img
    size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))  # cv2: (W, H)
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


def labelled(img: np.ndarray, label: str) -> np.ndarray:
    """``img`` under a white band holding ``label`` in black, shrunk until it fits the width."""
    band = np.full((LABEL_HEIGHT, img.shape[1], 3), 255, np.uint8)
    scale = 0.42
    while scale > 0.2 and cv2.getTextSize(label, FONT, scale, 1)[0][0] > img.shape[1] - 4:
        scale -= 0.02
    cv2.putText(band, label, (2, LABEL_HEIGHT - 5), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([band, img], axis=0)


def side_by_side(panels: Sequence[tuple[np.ndarray, str]], side: int | None = None) -> np.ndarray:
    """Equal-size RGB ``uint8`` images, each under its label, left to right on white; ``side``
    scales every panel to that longer side (default: as they are)."""
    shapes = {img.shape for img, _ in panels}
    if len(shapes) != 1:
        raise ValueError(f"side-by-side panels must share one size, got {sorted(shapes)}")
    tiles = [labelled(img if side is None else scaled(img, side), label) for img, label in panels]
    gap = np.full((tiles[0].shape[0], GAP, 3), 255, np.uint8)
    out = [tiles[0]]
    for tile in tiles[1:]:
        out += [gap, tile]
    return np.concatenate(out, axis=1)


def contact_sheet(rows: Sequence[np.ndarray], width: int | None = None) -> np.ndarray:
    """Rows (e.g. :func:`side_by_side` results) stacked top to bottom, each scaled to ``width``
    (default: the narrowest row's), on white."""
    if not rows:
        raise ValueError("a contact sheet needs at least one row")
    width = width or min(r.shape[1] for r in rows)
    scaled = [r if r.shape[1] == width else cv2.resize(r, (width, max(1, round(r.shape[0] * width / r.shape[1]))),
                                                      interpolation=cv2.INTER_AREA) for r in rows]
    gap = np.full((GAP, width, 3), 255, np.uint8)
    out = [scaled[0]]
    for row in scaled[1:]:
        out += [gap, row]
    return np.concatenate(out, axis=0)
