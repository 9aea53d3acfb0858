"""The write-behind writer: the request path hands records over and never waits on disk.

``submit`` appends to an in-memory buffer (a deque bounded by ``max_pending``) and returns;
a background task writes batches of up to ``batch_size`` whenever a batch is full or
``flush_interval`` seconds have passed. While the store fails, records stay buffered and
the write is retried with exponential backoff (``retry_initial`` doubling to ``retry_max``);
the writer logs that it is buffering and how many records are pending. When the buffer is
full the oldest record is dropped, with an error log and ``tollway_usage_dropped_total``:
records are never lost silently.

Metrics: ``tollway_usage_records_written_total``, ``tollway_usage_write_errors_total``,
``tollway_usage_dropped_total`` and the gauge ``tollway_usage_pending``.

``aclose`` writes what is pending (retrying for up to ``close_timeout`` seconds). With
``flush_on_sigterm`` the writer also flushes on SIGTERM: it installs a handler through the
event loop only when running in the main thread and nobody has installed one through the loop;
after the flush it restores the previous handler and hands the signal on to it (so the default
action, ending the process, still happens).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import structlog

from tollway.metrics import Metrics
from tollway.usage.records import UsageRecord
from tollway.usage.store import UsageStore

log = structlog.get_logger("tollway.usage")

# Errors while buffering are logged at most this often; the rest are counted.
_LOG_EVERY = 30.0


class PendingRecord(Protocol):
    """Something that becomes a UsageRecord off the request path."""

    def build(self) -> UsageRecord: ...


Entry = UsageRecord | PendingRecord


class UsageWriter:
    """Buffers records and writes them to a store in batches, in the background."""

    def __init__(
        self,
        store: UsageStore,
        *,
        batch_size: int = 1000,
        flush_interval: float = 1.0,
        max_pending: int = 100_000,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        flush_on_sigterm: bool = False,
        close_timeout: float = 10.0,
        metrics: Metrics | None = None,
        store_name: str | None = None,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_pending = max(max_pending, 1)
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.flush_on_sigterm = flush_on_sigterm
        self.close_timeout = close_timeout
        self.store_name = store_name or type(store).__name__
        metrics = metrics if metrics is not None else Metrics()
        self._written = metrics.counter(
            "usage_records_written_total", "Usage records written to the usage store."
        )
        self._errors = metrics.counter(
            "usage_write_errors_total", "Failed attempts to write a batch to the usage store."
        )
        self._dropped = metrics.counter(
            "usage_dropped_total",
            "Usage records dropped because the buffer was full while the store was failing.",
        )
        self._pending_gauge = metrics.gauge(
            "usage_pending", "Usage records waiting to be written (buffered in memory)."
        )
        self._buffer: deque[Entry] = deque()
        # Records taken out of the buffer for the write under way; put back if it fails.
        self._inflight = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self._closed = False
        self._failing_since: float | None = None
        self._delay = 0.0
        self._quiet_until = 0.0
        self._sigterm_previous: Any = None
        self._sigterm_loop: asyncio.AbstractEventLoop | None = None

    # -- the request path ------------------------------------------------------------------

    def submit(self, entry: Entry) -> None:
        """Hand a record over; returns at once. Starts the background task on first use."""
        buffer = self._buffer
        if len(buffer) + self._inflight >= self.max_pending:
            self._drop_oldest()
            if not buffer:  # everything is in the write under way: the newest goes
                return
        buffer.append(entry)
        self._pending_gauge.set(len(buffer) + self._inflight)
        if self._task is None:
            self._start()
        elif len(buffer) >= self.batch_size and self._wake is not None:
            self._wake.set()

    def _stopping(self) -> bool:
        return self._closed

    @property
    def pending(self) -> int:
        return len(self._buffer) + self._inflight

    def _drop_oldest(self) -> None:
        if self._buffer:
            self._buffer.popleft()
        self._dropped.inc()
        now = time.monotonic()
        if now >= self._quiet_until:
            self._quiet_until = now + _LOG_EVERY
            log.error(
                "usage_records_dropped",
                store=self.store_name,
                pending=self.pending,
                dropped_total=int(self._dropped.get()),
                reason="the buffer is full (max_pending) and the usage store is not taking writes",
                fix="bring the usage store back, or raise [usage] max_pending",
            )

    def _start(self) -> None:
        if self._closed:
            raise RuntimeError("this usage writer is closed")
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task = loop.create_task(self._loop(), name="tollway-usage-writer")
        if self.flush_on_sigterm:
            self._install_sigterm(loop)

    # -- the background task ---------------------------------------------------------------

    async def _loop(self) -> None:
        wake = self._wake
        assert wake is not None
        while not self._stopping():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval):
                    await wake.wait()
            wake.clear()
            if self._stopping():
                return
            delay = await self._drain()
            if delay:
                # The store failed: wait, unless closing wakes us up for a last try.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        while not self._stopping():
                            await wake.wait()
                            wake.clear()

    def _take(self) -> list[UsageRecord]:
        buffer = self._buffer
        count = min(self.batch_size, len(buffer))
        records: list[UsageRecord] = []
        for _ in range(count):
            entry = buffer.popleft()
            if isinstance(entry, UsageRecord):
                records.append(entry)
                continue
            try:
                records.append(entry.build())
            except Exception as exc:  # a bug building one record must not stop the rest
                self._errors.inc()
                log.error("usage_record_invalid", error=f"{type(exc).__name__}: {exc}")
        self._inflight = len(records)
        return records

    async def _drain(self) -> float:
        """Write everything buffered; the backoff delay when the store fails, else 0."""
        lock = self._lock
        assert lock is not None
        async with lock:
            while self._buffer:
                batch = self._take()
                if not batch:
                    continue
                try:
                    await self.store.write(batch)
                except Exception as exc:
                    self._inflight = 0
                    self._put_back(batch)
                    return self._failed(exc)
                self._inflight = 0
                self._written.inc(amount=float(len(batch)))
                self._pending_gauge.set(self.pending)
                if self._failing_since is not None:
                    log.warning(
                        "usage_store_recovered",
                        store=self.store_name,
                        down_seconds=round(time.monotonic() - self._failing_since, 1),
                        pending=self.pending,
                    )
                    self._failing_since = None
                    self._delay = 0.0
        return 0.0

    def _put_back(self, batch: Sequence[UsageRecord]) -> None:
        room = self.max_pending - len(self._buffer)
        if room < len(batch):
            lost = len(batch) - max(room, 0)
            # The oldest of the batch go first: the newest records are the most useful.
            batch = batch[lost:]
            self._dropped.inc(amount=float(lost))
            log.error(
                "usage_records_dropped",
                store=self.store_name,
                dropped=lost,
                reason="the buffer is full (max_pending) and the usage store is not taking writes",
                fix="bring the usage store back, or raise [usage] max_pending",
            )
        self._buffer.extendleft(reversed(batch))
        self._pending_gauge.set(self.pending)

    def _failed(self, exc: Exception) -> float:
        self._errors.inc()
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            self._delay = self.retry_initial
        else:
            self._delay = min(self._delay * 2, self.retry_max)
        log.warning(
            "usage_store_failing",
            store=self.store_name,
            error=f"{type(exc).__name__}: {exc}",
            effect="buffering usage records in memory",
            pending=self.pending,
            max_pending=self.max_pending,
            retry_in_seconds=self._delay,
            fix="check that the usage store is reachable and writable",
        )
        return self._delay

    # -- flushing and closing --------------------------------------------------------------

    async def flush(self) -> None:
        """Write everything buffered now. Raises the store's error when it fails (the records
        stay buffered)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            while self._buffer:
                batch = self._take()
                if not batch:
                    continue
                try:
                    await self.store.write(batch)
                except Exception:
                    self._inflight = 0
                    self._put_back(batch)
                    self._errors.inc()
                    raise
                self._inflight = 0
                self._written.inc(amount=float(len(batch)))
        self._pending_gauge.set(self.pending)

    async def aclose(self) -> None:
        """Stop the background task and write what is pending. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._remove_sigterm()
        if self._task is not None:
            assert self._wake is not None
            self._wake.set()
            await self._task
        deadline = time.monotonic() + self.close_timeout
        delay = self.retry_initial
        while self._buffer:
            try:
                await self.flush()
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    lost = self.pending
                    self._dropped.inc(amount=float(lost))
                    log.error(
                        "usage_records_lost_at_close",
                        store=self.store_name,
                        records=lost,
                        error=f"{type(exc).__name__}: {exc}",
                        reason=f"the usage store failed for {self.close_timeout}s at shutdown",
                    )
                    self._buffer.clear()
                    self._pending_gauge.set(0)
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)

    # -- SIGTERM ---------------------------------------------------------------------------

    def _install_sigterm(self, loop: asyncio.AbstractEventLoop) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        sigterm = getattr(signal, "SIGTERM", None)
        if sigterm is None:
            return
        previous = signal.getsignal(sigterm)
        if previous is signal.SIG_IGN or getattr(previous, "__name__", "") == "_sighandler_noop":
            return  # ignored on purpose, or the loop already has a handler: leave it be
        try:
            loop.add_signal_handler(sigterm, self._on_sigterm)
        except (NotImplementedError, RuntimeError, ValueError):
            return
        self._sigterm_previous = previous
        self._sigterm_loop = loop

    def _remove_sigterm(self) -> Callable[..., Any] | int | None:
        loop, previous = self._sigterm_loop, self._sigterm_previous
        if loop is None:
            return None
        self._sigterm_loop = None
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(signal.SIGTERM)
        with contextlib.suppress(Exception):
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        result: Callable[..., Any] | int | None = previous
        return result

    def _on_sigterm(self) -> None:
        asyncio.get_running_loop().create_task(self._flush_then_pass_on())

    async def _flush_then_pass_on(self) -> None:
        log.warning("usage_flush_on_sigterm", pending=self.pending)
        try:
            async with asyncio.timeout(self.close_timeout):
                await self.flush()
        except Exception as exc:
            log.error("usage_flush_on_sigterm_failed", error=f"{type(exc).__name__}: {exc}")
        previous = self._remove_sigterm()
        if callable(previous):
            previous(signal.SIGTERM, None)
        elif previous in (signal.SIG_DFL, None):
            signal.raise_signal(signal.SIGTERM)
