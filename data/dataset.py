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
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from utils.atomic import write_bytes_atomic

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_CONVERSIONS = {
    "L": "grey", "I;16": "16-bit grey", "I;16B": "16-bit grey", "I": "32-bit grey",
    "LA": "grey+alpha", "RGBA": "RGBA", "P": "palette", "PA": "palette", "CMYK": "CMYK",
    "F": "32-bit float",
}
_FLOAT_MODES = ("F", "float")  # PIL's mode, and what probe_image reports for OpenCV-only floats


class DataError(ValueError):
    """A data or output folder or an image is unusable; the message names the file and the fix."""


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (png, jpg, jpeg, bmp, tif, tiff; any case) in ``folder``, sorted by name.

    Other files are skipped with one warning that names them (they are never paired).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist; check the path")
    entries = sorted(p for p in folder.iterdir() if p.is_file())
    files = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS]
    others = [p.name for p in entries if p.suffix.lower() not in IMAGE_EXTENSIONS]
    if not files:
        found = f" (it holds only {len(others)} other files, first: {others[0]})" if others else " (it is empty)"
        raise DataError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}{found}; check the path "
            "(a dataset folder holds input/ and target/ subfolders)"
        )
    if others:
        log.warning("%s: skipping %d files that are not images (%s): only %s files are read",
                    folder, len(others), ", ".join(others[:5]) + (", ..." if len(others) > 5 else ""),
                    "/".join(IMAGE_EXTENSIONS))
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            raise DataError(
                f"{stems[path.stem].name} and {path.name} in {folder} share the name {path.stem!r}; "
                "results and pairs are keyed by name: keep one of them"
            )
        stems[path.stem] = path
    return files


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


def probe_image(path: Path) -> tuple[int, int, str]:
    """``(height, width, PIL mode)`` from the file header; :class:`DataError` if unreadable.

    Files PIL cannot open (3-channel float TIFFs) are decoded by OpenCV; their mode is
    ``"float"`` for float pixels.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc.strerror}; check the path and its permissions") from exc
    if size == 0:
        raise DataError(f"image {path} is empty (0 bytes): a copy or download was probably cut short; "
                        "copy it again, or remove it and its partner")
    try:
        with Image.open(path) as im:
            width, height = im.size
            return height, width, im.mode
    except Exception as exc:  # PIL raises several types for corrupt or foreign files
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is not None:
            return arr.shape[0], arr.shape[1], "float" if arr.dtype.kind == "f" else str(arr.dtype)
        raise DataError(
            f"cannot read image {path} ({type(exc).__name__}: {exc}); the file is corrupt or not an "
            "image: re-export it, or remove it and its partner"
        ) from exc


def check_images(paths: Sequence[Path]) -> None:
    """Check that every image can be read, before anything is written (used without targets).

    Headers only, except float images, which are decoded to check for NaN/inf and range.
    """
    for path in paths:
        if probe_image(path)[2] in _FLOAT_MODES:
            read_image(path)


def check_output_dir(folder: str | os.PathLike, flag: str) -> Path:
    """Create ``folder`` if needed and make sure a file can be written in it.

    ``flag`` is the option that named the folder (for the message). Raises :class:`DataError`
    before any work is done, instead of failing at the first save.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"the output folder {folder} ({flag}) is a file, not a folder; "
                        f"pass another path with {flag}, or move the file away")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DataError(
            f"cannot write to the output folder {folder} ({flag}): {exc.strerror or exc}; pass a folder "
            f"you can write to with {flag}, or fix its permissions (or free disk space)"
        ) from exc
    return folder


def _note_conversion(kind: str, path: Path, noted: set[str]) -> None:
    if kind not in noted:
        noted.add(kind)
        log.warning("%s is %s: converted to 8-bit RGB (further %s images are converted silently)", path, kind, kind)


