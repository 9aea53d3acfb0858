"""Rate limits shared by every process through Redis: GCRA in one Lua script.

Each bucket is one key holding its theoretical arrival time (TAT) in microseconds of Redis
server time, so the processes' own clocks never matter. One script call checks every bucket a
call needs and takes from all of them or from none, atomically (Redis runs a script alone),
and returns how long to wait. Keys expire once their bucket has refilled.

GCRA is the token bucket seen from the other side: with ``interval = 1 / rate`` and
``tau = capacity * interval``, a bucket is full when ``TAT <= now``, holds
``capacity - (TAT - now) / interval`` units otherwise, and ``amount`` units may be taken when
``max(TAT, now) + amount * interval - tau <= now``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tollway.errors import TollwayError

if TYPE_CHECKING:
    from tollway.metrics import Metrics
    from tollway.resilience.config import RateLimitConfig
    from tollway.resilience.ratelimit import Demand

# KEYS: the buckets. ARGV[1]: "acquire" (all or none) or "adjust" (charge > 0, refund < 0);
# ARGV[2]: now in microseconds, or "" for Redis's own TIME; then per key: interval (us per
# unit), tau (us), amount. Returns {0, 0} when taken, else {wait in us, 1-based key index}.
GCRA_SCRIPT = """
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local acquire = ARGV[1] == 'acquire'
local tats = {}
local worst, worst_i = 0, 0
for i = 1, #KEYS do
  local base = 3 * i
  local interval = tonumber(ARGV[base])
  local tau = tonumber(ARGV[base + 1])
  local amount = tonumber(ARGV[base + 2])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  local new_tat = tat + amount * interval
  if acquire then
    local wait = new_tat - tau - now
    if wait > 1 and wait > worst then
      worst = wait
      worst_i = i
    end
  elseif new_tat < now then
    new_tat = now
  end
  tats[i] = new_tat
end
if worst_i > 0 then
  return {math.ceil(worst), worst_i}
end
for i = 1, #KEYS do
  local ms = math.ceil((tats[i] - now) / 1000)
  if ms > 0 then
    redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', ms + 1000)
  else
    redis.call('DEL', KEYS[i])
  end
end
return {0, 0}
"""


class RedisRateLimiter:
    """The ``redis`` rate limiter backend. Processes that share ``key_prefix`` share limits.

    ``clock`` (seconds) replaces Redis server time, for tests that need time to stand still.
    """

    def __init__(
        self,
        client: Any,
        *,
        key_prefix: str = "tollway:ratelimit",
        url: str = "",
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._client = client
        # One hash tag for every key: a script may only touch keys of one Redis Cluster slot.
        self._prefix = "{" + key_prefix + "}:"
        self._url = url
        self._clock = clock
        self._script = client.register_script(GCRA_SCRIPT)

    @classmethod
    def from_config(
        cls, config: RateLimitConfig, metrics: Metrics | None = None
    ) -> RedisRateLimiter:
        import redis.asyncio as redis

        client = redis.Redis.from_url(config.url)
        return cls(client, key_prefix=config.key_prefix, url=config.url)

    @property
    def key_prefix(self) -> str:
        """What every key of this limiter starts with (hash tag included)."""
        return self._prefix

    def _args(self, mode: str, demands: Sequence[Demand]) -> tuple[list[str], list[Any]]:
        prefix = self._prefix
        keys = []
        args: list[Any] = [mode, "" if self._clock is None else repr(self._clock() * 1e6)]
        for bucket, amount in demands:
            keys.append(prefix + bucket.key)
            interval = 1e6 / bucket.rate
            args.append(repr(interval))
            args.append(repr(bucket.capacity * interval))
            args.append(repr(float(amount)))
        return keys, args

    async def _run(self, mode: str, demands: Sequence[Demand]) -> list[int]:
        keys, args = self._args(mode, demands)
        try:
            result: list[int] = await self._script(keys=keys, args=args)
        except Exception as exc:
            import redis.exceptions

            if isinstance(exc, redis.exceptions.RedisError | OSError):
                raise TollwayError(
                    f"the redis rate limiter cannot reach Redis at {self._url or 'its URL'}: "
                    f"{type(exc).__name__}: {exc}; start Redis, fix [rate_limits] url, or set "
                    '[rate_limits] backend = "local"',
                    retryable=True,
                ) from exc
            raise
        return result

    async def acquire(self, demands: Sequence[Demand]) -> tuple[float, int]:
        if not demands:
            return 0.0, -1
        wait_us, index = await self._run("acquire", demands)
        if index == 0:
            return 0.0, -1
        return int(wait_us) / 1e6, int(index) - 1

    async def adjust(self, demands: Sequence[Demand]) -> None:
        if demands:
            await self._run("adjust", demands)

    async def aclose(self) -> None:
        await self._client.aclose()
