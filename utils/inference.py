"""The one inference path: validation (``train.py``), ``test.py`` and the speed harness all use it.

- :func:`restore`: one ``[B, 3, H, W]`` batch in [0, 1] -> the network's unclamped output.
- :func:`restore_stream`: a stream of RGB ``uint8`` ``HxWx3`` images (as read from files) ->
  ``(image, restored)`` uint8 pairs, in order, computed on ``device``; tiles of consecutive
  images share network calls.

Both run the released overlapping tiles (SPEC 7) or, with ``crop_size == 0``, one pass per
image (the networks pad to their stride and crop back). The released test cut ``crop_size``
tiles with ``overlap`` pixels of overlap (stride ``crop_size - overlap``; the last tile aligned
to the border), ran each tile separately and blended them with the centre-heavy weight
``1 / sqrt((y - c)^2 + (x - c)^2 + 1e-3)`` (``c = crop_size / 2``), normalised by the weight
sum. Here the tiles go through the network in batches of ``tile_batch``; a side shorter than
``crop_size`` gets one tile of that side's length (the released code crashed there), so any
size from 1x1 works.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from data.io import to_tensor, to_uint8

__all__ = ["restore", "restore_stream"]

Forward = Callable[[torch.Tensor], torch.Tensor]  # a network in eval mode, or its CUDA-graphed forward


@torch.inference_mode()
def restore(
    net: Forward, x: torch.Tensor, crop_size: int = 80, overlap: int = 8, tile_batch: int = 16
) -> torch.Tensor:
    """Derain ``x`` ``[B, 3, H, W]`` in [0, 1]: released tiling, or the whole image when ``crop_size == 0``.

    ``tile_batch`` tiles (counting every image of the batch) go through ``net`` at once; the
    result equals one tile at a time up to float rounding. ``net`` should be in eval mode.
    Returns the unclamped ``[B, 3, H, W]`` output.
    """
    if crop_size == 0:
        return net(x)
    return next(_tiled_stream(net, [x], crop_size, overlap, tile_batch))


def restore_stream(
    net: Forward, images: Iterable[np.ndarray], crop_size: int = 80, overlap: int = 8, tile_batch: int = 16,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """:func:`restore` over a stream of RGB ``uint8`` ``HxWx3`` images; yields ``(image, restored)``
    in input order, ``restored`` clamped to [0, 1] and rounded to uint8 (what a PNG holds).

    Images are read from ``images`` only as the network needs them: in tiled mode tiles of
    consecutive images share network calls, so up to ``tile_batch`` tiles' images are held ahead
    of the one yielded; that is why each result comes with its input.
    """
    waiting: deque[np.ndarray] = deque()  # read, not yet yielded

    def tensors() -> Iterator[torch.Tensor]:
        for img in images:
            waiting.append(img)
            yield to_tensor(img)[None].to(device)  # [1, 3, H, W]

    outputs = (restore(net, x, 0) for x in tensors()) if crop_size == 0 else _tiled_stream(
        net, tensors(), crop_size, overlap, tile_batch)
    for out in outputs:
        yield waiting.popleft(), to_uint8(out[0])


# ------------------------------------------------------------------ the released tiling
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


class _Job:
    """One image being derained tile by tile: its tiles, the weighted sum and the weight sum."""

    def __init__(self, img: torch.Tensor, crop_size: int, overlap: int):
        _, _, H, W = img.shape
        self.img = img
        self.th, self.tw = min(crop_size, H), min(crop_size, W)
        stride = crop_size - overlap
        self.boxes = [(y, x) for y in tile_starts(H, self.th, stride) for x in tile_starts(W, self.tw, stride)]
        self.weight = blend_weight(self.th, self.tw, img.device).to(img.dtype)  # [th, tw]
        self.out = torch.zeros_like(img)
        self.wsum = torch.zeros(H, W, dtype=img.dtype, device=img.device)
        self.left = len(self.boxes)

    def tile(self, k: int) -> torch.Tensor:
        y, x = self.boxes[k]
        return self.img[:, :, y:y + self.th, x:x + self.tw]  # [B, 3, th, tw]

    def add(self, k: int, pred: torch.Tensor) -> None:
        y, x = self.boxes[k]
        self.out[:, :, y:y + self.th, x:x + self.tw] += pred * self.weight
        self.wsum[y:y + self.th, x:x + self.tw] += self.weight
        self.left -= 1

    def result(self) -> torch.Tensor:
        return self.out / self.wsum


@torch.inference_mode()
def _tiled_stream(
    net: Forward, images: Iterable[torch.Tensor], crop_size: int, overlap: int, tile_batch: int
) -> Iterator[torch.Tensor]:
    """Released tiled inference over a stream of ``[B, 3, H, W]`` tensors, yielding each output in order.

    Tiles go through ``net`` ``tile_batch`` at a time (counting every image of a batch), and
    tiles of consecutive images of the same tile shape share network calls, so a folder of
    481x321 images runs in full batches. At most ``tile_batch`` tiles' images are held ahead
    of the one being yielded. The result equals one tile at a time up to float rounding.
    """
    if crop_size <= 0 or not 0 <= overlap < crop_size:
        raise ValueError(f"need crop_size > 0 and 0 <= overlap < crop_size, got {crop_size}, {overlap}")
    pending: list[tuple[_Job, int]] = []  # tiles waiting for a network call, all of one shape
    pending_batch = 0  # network inputs those tiles make (a tile of a B-image batch counts B)
    jobs: list[_Job] = []  # images not yet yielded, in input order

    def flush() -> None:
        nonlocal pending_batch
        if not pending:
            return
        tiles = torch.cat([job.tile(k) for job, k in pending])  # [pending_batch, 3, th, tw]
        preds = net(tiles).split([job.img.shape[0] for job, _ in pending])
        for (job, k), pred in zip(pending, preds):
            job.add(k, pred)
        pending.clear()
        pending_batch = 0

    def shape(job: _Job) -> tuple:
        return job.th, job.tw, job.img.shape[1:2], job.img.dtype, job.img.device

    for img in images:
        job = _Job(img, crop_size, overlap)
        jobs.append(job)
        if pending and shape(pending[0][0]) != shape(job):
            flush()
        for k in range(len(job.boxes)):
            pending.append((job, k))
            pending_batch += img.shape[0]
            if pending_batch >= tile_batch:
                flush()
        while jobs and jobs[0].left == 0:
            yield jobs.pop(0).result()
    flush()
    for job in jobs:
        yield job.result()
