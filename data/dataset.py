"""Paired image folders (SPEC 6): ``<root>/input/*`` rainy and ``<root>/target/*`` clean.

Pairs are matched by file stem, never by sorted position. Every pair is checked when the
dataset is built (not empty, readable header, same size, large enough for the patch; float
images fully, for NaN/inf and range), so bad data fails at start-up with a message naming the
file and the fix. Files that are not images are skipped with a warning naming them. Images
are RGB ``uint8`` ``HxWx3`` in memory; grey, RGBA/LA, palette, 16-bit and float (values in
[0, 1]) files are converted, and each kind of conversion is logged once.

Random crops are a pure function of ``(seed, epoch, index)``: they do not depend on the
number of data-loader workers, and a resumed run draws the same crops as an uninterrupted one.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Dataset, Sampler

from data.io import CONVERSIONS, FLOAT_MODES, DataError, list_images, probe_image, read_image, to_tensor

log = logging.getLogger(__name__)

def pair_by_name(input_dir: str | os.PathLike, target_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """``(input, target)`` paths with the same stem (``a.jpg`` pairs with ``a.png``), sorted.

    Raises :class:`DataError` listing the files without a partner.
    """
    inputs = {p.stem: p for p in list_images(input_dir)}
    targets = {p.stem: p for p in list_images(target_dir)}
    lonely_in = sorted(set(inputs) - set(targets))
    lonely_tg = sorted(set(targets) - set(inputs))
    if lonely_in or lonely_tg:
        parts = []
        if lonely_in:
            parts.append(f"{len(lonely_in)} in {input_dir} have no target (first: {inputs[lonely_in[0]].name})")
        if lonely_tg:
            parts.append(f"{len(lonely_tg)} in {target_dir} have no input (first: {targets[lonely_tg[0]].name})")
        raise DataError(
            "unpaired images: " + "; ".join(parts) + ". Inputs and targets are paired by file name: "
            "rename the files so every rainy image has a clean one of the same name, or remove the extras"
        )
    return [(inputs[s], targets[s]) for s in sorted(inputs)]


def check_pairs(pairs: Sequence[tuple[Path, Path]], min_size: int = 0, size_flag: str = "--patch_size_train") -> None:
    """Check sizes from the headers: same size within a pair, both sides >= ``min_size``
    (``size_flag`` is the option named in the error).

    Conversions that will happen (grey, RGBA, 16-bit, ...) are logged once per kind.
    """
    kinds: dict[str, Path] = {}
    for inp, tgt in pairs:
        (hi, wi, mi), (ht, wt, mt) = probe_image(inp), probe_image(tgt)
        if (hi, wi) != (ht, wt):
            raise DataError(
                f"size mismatch: {inp} is {wi}x{hi} but its target {tgt} is {wt}x{ht} (width x height); "
                "a pair must show the same scene at the same size: fix or remove the pair"
            )
        if min(hi, wi) < min_size:
            raise DataError(
                f"{inp} is {wi}x{hi}, smaller than the {min_size}x{min_size} crop; remove it, "
                f"or lower {size_flag} to at most {min(hi, wi)}"
            )
        for path, mode in ((inp, mi), (tgt, mt)):
            if mode in FLOAT_MODES:
                read_image(path, set(CONVERSIONS.values()))  # NaN/inf and range need the pixels
                mode = "F"
            if mode in CONVERSIONS and CONVERSIONS[mode] not in kinds:
                kinds[CONVERSIONS[mode]] = path
    for kind, path in kinds.items():
        log.warning("%s images found (first: %s): they are converted to 8-bit RGB", kind, path)


class PairedImageDataset(Dataset):
    """Rainy/clean pairs from ``<root>/input`` and ``<root>/target``, matched by name.

    ``patch_size`` 0 returns full images; otherwise one random ``patch_size`` square per image,
    drawn from ``(seed, epoch, index)``. Items are addressed by an index or an
    ``(epoch, index)`` tuple (see :class:`EpochBatchSampler`). ``flips`` adds random
    horizontal/vertical flips (not in the released recipe). ``size_flag`` names the option that
    set ``patch_size`` in the error for a too small image. Returns ``dict(input, target, name)``
    with ``[3, h, w]`` floats in [0, 1].
    """

    def __init__(self, root: str | os.PathLike, patch_size: int = 0, seed: int = 0, flips: bool = False,
                 size_flag: str = "--patch_size_train"):
        root = Path(root)
        self.pairs = pair_by_name(root / "input", root / "target")
        check_pairs(self.pairs, patch_size, size_flag)
        self.patch_size, self.seed, self.flips = patch_size, seed, flips
        self._noted: set[str] = set(CONVERSIONS.values())  # check_pairs already reported them

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        inp_path, tgt_path = self.pairs[index]
        inp, tgt = read_image(inp_path, self._noted), read_image(tgt_path, self._noted)
        if inp.shape != tgt.shape:
            raise DataError(f"size mismatch after decoding: {inp_path} {inp.shape} vs {tgt_path} {tgt.shape}")
        if self.patch_size:
            rng = np.random.default_rng([self.seed, epoch, index])
            p, (h, w) = self.patch_size, inp.shape[:2]
            top, left = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
            inp, tgt = inp[top:top + p, left:left + p], tgt[top:top + p, left:left + p]
            if self.flips:
                flip_h, flip_v = rng.integers(0, 2, size=2)
                inp, tgt = (a[:, ::-1] if flip_h else a for a in (inp, tgt))
                inp, tgt = (a[::-1] if flip_v else a for a in (inp, tgt))
        return {"input": to_tensor(inp), "target": to_tensor(tgt), "name": inp_path.stem}


class EpochBatchSampler(Sampler):
    """Shuffled batches of ``(epoch, index)`` keys; the order depends on ``(seed, epoch)`` only.

    With ``world_size`` processes (DistributedDataParallel) each ``rank`` takes every
    ``world_size``-th index of the epoch's permutation, padded by wrapping around so that every
    rank runs the same number of equally sized batches; batch ``b`` of all ranks together is
    batch ``b`` of a single process with ``batch_size * world_size``. :meth:`set_epoch` picks
    the epoch and how many of its batches to skip (resuming mid-epoch).
    """

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool = True, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size} processes")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_batch = 1, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def per_rank(self) -> int:
        """Samples per process and epoch (``n`` for one process)."""
        return -(-self.n // self.world_size)

    def batches_per_epoch(self) -> int:
        m = self.per_rank()
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def __len__(self) -> int:
        return max(self.batches_per_epoch() - self.start_batch, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = np.arange(self.n)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        order = np.resize(order, self.per_rank() * self.world_size)[self.rank::self.world_size]  # wrap-pad, shard
        for b in range(self.start_batch, self.batches_per_epoch()):
            yield [(self.epoch, int(i)) for i in order[b * self.batch_size:(b + 1) * self.batch_size]]
