"""Single-flight across processes: identical calls anywhere share one upstream call via Redis.

Per call key (``{NS:sf:v1:MODEL:SHA}``, one hash slot) there are two kinds of Redis keys:

- ``...:lock`` holds the leader's random token. A caller claims it with
  ``SET lock token NX GET PX heartbeat``: nil means it leads, else it learns whom to follow.
  The leader renews the claim every third of ``heartbeat`` (for at most ``lease`` seconds),
  so a leader whose process died loses it soon and a follower takes over.
- ``...:out:TOKEN`` is a Redis Stream the leader writes its outcome to: for ``complete`` one
  entry (the Response as JSON, or an error record); for ``stream`` one entry per chunk, then an
  end or error marker. Followers ``XREAD`` it from the start, each at its own pace, blocking
  with a timeout; between reads they check that the leader still holds the claim. A leader
  that gives up (nobody wants the answer any more) writes an "abandoned" marker, and its
  followers elect a new leader at once. The stream expires ``result_ttl`` after the end.

Outcomes live under the leader's token, so a later call never reads an earlier call's answer:
this is coalescing, not a cache.

Within a process the calls are first coalesced locally (``LocalCoalescer``), so N local callers
make one claim and one reader, not N. If Redis cannot be reached the call goes upstream on its
own (still coalesced within the process): coalescing saves work but is never a reason to fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

import tollway.errors as tollway_errors
from tollway.converter import converter
from tollway.errors import ConfigError, StreamInterruptedError, TollwayError
from tollway.logging import get_logger
from tollway.metrics import Metrics
from tollway.resilience.config import SingleFlightConfig
from tollway.resilience.singleflight import LocalCoalescer
from tollway.types import Response, StreamChunk, ToolCallDelta, Usage

log = get_logger("tollway.singleflight.redis")

CallComplete = Callable[[], Awaitable[Response]]
CallStream = Callable[[], AsyncIterator[StreamChunk]]

# Entry fields in an outcome stream.
CHUNK = b"c"
END = b"e"
ERROR = b"x"
RESPONSE = b"r"
ABANDONED = b"a"

# Renew the claim only while it is still ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# Write the final entry, let the outcome expire soon, and give the claim up if still ours.
# One script, so a follower that sees the claim gone always finds the outcome already there.
_FINISH = """
redis.call('XADD', KEYS[2], '*', ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
"""

# Built-in exceptions a leader's failure may be rebuilt as; anything else becomes TollwayError.
_BUILTIN_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        ValueError,
        TypeError,
        KeyError,
        RuntimeError,
        TimeoutError,
        ConnectionError,
        OSError,
        NotImplementedError,
    )
}


class RedisCoalescer:
    """Coalesces identical calls across every process that shares the Redis server."""

    backend = "redis"

    def __init__(
        self,
        client: Redis,
        metrics: Metrics,
        *,
        namespace: str = "tollway",
        lease: float = 120.0,
        heartbeat: float = 3.0,
        result_ttl: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_timings(lease, heartbeat, result_ttl)
        self._redis = client
        self._local = LocalCoalescer(metrics, count_leaders=False)
        self._leaders = metrics.counter(
            "singleflight_leaders_total", "Coalesced calls that went upstream themselves."
        )
        self._joins = metrics.counter(
            "singleflight_joins_total",
            "Calls served by an identical call already in flight (backend: where it ran).",
            ["backend"],
        )
        self._namespace = namespace
        self._lease = lease
        self._heartbeat_ms = max(1, int(heartbeat * 1000))
        self._renew_every = heartbeat / 3.0
        # A blocking read wakes this often to check that the leader still lives; below the
        # client's socket timeout (5 s by default), which would otherwise cut the read.
        self._block_ms = max(1, min(int(heartbeat * 500), 2000))
        self._result_ttl_ms = max(1, int(result_ttl * 1000))
        # While a stream is in progress its entries outlive the longest a leader may hold it.
        self._inflight_ttl_ms = int((lease + heartbeat) * 1000) + self._result_ttl_ms
        self._clock = clock
        self._renew = client.register_script(_RENEW)
        self._finish = client.register_script(_FINISH)

    @classmethod
    def from_config(cls, config: SingleFlightConfig, metrics: Metrics) -> RedisCoalescer:
        _check_timings(config.lease, config.heartbeat, config.result_ttl)
        client = Redis.from_url(config.url)
        return cls(
            client,
            metrics,
            namespace=config.namespace,
            lease=config.lease,
            heartbeat=config.heartbeat,
            result_ttl=config.result_ttl,
        )

    # -- the Coalescer protocol ------------------------------------------------------------

    async def complete(self, key: str, call: CallComplete) -> Response:
        return await self._local.complete(key, lambda: self._complete(key, call))

    def stream(self, key: str, call: CallStream) -> AsyncIterator[StreamChunk]:
        return self._local.stream(key, lambda: self._stream(key, call))

    async def aclose(self) -> None:
        # Flights still running publish "abandoned" as they unwind, so close Redis after.
        try:
            await self._local.aclose()
        finally:
            await self._redis.aclose()

    # -- keys and claims -------------------------------------------------------------------

    def _base(self, key: str) -> str:
        # Braces: a hash tag, so the claim and its outcome share a slot on Redis Cluster.
        return f"{{{self._namespace}:{key}}}"

    async def _claim(self, lock: str) -> tuple[bool, bytes]:
        """(True, my token) when this process leads, else (False, the leader's token)."""
        token = os.urandom(12).hex().encode()
        held = await self._redis.set(lock, token, nx=True, get=True, px=self._heartbeat_ms)
        if held is None:
            return True, token
        return False, held if isinstance(held, bytes) else str(held).encode()

    async def _keep_claim(self, lock: str, token: bytes) -> None:
        deadline = self._clock() + self._lease
        while self._clock() + self._renew_every < deadline:
            await asyncio.sleep(self._renew_every)
            try:
                if not await self._renew(keys=[lock], args=[token, self._heartbeat_ms]):
                    log.warning("singleflight_claim_lost", lock=lock)
                    return
            except RedisError as exc:
                log.warning("singleflight_renew_failed", lock=lock, error=str(exc))

    async def _finish_outcome(
        self, lock: str, token: bytes, out: str, field: bytes, value: bytes
    ) -> None:
        try:
            await self._finish(keys=[lock, out], args=[token, self._result_ttl_ms, field, value])
        except RedisError as exc:
            # The local callers have their outcome; remote ones take over once the claim lapses.
            log.warning("singleflight_publish_failed", lock=lock, error=str(exc))

    async def _read(self, lock: str, token: bytes, out: str, last: list[bytes]) -> list[Any]:
        """The next entries of the leader's outcome; [] once the leader is gone without one."""
        redis = self._redis
        while True:
            found = await redis.xread({out: last[0]}, count=512, block=self._block_ms)
            if not found:
                # Nothing for a while: does the leader still hold the claim?
                if await redis.get(lock) == token:
                    continue
                # It gave the claim up or lost it. Its final entry is written before the
                # claim is released, so one more read tells a finished leader from a dead one.
                found = await redis.xread({out: last[0]}, count=512)
                if not found:
                    return []
            entries: list[Any] = _entries(found)
            if entries:
                last[0] = entries[-1][0]
                return entries

    # -- complete ----------------------------------------------------------------------------

    async def _complete(self, key: str, call: CallComplete) -> Response:
        base = self._base(key)
        lock = base + ":lock"
        while True:
            try:
                leader, token = await self._claim(lock)
            except RedisError as exc:
                log.warning("singleflight_redis_unavailable", error=str(exc))
                self._leaders.inc()
                return await call()
            out = f"{base}:out:{token.decode()}"
            if leader:
                self._leaders.inc()
                return await self._lead_complete(lock, token, out, call)
            last = [b"0-0"]
            try:
                entries = await self._read(lock, token, out, last)
            except RedisError as exc:
                log.warning("singleflight_follow_failed", error=str(exc))
                entries = []
            for _, fields in entries:
                for field, value in fields.items():
                    if field == RESPONSE:
                        self._joins.inc("redis")
                        return _load_response(value)
                    if field == ERROR:
                        self._joins.inc("redis")
                        raise _load_error(value)
            # The leader died or gave up without an answer: stand for election again.

    async def _lead_complete(
        self, lock: str, token: bytes, out: str, call: CallComplete
    ) -> Response:
        keeper = asyncio.get_running_loop().create_task(self._keep_claim(lock, token))
        field, value = ABANDONED, b""
        try:
            response = await call()
            try:
                field, value = RESPONSE, _dump_response(response)
            except Exception as exc:  # followers will make the call themselves
                log.warning("singleflight_encode_failed", error=f"{type(exc).__name__}: {exc}")
            return response
        except Exception as exc:
            field, value = ERROR, _dump_error(exc)
            raise
        finally:
            await _stop(keeper)
            await self._finish_outcome(lock, token, out, field, value)

    # -- stream ------------------------------------------------------------------------------

    async def _stream(self, key: str, call: CallStream) -> AsyncIterator[StreamChunk]:
        base = self._base(key)
        lock = base + ":lock"
        delivered = 0
        while True:
            try:
                leader, token = await self._claim(lock)
            except RedisError as exc:
                log.warning("singleflight_redis_unavailable", error=str(exc))
                leader, token = False, b""
            if not token or leader:
                if delivered:
                    # Part of another leader's answer is already out; a new call could not
                    # continue it. Give the claim back at once to whoever is next.
                    if leader:
                        await self._finish_outcome(
                            lock, token, f"{base}:out:{token.decode()}", ABANDONED, b""
                        )
                    raise _interrupted()
                self._leaders.inc()
                if not token:
                    async for chunk in _closing(call()):
                        yield chunk
                    return
                out = f"{base}:out:{token.decode()}"
                async for chunk in self._lead_stream(lock, token, out, call):
                    yield chunk
                return
            out = f"{base}:out:{token.decode()}"
            last = [b"0-0"]
            gone = False
            while not gone:
                try:
                    entries = await self._read(lock, token, out, last)
                except RedisError as exc:
                    log.warning("singleflight_follow_failed", error=str(exc))
                    entries = []
                if not entries:
                    break
                for _, fields in entries:
                    for field, value in fields.items():
                        if field == CHUNK:
                            if not delivered:
                                self._joins.inc("redis")
                            delivered += 1
                            yield _load_chunk(value)
                        elif field == END:
                            if not delivered:
                                self._joins.inc("redis")
                            return
                        elif field == ERROR:
                            if not delivered:
                                self._joins.inc("redis")
                            raise _load_error(value)
                        elif field == ABANDONED:
                            gone = True
            # The leader died or gave up: take over, unless part of its answer is out.
            if delivered:
                raise _interrupted()

    async def _lead_stream(
        self, lock: str, token: bytes, out: str, call: CallStream
    ) -> AsyncIterator[StreamChunk]:
        loop = asyncio.get_running_loop()
        keeper = loop.create_task(self._keep_claim(lock, token))
        publisher = _Publisher(self._redis, out, self._inflight_ttl_ms)
        field, value = ABANDONED, b""
        upstream: AsyncIterator[StreamChunk] | None = None
        try:
            upstream = call()
            async for chunk in upstream:
                publisher.put(_dump_chunk(chunk))
                yield chunk
            field = END
        except Exception as exc:
            field, value = ERROR, _dump_error(exc)
            raise
        finally:
            try:
                aclose = getattr(upstream, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                await _stop(keeper)
                await publisher.flush()
                await self._finish_outcome(lock, token, out, field, value)


class _Publisher:
    """Writes a leader's chunks to its outcome stream in batches, off the provider's path."""

    def __init__(self, redis: Redis, out: str, ttl_ms: int) -> None:
        self._redis = redis
        self._out = out
        self._ttl_ms = ttl_ms
        self._pending: list[bytes] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._failed = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    def put(self, chunk: bytes) -> None:
        if not self._failed:
            self._pending.append(chunk)
            self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                pipe = self._redis.pipeline(transaction=False)
                for chunk in batch:
                    pipe.xadd(self._out, {CHUNK: chunk})
                pipe.pexpire(self._out, self._ttl_ms)
                try:
                    await pipe.execute()
                except RedisError as exc:
                    log.warning("singleflight_publish_failed", stream=self._out, error=str(exc))
                    self._failed = True
                    return
            if self._closing and not self._pending:
                return

    async def flush(self) -> None:
        """Write what is pending and stop."""
        self._closing = True
        self._wake.set()
        await asyncio.wait((self._task,))


def _check_timings(lease: float, heartbeat: float, result_ttl: float) -> None:
    for name, value in (("lease", lease), ("heartbeat", heartbeat), ("result_ttl", result_ttl)):
        if not value > 0:
            raise ConfigError(
                f"must be a positive number of seconds, got {value!r}; see docs/resilience.md",
                key=f"single_flight.{name}",
            )


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    # asyncio.wait, not await: it raises only if the caller itself is cancelled.
    await asyncio.wait((task,))


async def _closing(iterator: AsyncIterator[StreamChunk]) -> AsyncIterator[StreamChunk]:
    try:
        async for chunk in iterator:
            yield chunk
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def _interrupted() -> StreamInterruptedError:
    return StreamInterruptedError(
        "the process streaming this answer to several callers stopped part-way (it died, "
        "lost Redis, or every caller there left); send the call again"
    )


def _entries(found: Any) -> list[Any]:
    """(id, {field: value}) entries from XREAD's reply, in RESP2 or RESP3 shape."""
    if isinstance(found, Mapping):
        return [entry for entries in found.values() for entry in _flatten(entries)]
    return [entry for _, entries in found for entry in entries]


def _flatten(entries: Any) -> list[Any]:
    # RESP3 replies may nest the entries one level deeper.
    if entries and isinstance(entries[0], list) and entries[0] and isinstance(entries[0][0], list):
        return [e for group in entries for e in group]
    return list(entries)


# -- encoding ---------------------------------------------------------------------------------


def _dump_response(response: Response) -> bytes:
    return json.dumps(converter.unstructure(response), separators=(",", ":")).encode()


def _load_response(value: bytes) -> Response:
    response: Response = converter.structure(json.loads(value), Response)
    return response


def _dump_chunk(chunk: StreamChunk) -> bytes:
    data: dict[str, Any] = {}
    if chunk.text:
        data["t"] = chunk.text
    if chunk.tool_calls:
        data["tc"] = [[c.index, c.id, c.name, c.arguments] for c in chunk.tool_calls]
    if chunk.finish_reason is not None:
        data["f"] = chunk.finish_reason
    if chunk.usage is not None:
        u = chunk.usage
        data["u"] = [
            u.input_tokens,
            u.output_tokens,
            u.cache_read_tokens,
            u.cache_write_tokens,
            u.reasoning_tokens,
        ]
    if chunk.id is not None:
        data["i"] = chunk.id
    if chunk.model is not None:
        data["m"] = chunk.model
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _load_chunk(value: bytes) -> StreamChunk:
    data = json.loads(value)
    usage = data.get("u")
    return StreamChunk(
        text=data.get("t", ""),
        tool_calls=tuple(ToolCallDelta(*c) for c in data.get("tc", ())),
        finish_reason=data.get("f"),
        usage=Usage(*usage) if usage is not None else None,
        id=data.get("i"),
        model=data.get("m"),
    )


def _dump_error(exc: BaseException) -> bytes:
    if isinstance(exc, TollwayError):
        record = exc.to_dict()
        if isinstance(exc, ConfigError):
            record["file"], record["key"] = exc.file, exc.key
    else:
        record = {
            "type": type(exc).__name__,
            "message": str(exc),
            "retryable": False,
            "foreign": True,
        }
    return json.dumps(record, default=str).encode()


def _load_error(value: bytes) -> BaseException:
    """The same tollway error class, with the same fields, as the leader's."""
    record = json.loads(value)
    name = str(record.get("type", "TollwayError"))
    message = str(record.get("message", ""))
    if record.get("foreign"):
        builtin = _BUILTIN_ERRORS.get(name)
        if builtin is not None:
            return builtin(message)
        return TollwayError(f"{name}: {message}", retryable=bool(record.get("retryable")))
    cls = getattr(tollway_errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, TollwayError)):
        cls = TollwayError
    exc = cls.__new__(cls)
    retry_after = record.get("retry_after")
    TollwayError.__init__(
        exc,
        message,
        provider=record.get("provider"),
        status=record.get("status"),
        provider_message=record.get("provider_message"),
        request_id=record.get("request_id"),
        code=record.get("code"),
        retry_after=float(retry_after) if retry_after is not None else None,
        retryable=record.get("retryable"),
    )
    if isinstance(exc, ConfigError):
        exc.file, exc.key = record.get("file"), record.get("key")
    return exc
