"""Logging set-up for the command-line scripts: console + plain log file, optional TensorBoard."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["setup_logging", "make_writer", "NullWriter"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, when given, append to ``log_file``; replaces handlers set by earlier calls."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_spiking_derain", False):
            root.removeHandler(handler)
            handler.close()
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        handler._spiking_derain = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


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
