"""Files in and out: the one image reader and writer of the project, and atomic writes.

Images are RGB ``uint8`` ``HxWx3`` in memory. :func:`read_image` reads PNG, JPEG, BMP and TIFF
(OpenCV, PIL for what OpenCV cannot decode); grey, RGBA/LA, palette, 16-bit and float (values
in [0, 1]) files are converted, and each kind of conversion is logged once. :func:`write_png`
writes a lossless PNG.

Every file the project writes goes through :func:`atomic_write`: a temporary file in the
target's folder, renamed over the target. A crash, a full disk or a kill at any point leaves
either the old file or the new one, never a partial file. Files get the permissions the user's
umask gives (0644 under umask 022), as ``open()`` would. Temporary files are named
``.<name>.<random>.tmp`` (what :func:`utils.training.resume.remove_stale_temp_files` cleans up after
a kill -9).
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import tempfile
from pathlib import Path
from typing import IO, Iterator, Sequence

import cv2
import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
CONVERSIONS = {
    "L": "grey", "I;16": "16-bit grey", "I;16B": "16-bit grey", "I": "32-bit grey",
    "LA": "grey+alpha", "RGBA": "RGBA", "P": "palette", "PA": "palette", "CMYK": "CMYK",
    "F": "32-bit float",
}
FLOAT_MODES = ("F", "float")  # PIL's mode, and what probe_image reports for OpenCV-only floats


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
    """Decode every image in full, before anything is written; :class:`DataError` names the
    first one that cannot be read (a header can be intact while the data is truncated), holds
    NaN/inf or is a float image outside [0, 1]. Decoding is cheap next to inference."""
    noted = set(CONVERSIONS.values()) | {"16-bit"}  # silent here: logged when the image is used
    for path in paths:
        read_image(path, noted)


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


@contextlib.contextmanager
def output_dir(folder: str | os.PathLike, flag: str) -> Iterator[Path]:
    """``with output_dir(path, "--save_path") as folder:``: :func:`check_output_dir`, and if the
    block raises, the folders it created are removed again when they are still empty, so a run
    that fails before writing anything leaves nothing behind (files already written are kept)."""
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        yield check_output_dir(folder, flag)
    except BaseException:
        for path in created:
            with contextlib.suppress(OSError):  # not empty (or gone): keep it
                path.rmdir()
        raise


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


# ------------------------------------------------------------------ atomic writes
def _create_temp(path: Path) -> tuple[int, Path]:
    """Create ``.<name>.<random>.tmp`` beside ``path``; returns ``(descriptor, temporary path)``.

    Not :func:`tempfile.mkstemp`: it creates mode 0600 whatever the umask, so every output would
    be private. ``os.open`` with mode 0666 lets the kernel apply the umask (and default ACLs)
    as for any new file, without reading the process-wide umask; ``O_EXCL`` never opens an
    existing file or follows a planted link.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {path} after 100 tries")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", fsync: bool = False, **open_kwargs) -> Iterator[IO]:
    """``with atomic_write(path, "wb") as fh: ...``: ``path`` appears, complete, when the block ends
    without an exception; otherwise it is untouched. ``fsync`` forces the data to disk first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    with atomic_write(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    return Path(path)
