"""Interrupts that land where training can stop cleanly.

:func:`ppgen.fit` installs handlers for SIGINT (Ctrl-C) and SIGTERM (what cluster schedulers
send before they kill a job). The first signal is only recorded; the trainer calls
:meth:`DeferredSignals.check` at its safe points (between steps, between validation batches,
after an epoch's checkpoint), which raises ``KeyboardInterrupt`` there, so the checkpoint written
on the way out is consistent. A second signal raises at once.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["DeferredSignals"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DeferredSignals:
    """Context manager: defer SIGINT and SIGTERM to :meth:`check` (main thread only; elsewhere a no-op)."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "DeferredSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # asked twice: stop now
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} received twice")
        self.received = signum

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if a signal arrived since the last check."""
        if self.received is not None:
            name = signal.Signals(self.received).name
            self.received = None
            raise KeyboardInterrupt(f"{name} received")