def _float_to_uint8(arr: np.ndarray, path: Path, noted: set[str]) -> np.ndarray:
    """Float pixels in [0, 1] -> ``uint8`` (rounded); NaN/inf or values outside [0, 1] are rejected."""
    bad = ~np.isfinite(arr)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0][:2])
        raise DataError(
            f"{path} holds {int(bad.sum())} NaN/inf values (first at row {row}, column {col}); the network "
            "cannot learn from or restore them: re-export the image without them, or remove it and its partner"
        )
    low, high = float(arr.min()), float(arr.max())
    if low < 0.0 or high > 1.0:
        raise DataError(f"{path} is a float image with values in [{low:.4g}, {high:.4g}]; float images must "
                        "hold values in [0, 1]: rescale it, or save it as an 8- or 16-bit PNG")
    _note_conversion("32-bit float", path, noted)
    return np.round(arr.astype(np.float64) * 255.0).astype(np.uint8)


def _to_rgb8(arr: np.ndarray, path: Path, noted: set[str]) -> np.ndarray:
    """OpenCV's ``IMREAD_UNCHANGED`` array -> RGB ``uint8`` ``HxWx3``."""
    if arr.dtype == np.uint16:
        _note_conversion("16-bit", path, noted)
        arr = ((arr.astype(np.float64) + 0.5) / 257.0).astype(np.uint8)  # 0..65535 -> 0..255, rounded
    elif arr.dtype.kind == "f":
        arr = _float_to_uint8(arr, path, noted)
    elif arr.dtype != np.uint8:
        raise DataError(f"{path} has {arr.dtype} pixels; only 8-bit, 16-bit and float images are supported: "
                        "re-export it as an 8-bit PNG")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        _note_conversion("grey", path, noted)
        return np.repeat(arr[..., None], 3, axis=2)
    if arr.shape[2] == 2:  # grey + alpha
        _note_conversion("grey+alpha", path, noted)
        return np.repeat(arr[..., :1], 3, axis=2)
    if arr.shape[2] == 4:
        _note_conversion("RGBA", path, noted)
        arr = arr[..., :3]  # alpha dropped, colour kept as stored
    return np.ascontiguousarray(arr[..., ::-1])  # BGR -> RGB


def _decode(path: Path) -> np.ndarray:
    """OpenCV ``IMREAD_UNCHANGED`` array (BGR order); PIL for what OpenCV cannot decode."""
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is not None:
        return arr
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))[..., ::-1]  # RGB -> BGR, as OpenCV returns
    except Exception as exc:  # PIL raises several types for corrupt or foreign files
        raise DataError(
            f"cannot decode image {path}: it is missing, truncated or corrupt; re-export it, or remove it "
            "(and its partner) from the dataset"
        ) from exc


_NOTED: set[str] = set()


def read_image(path: str | os.PathLike, noted: set[str] | None = None) -> np.ndarray:
    """Read any supported image as RGB ``uint8`` ``HxWx3``; :class:`DataError` if it cannot be decoded.

    ``noted`` collects the conversions already logged (one message per kind; default: per process).
    """
    path = Path(path)
    return _to_rgb8(_decode(path), path, _NOTED if noted is None else noted)


def write_png(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write RGB ``uint8`` ``HxWx3`` as a lossless PNG, atomically (temporary file + rename)."""
    path = Path(path)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img[..., ::-1]))  # RGB -> BGR
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    write_bytes_atomic(path, buf.tobytes())


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """RGB ``uint8`` ``HxWx3`` -> float ``[3, H, W]`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)  # HWC -> CHW


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Float ``[3, H, W]`` -> RGB ``uint8`` ``HxWx3``: clamp to [0, 1], scale by 255, round."""
    x = x.detach().float().clamp(0.0, 1.0).mul(255.0).round()
    return x.to(torch.uint8).permute(1, 2, 0).cpu().numpy()  # CHW -> HWC


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
            if mode in _FLOAT_MODES:
                read_image(path, set(_CONVERSIONS.values()))  # NaN/inf and range need the pixels
                mode = "F"
            if mode in _CONVERSIONS and _CONVERSIONS[mode] not in kinds:
                kinds[_CONVERSIONS[mode]] = path
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
        self._noted: set[str] = set(_CONVERSIONS.values())  # check_pairs already reported them

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
