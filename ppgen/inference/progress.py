"""Progress of a long computation on standard error, with an estimate of the time left.

The long estimators behind :func:`ppgen.log_likelihood` (AIS of an energy model's log Z, a diffusion
model's bound, IWAE over rows, AIS over a decoder's latents) take a plain callback
``progress(done, total)`` and call it as they go, in their own units (temperatures, steps, rows);
the models import nothing of this layer. :class:`Progress` is that callback: it prints a line no
sooner than ``delay`` seconds after it was made and at most every ``every`` seconds, so a job that
ends within ``delay`` prints nothing::

    AIS: 3,000/14,500 temperatures, 12 s, about 45 s left

The time left is the time so far scaled by the work left, ``elapsed (total - done) / done``: it
assumes every unit costs the same.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress", "ProgressCallback", "duration"]

#: What an estimator takes: ``progress(done, total)`` after each unit of work, or None for silence.
ProgressCallback = Callable[[int, int], None]


def duration(seconds: float) -> str:
    """A duration in words.

    Examples
    --------
    >>> duration(12.4), duration(150), duration(9000)
    ('12 s', '2.5 min', '2.5 h')
    """
    if seconds < 100:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 6000 else f"{seconds / 3600:.1f} h"


class Progress:
    """The callback ``progress(done, total)`` that prints ``label: done/total unit, elapsed, about T left``.

    Parameters
    ----------
    label, unit : str
        What runs ("AIS") and what it counts ("temperatures").
    delay : float
        Seconds from construction before the first line: a shorter job prints nothing.
    every : float
        Seconds at least between lines. When ``done`` reaches ``total`` after a line was printed,
        a last line gives the total time.
    clock : callable, optional
        Seconds now (default :func:`time.monotonic`).
    stream : file, optional
        Where the lines go (default: standard error, as it is when a line is printed).

    Examples
    --------
    >>> ticks = iter([0.0, 1.0, 4.0, 6.0, 20.0])  # the clock at construction and at each call
    >>> progress = Progress("AIS", "temperatures", clock=lambda: next(ticks), stream=sys.stdout)
    >>> for done in (1_000, 3_000, 4_000, 14_500):
    ...     progress(done, 14_500)
    AIS: 3,000/14,500 temperatures, 4 s, about 15 s left
    AIS: 14,500/14,500 temperatures in 20 s
    """

    def __init__(self, label: str, unit: str, *, delay: float = 3.0, every: float = 10.0,
                 clock: Callable[[], float] | None = None, stream: TextIO | None = None):
        self.label, self.unit, self.delay, self.every = label, unit, delay, every
        self.clock = clock or time.monotonic
        self.stream = stream
        self.start = self.clock()
        self.last: float | None = None  # when the last line was printed

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        elapsed = now - self.start
        if done >= total:
            if self.last is not None:
                self._print(f"{self.label}: {total:,}/{total:,} {self.unit} in {duration(elapsed)}")
        elif done > 0 and elapsed >= self.delay and (self.last is None or now - self.last >= self.every):
            left = elapsed * (total - done) / done
            self._print(f"{self.label}: {done:,}/{total:,} {self.unit}, {duration(elapsed)}, "
                        f"about {duration(left)} left")
            self.last = now

    def _print(self, line: str) -> None:
        print(line, file=self.stream or sys.stderr, flush=True)
