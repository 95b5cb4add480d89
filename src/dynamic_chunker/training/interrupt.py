"""Stopping a run cleanly on Ctrl-C (SIGINT) or a job scheduler's SIGTERM.

The first signal only sets ``signum``; the training loop checks it after every step, writes a checkpoint and returns.
A second signal of either kind acts as if no handler were installed (Ctrl-C raises KeyboardInterrupt, SIGTERM ends
the process), for when the current step takes too long.
"""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Context manager that catches SIGINT/SIGTERM in the main thread (elsewhere it does nothing)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:  # the second signal: let it act as usual
            self._restore()
            signal.raise_signal(signum)
            return
        self.signum = signum

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""
