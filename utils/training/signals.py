"""Stop a training run cleanly on SIGTERM/SIGINT (cluster pre-emption, Ctrl-C).

The handler only records the signal; the training loop looks at :attr:`GracefulStop.requested`
at every step boundary, saves ``last.pth`` and returns :attr:`GracefulStop.exit_code`
(``128 + signal number``: 143 for SIGTERM, 130 for SIGINT, the shell's convention for "ended by
a signal"), so a job script can tell an interrupted, resumable run from a finished one (0) and
from bad input (2). A second signal stops at once (``KeyboardInterrupt``); checkpoints are
written atomically, so even that never leaves a partial file.
"""
from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["GracefulStop", "ignore_stop_signals", "signal_exit_code", "STOP_SIGNALS"]

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def signal_exit_code(signum: int) -> int:
    """The shell's exit status of a process ended by signal ``signum``: ``128 + signum``."""
    return 128 + signum


class GracefulStop:
    """Context manager that turns SIGTERM/SIGINT into a request to stop at the next step boundary.

    Outside the main thread (where Python cannot install handlers) it does nothing and
    :attr:`requested` stays False. The previous handlers are restored on exit.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.signals = signals
        self.signum = 0
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum != 0

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "none"

    @property
    def exit_code(self) -> int:
        """``128 + signum`` once a signal arrived, else 0."""
        return signal_exit_code(self.signum) if self.signum else 0

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping at once")
        self.signum = signum
        log.warning("received %s: saving a checkpoint at the end of this step, then stopping "
                    "(send it again to stop at once)", self.name)

    def __enter__(self) -> "GracefulStop":
        self.signum = 0
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """``worker_init_fn`` for data-loader workers: leave SIGTERM/SIGINT to the main process.

    A scheduler or Ctrl-C signals the whole process group; a worker killed by it would make
    the main process fail with "DataLoader worker exited unexpectedly" before it could save.
    The main process shuts its workers down itself when it stops.
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
