"""Logging set-up for the command-line scripts: console + plain log file, optional TensorBoard,
and the per-step CSV of a training run.

A run that fails before it starts must leave no file behind, so ``setup_logging(hold=True)``
keeps the records in memory until :func:`start_log_file` opens the log file and writes them first.
"""
from __future__ import annotations

import csv
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from data.io import atomic_write

__all__ = ["setup_logging", "start_log_file", "make_writer", "NullWriter", "open_step_log"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _HeldRecords(logging.Handler):
    """Keeps every record until the log file is opened."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _own_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if getattr(h, "_spiking_derain", False)]


def _add(handler: logging.Handler) -> None:
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    handler._spiking_derain = True  # type: ignore[attr-defined]
    logging.getLogger().addHandler(handler)


class _NoTritonNotice(logging.Filter):
    """spikingjelly's LIF registers its operator with ``torch.library.triton_op`` on first use;
    a torch without Triton logs "Triton not available" twice. The CPU operator runs all the same."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Triton not available")


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO, hold: bool = False) -> None:
    """Log to stderr and, when given, append to ``log_file``; replaces handlers set by earlier calls.

    ``hold``: keep the records in memory for :func:`start_log_file` (records held by an earlier
    call that never opened its file are dropped).
    """
    root = logging.getLogger()
    triton_log = logging.getLogger("torch._library.triton")
    if not any(isinstance(f, _NoTritonNotice) for f in triton_log.filters):
        triton_log.addFilter(_NoTritonNotice())
    for handler in _own_handlers():
        root.removeHandler(handler)
        handler.close()
    _add(logging.StreamHandler())
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        _add(logging.FileHandler(log_file, encoding="utf-8"))
    elif hold:
        _add(_HeldRecords())
    root.setLevel(level)


def start_log_file(log_file: str | os.PathLike) -> None:
    """Append the log to ``log_file`` from now on, beginning with the records held since
    ``setup_logging(hold=True)``."""
    file_handler = logging.FileHandler(log_file, encoding="utf-8")
    _add(file_handler)
    for held in [h for h in _own_handlers() if isinstance(h, _HeldRecords)]:
        logging.getLogger().removeHandler(held)
        for record in held.records:
            if record.levelno >= file_handler.level:
                file_handler.handle(record)
        held.close()


class NullWriter:
    """Stands in for a TensorBoard writer when logging to TensorBoard is off."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        return None

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


def make_writer(log_dir: str | os.PathLike, enabled: bool = True) -> Any:
    """A tensorboardX ``SummaryWriter`` on ``log_dir``, or a :class:`NullWriter`."""
    if not enabled:
        return NullWriter()
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        logging.getLogger(__name__).warning("tensorboardX is not installed: TensorBoard logging is off")
        return NullWriter()
    return SummaryWriter(str(log_dir))


class _NoLog:
    def writerow(self, row: Sequence[Any]) -> None:
        return None


@contextmanager
def open_step_log(path: str | os.PathLike, start_step: int, enabled: bool = True) -> Iterator[Any]:
    """A ``csv.writer`` appending to ``train_steps.csv`` (a no-op writer where not ``enabled``).

    Rows after ``start_step`` (steps logged after the checkpoint being resumed, by a run that
    then crashed, or by an older run in the same folder) are dropped first, so the file always
    lists each step once.
    """
    if not enabled:
        yield _NoLog()
        return
    path = Path(path)
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        keep = [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= start_step]
        if len(keep) != len(rows) - 1:
            logging.getLogger(__name__).info("%s: dropping %d rows logged after step %d", path,
                                             len(rows) - 1 - len(keep), start_step)
            with atomic_write(path, "w", newline="", encoding="utf-8") as fh:
                csv.writer(fh).writerows(rows[:1] + keep)
    with open(path, "a", newline="", encoding="utf-8", buffering=1) as fh:
        writer = csv.writer(fh)
        if fh.tell() == 0:
            writer.writerow(["step", "epoch", "loss", "lr"])
        yield writer


def record_validation(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Add ``row`` (with an ``epoch`` key) to the validation history ``val_metrics.csv``,
    atomically. Rows of that epoch or later (left by a run that was resumed from an earlier
    checkpoint) are dropped first, so the file is one learning curve, one row per validation."""
    path = Path(path)
    old: list[dict[str, str]] = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as fh:
            old = [r for r in csv.DictReader(fh) if r.get("epoch", "").isdigit() and int(r["epoch"]) < row["epoch"]]
    with atomic_write(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        writer.writeheader()
        writer.writerows([{k: r.get(k, "") for k in row} for r in old] + [row])
