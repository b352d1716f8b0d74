"""Inference on whole images: the released overlapping tiles (SPEC 7) or one pass per image.

The released test cut ``crop_size`` tiles with ``overlap`` pixels of overlap (stride
``crop_size - overlap``; the last tile aligned to the border), ran each tile separately and
blended them with the centre-heavy weight ``1 / sqrt((y - c)^2 + (x - c)^2 + 1e-3)``
(``c = crop_size / 2``), normalised by the weight sum. Here the tiles go through the network
in batches of ``tile_batch``; a side shorter than ``crop_size`` gets one tile of that side's
length (the released code crashed there), so any size from 1x1 works.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["blend_weight", "tile_starts", "tiled_forward", "restore"]


def blend_weight(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Centre-heavy tile weight ``[height, width]``: ``1 / sqrt((y - h/2)^2 + (x - w/2)^2 + 1e-3)``."""
    y = torch.arange(height, dtype=torch.float64, device=device)[:, None] - height / 2
    x = torch.arange(width, dtype=torch.float64, device=device)[None, :] - width / 2
    return (1.0 / torch.sqrt(y**2 + x**2 + 1e-3)).float()


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile offsets along one side: ``0, stride, 2 stride, ...`` plus one aligned to the end."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


@torch.inference_mode()
def tiled_forward(
    net: nn.Module, img: torch.Tensor, crop_size: int = 80, overlap: int = 8, tile_batch: int = 16
) -> torch.Tensor:
    """Released tiled inference: ``[B, 3, H, W]`` -> ``[B, 3, H, W]`` (unclamped network output).

    ``tile_batch`` tiles (counting every image of the batch) go through ``net`` at once; the
    result equals one tile at a time up to float rounding. ``net`` should be in eval mode.
    """
    if crop_size <= 0 or not 0 <= overlap < crop_size:
        raise ValueError(f"need crop_size > 0 and 0 <= overlap < crop_size, got {crop_size}, {overlap}")
    B, _, H, W = img.shape
    th, tw = min(crop_size, H), min(crop_size, W)
    stride = crop_size - overlap
    boxes = [(y, x) for y in tile_starts(H, th, stride) for x in tile_starts(W, tw, stride)]
    weight = blend_weight(th, tw, img.device).to(img.dtype)  # [th, tw]
    out = torch.zeros_like(img)
    wsum = torch.zeros(H, W, dtype=img.dtype, device=img.device)
    per_chunk = max(1, tile_batch // B)
    for i in range(0, len(boxes), per_chunk):
        chunk = boxes[i:i + per_chunk]
        tiles = torch.cat([img[:, :, y:y + th, x:x + tw] for y, x in chunk])  # [len(chunk) * B, 3, th, tw]
        pred = net(tiles).view(len(chunk), B, -1, th, tw)  # [tiles, B, 3, th, tw]
        for k, (y, x) in enumerate(chunk):
            out[:, :, y:y + th, x:x + tw] += pred[k] * weight
            wsum[y:y + th, x:x + tw] += weight
    return out / wsum


@torch.inference_mode()
def restore(
    net: nn.Module, img: torch.Tensor, crop_size: int = 80, overlap: int = 8, tile_batch: int = 16
) -> torch.Tensor:
    """Derain ``[B, 3, H, W]`` in [0, 1]: released tiling, or the whole image when ``crop_size == 0``.

    Whole-image mode relies on the network padding its input to a multiple of its stride and
    cropping back. Returns the unclamped ``[B, 3, H, W]`` output.
    """
    if crop_size == 0:
        return net(img)
    return tiled_forward(net, img, crop_size, overlap, tile_batch)
