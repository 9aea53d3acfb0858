"""What the event loop and a generating worker thread share about one generation."""

from __future__ import annotations

import threading
from typing import NamedTuple


class GenerationCancelled(Exception):
    """The generation was asked to stop: its caller went away or the provider closed."""


class GenerationControl:
    """A stop flag checked at every token, the token counts, and room for streamed chunks.

    ``room`` bounds how far a streaming worker may run ahead of its consumer: the worker takes
    one unit per chunk it hands over and the consumer gives it back when it has taken the chunk.
    """

    def __init__(self, buffer: int = 1) -> None:
        self._cancelled = threading.Event()
        self._room = threading.Semaphore(buffer)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        # Set once the model emits an end-of-generation token; llama.cpp does not count that
        # token, nor anything after it, as completion.
        self.ended = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Ask the worker to stop; wakes it if it is waiting for room. Safe to call twice."""
        self._cancelled.set()
        self._room.release()

    def raise_if_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise GenerationCancelled

    def wait_for_room(self) -> None:
        """Block the worker until the consumer has taken a chunk, or until it is cancelled."""
        self._room.acquire()
        self.raise_if_cancelled()

    def chunk_taken(self) -> None:
        self._room.release()


class Generated(NamedTuple):
    """What one generation produced, with llama.cpp's own token counts."""

    id: str
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
