"""Progress of a long report run: which step it is on, and how far a record scan has got.

The analytics code reports to a :class:`Progress`; it never writes to the terminal itself.
:class:`NullProgress` is the default (no output), :class:`StderrProgress` draws one line on
standard error, redrawn in place, at most every ``interval`` seconds and on each new step.
``tollway report`` uses it when standard error is a terminal, or when ``--progress`` is given.
"""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO


class Progress(Protocol):
    def step(self, label: str, total: int | None = None) -> None:
        """A new step begins; ``total`` is how many items it will count, when known."""

    def advance(self, count: int = 1) -> None:
        """``count`` more items of the current step are done."""

    def finish(self) -> None:
        """The run is over (also after a failure): leave the terminal clean."""


class NullProgress:
    """Says nothing: for library use and tests."""

    def step(self, label: str, total: int | None = None) -> None:
        return None

    def advance(self, count: int = 1) -> None:
        return None

    def finish(self) -> None:
        return None


class StderrProgress:
    """One status line on a stream (standard error by default), redrawn in place."""

    def __init__(self, stream: TextIO | None = None, *, interval: float = 0.2) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._interval = interval
        self._label = ""
        self._total: int | None = None
        self._done = 0
        self._last_draw = 0.0
        self._width = 0
        self._drawn = False

    def step(self, label: str, total: int | None = None) -> None:
        self._label = label
        self._total = total
        self._done = 0
        self._draw()

    def advance(self, count: int = 1) -> None:
        self._done += count
        now = time.monotonic()
        if now - self._last_draw >= self._interval or self._done == self._total:
            self._draw()

    def finish(self) -> None:
        if self._drawn:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._drawn = False

    def line(self) -> str:
        """The text of the status line as it stands."""
        if self._total:
            percent = min(100, self._done * 100 // self._total)
            return f"{self._label}: {self._done:,}/{self._total:,} ({percent}%)"
        if self._done:
            return f"{self._label}: {self._done:,}"
        return f"{self._label}..."

    def _draw(self) -> None:
        text = self.line()
        padding = " " * max(0, self._width - len(text))
        self._stream.write("\r" + text + padding)
        self._stream.flush()
        self._width = len(text)
        self._last_draw = time.monotonic()
        self._drawn = True
