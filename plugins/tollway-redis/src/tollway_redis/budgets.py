"""Budget counters shared by every process through Redis: reserve and settle in Lua.

Each budget window is one hash, ``{prefix}:c:<counter key>``:

- ``s``: the spend of a calendar window, in nano-units; a rolling window keeps ``t<slot>``
  fields instead (one per slot of ``seconds / 60``), and forgets a slot once it is older than
  the window;
- ``r<lease>``: what calls in flight hold reserved, per lease slot of
  ``reservation_timeout / 10`` seconds. A reservation that is never settled (its process died)
  lapses after ``reservation_timeout`` instead of holding the budget until the window ends;
- ``a``: how many of the budget's alert thresholds have gone out in this window;
- ``x``: until when a refusal alert has gone out (so it goes out once per window).

A calendar window's hash expires a day after its window ends; a rolling one a slot after its
newest data is older than both the window and the reservation timeout.

One script call checks every budget a call needs and reserves on all or none (Redis runs a
script alone, so no other process can slip in between), and checks the emergency stop
(``{prefix}:stop``) first. Settling is one script call too, which also adds the spend to the
emergency stop's history (``{prefix}:rate``, one field per slot). Money is integer nano-units
throughout; Lua's numbers are doubles, exact to 2**53 nano-units (about 9 million of the
currency), which bounds a budget's amount on this backend.

Times are the callers' clocks (epoch seconds), not Redis's: the window a spend counts in is
decided by the process, as with the local backend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tollway.budgets.counters import RESERVED, STOPPED, history_shape
from tollway.budgets.windows import slot_of
from tollway.errors import TollwayError

if TYPE_CHECKING:
    from tollway.budgets.config import BudgetsConfig
    from tollway.budgets.counters import BudgetWindow, Charge, Settled
    from tollway.metrics import Metrics

# Lease slots a reservation is kept for.
LEASE_SLOTS = 10

# A hash's fields summed: calendar spend "s", rolling slots "t<n>" from ``oldest`` (older ones
# deleted), reservations "r<n>" from ``first_lease`` (older ones deleted: they lapsed).
_READ = """
local function read(key, oldest, first_lease)
  local flat = redis.call('HGETALL', key)
  local spent, reserved, alerted, refused = 0, 0, 0, 0
  for i = 1, #flat, 2 do
    local field, value = flat[i], tonumber(flat[i + 1])
    local kind = string.sub(field, 1, 1)
    if field == 's' then
      spent = spent + value
    elseif field == 'a' then
      alerted = value
    elseif field == 'x' then
      refused = value
    elseif kind == 't' then
      if tonumber(string.sub(field, 2)) < oldest then
        redis.call('HDEL', key, field)
      else
        spent = spent + value
      end
    elseif kind == 'r' then
      if tonumber(string.sub(field, 2)) < first_lease then
        redis.call('HDEL', key, field)
      else
        reserved = reserved + value
      end
    end
  end
  return spent, reserved, alerted, refused
end
"""

# KEYS[1]: the stop key; KEYS[2..]: the counters. ARGV: now, lease slot (s), lease now, then per
# counter: hard (0/1), limit, amount, rolling seconds (0: calendar), rolling slot seconds,
# expires_at. Returns {index, spent, reserved, first}: index -1 reserved, -2 stopped, else the
# 0-based counter that refused.
RESERVE_SCRIPT = (
    _READ
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {-2, 0, 0, 0}
end
local now = tonumber(ARGV[1])
local lease_slot = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local first_lease = lease - """
    + str(LEASE_SLOTS)
    + """
for i = 2, #KEYS do
  local base = 4 + (i - 2) * 6
  local hard = ARGV[base] == '1'
  local limit = tonumber(ARGV[base + 1])
  local amount = tonumber(ARGV[base + 2])
  local rolling = tonumber(ARGV[base + 3])
  local slot = tonumber(ARGV[base + 4])
  local expires_at = tonumber(ARGV[base + 5])
  if hard then
    local oldest = 0
    if rolling > 0 then oldest = math.floor((now - rolling) / slot) end
    local spent, reserved, alerted, refused = read(KEYS[i], oldest, first_lease)
    if spent + reserved + amount > limit then
      local first = 0
      if refused <= now then
        first = 1
        local until_ = expires_at
        if rolling > 0 then until_ = now + rolling end
        redis.call('HSET', KEYS[i], 'x', string.format('%.3f', until_))
      end
      return {i - 2, spent, reserved, first}
    end
  end
end
for i = 2, #KEYS do
  local base = 4 + (i - 2) * 6
  local amount = tonumber(ARGV[base + 2])
  local rolling = tonumber(ARGV[base + 3])
  local expires_at = tonumber(ARGV[base + 5])
  if amount > 0 then
    redis.call('HINCRBY', KEYS[i], 'r' .. lease, amount)
    if rolling > 0 then
      local keep = math.max(rolling, lease_slot * """
    + str(LEASE_SLOTS + 1)
    + """)
      redis.call('PEXPIRE', KEYS[i], math.ceil(keep * 1000) + 1000)
    else
      redis.call('PEXPIREAT', KEYS[i], math.ceil(expires_at * 1000))
    end
  end
end
return {-1, 0, 0, 0}
"""
)

# KEYS[1]: the rate key; KEYS[2..]: the counters. ARGV: now, lease slot (s), the reserve's
# lease, the lease now, actual, rate slot (-1: none), rate ttl (s), then per counter: amount,
# rolling seconds (0: calendar; a rolling window's alerts re-arm as its spend falls), rolling
# slot seconds, expires_at, thresholds ("n1,n2,..." ascending, "" for none). Returns spent,
# alerted before, alerted after, per counter, flat.
SETTLE_SCRIPT = (
    _READ
    + """
local now = tonumber(ARGV[1])
local lease_slot = tonumber(ARGV[2])
local reserved_lease = ARGV[3]
local first_lease = tonumber(ARGV[4]) - """
    + str(LEASE_SLOTS)
    + """
local actual = tonumber(ARGV[5])
local out = {}
for i = 2, #KEYS do
  local key = KEYS[i]
  local base = 8 + (i - 2) * 5
  local amount = tonumber(ARGV[base])
  local rolling = tonumber(ARGV[base + 1])
  local slot = tonumber(ARGV[base + 2])
  local expires_at = tonumber(ARGV[base + 3])
  local thresholds = ARGV[base + 4]
  if amount > 0 then
    local field = 'r' .. reserved_lease
    if redis.call('HEXISTS', key, field) == 1 then
      if redis.call('HINCRBY', key, field, -amount) <= 0 then
        redis.call('HDEL', key, field)
      end
    end
  end
  local oldest = 0
  if rolling > 0 then oldest = math.floor((now - rolling) / slot) end
  local spent, reserved, alerted, refused = read(key, oldest, first_lease)
  local limits = {}
  for t in string.gmatch(thresholds, '[^,]+') do limits[#limits + 1] = tonumber(t) end
  local before = alerted
  if rolling > 0 and before > 0 then
    -- spend that aged out re-arms the thresholds it is back under
    local below = 0
    for _, t in ipairs(limits) do
      if spent >= t then below = below + 1 end
    end
    if below < before then before = below end
  end
  if actual > 0 then
    if rolling > 0 then
      redis.call('HINCRBY', key, 't' .. math.floor(now / slot), actual)
    else
      redis.call('HINCRBY', key, 's', actual)
    end
    spent = spent + actual
  end
  local crossed = 0
  for _, t in ipairs(limits) do
    if spent >= t then crossed = crossed + 1 end
  end
  local after = before
  if crossed > before then after = crossed end
  if after ~= alerted then
    redis.call('HSET', key, 'a', after)
  end
  if redis.call('EXISTS', key) == 1 then
    if rolling > 0 then
      local keep = math.max(rolling, lease_slot * """
    + str(LEASE_SLOTS + 1)
    + """)
      redis.call('PEXPIRE', key, math.ceil(keep * 1000) + 1000)
    else
      redis.call('PEXPIREAT', key, math.ceil(expires_at * 1000))
    end
  end
  out[#out + 1] = spent
  out[#out + 1] = before
  out[#out + 1] = after
end
local rate_slot = tonumber(ARGV[6])
if rate_slot >= 0 and actual > 0 then
  redis.call('HINCRBY', KEYS[1], tostring(rate_slot), actual)
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[7]))
end
return out
"""
)


def client_for(url: str, max_connections: int = 64) -> Any:
    """A client whose calls wait for a free connection (up to ``max_connections``) rather
    than fail with "Too many connections" when many calls are in flight."""
    import redis.asyncio as redis

    pool = redis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=30)
    return redis.Redis.from_pool(pool)


def _number(value: float) -> str:
    return repr(float(value))


class RedisBudgetCounters:
    """The ``redis`` budget counters. Processes that share ``key_prefix`` share budgets."""

    def __init__(
        self,
        client: Any,
        *,
        key_prefix: str = "tollway:budgets",
        url: str = "",
        reservation_timeout: float = 600.0,
        rate_slot: float = 0.0,
        rate_slots: int = 0,
    ) -> None:
        self._client = client
        # One hash tag for every key: a script may only touch keys of one Redis Cluster slot.
        self._prefix = "{" + key_prefix + "}:"
        self._url = url
        self._lease_slot = reservation_timeout / LEASE_SLOTS
        self._rate_slot = rate_slot
        self._rate_slots = rate_slots
        self._rate_ttl = max(1, math.ceil(rate_slot * (rate_slots + 2)))
        self._stop_key = self._prefix + "stop"
        self._rate_key = self._prefix + "rate"
        self._reserve = client.register_script(RESERVE_SCRIPT)
        self._settle = client.register_script(SETTLE_SCRIPT)

    @classmethod
    def from_config(
        cls, config: BudgetsConfig, metrics: Metrics | None = None
    ) -> RedisBudgetCounters:
        slot, slots = history_shape(config)
        return cls(
            client_for(config.url, config.max_connections),
            key_prefix=config.key_prefix,
            url=config.url,
            reservation_timeout=config.reservation_timeout,
            rate_slot=slot,
            rate_slots=slots,
        )

    @property
    def key_prefix(self) -> str:
        """What every key of these counters starts with (hash tag included)."""
        return self._prefix

    def _key(self, window: BudgetWindow) -> str:
        return self._prefix + "c:" + window.key

    def _unreachable(self, exc: BaseException) -> TollwayError:
        return TollwayError(
            f"the redis budget counters cannot reach Redis at {self._url or 'its URL'}: "
            f"{type(exc).__name__}: {exc}; no call can be checked against its budgets. Start "
            'Redis, fix [budgets] url, or set [budgets] backend = "local"',
            retryable=True,
        )

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except Exception as exc:
            import redis.exceptions

            if isinstance(exc, redis.exceptions.RedisError | OSError):
                raise self._unreachable(exc) from exc
            raise

    # -- reserve and settle ----------------------------------------------------------------

    async def reserve(self, charges: Sequence[Charge], now: float) -> tuple[int, int, int, bool]:
        keys = [self._stop_key]
        args: list[Any] = [_number(now), _number(self._lease_slot), slot_of(now, self._lease_slot)]
        for window, amount in charges:
            keys.append(self._key(window))
            args += [
                "1" if window.hard else "0",
                window.limit,
                amount,
                _number(window.rolling),
                _number(window.slot or 1.0),
                _number(window.expires_at),
            ]
        index, spent, reserved, first = await self._call(self._reserve, keys, args)
        index = int(index)
        if index == -1:
            return RESERVED, 0, 0, False
        if index == -2:
            return STOPPED, 0, 0, False
        return index, int(spent), int(reserved), bool(first)

    async def settle(
        self, charges: Sequence[Charge], actual: int, reserved_at: float, now: float
    ) -> list[Settled]:
        keys = [self._rate_key]
        rate_slot = slot_of(now, self._rate_slot) if self._rate_slot and actual else -1
        args: list[Any] = [
            _number(now),
            _number(self._lease_slot),
            slot_of(reserved_at, self._lease_slot),
            slot_of(now, self._lease_slot),
            actual,
            rate_slot,
            self._rate_ttl,
        ]
        for window, amount in charges:
            keys.append(self._key(window))
            args += [
                amount,
                _number(window.rolling),
                _number(window.slot or 1.0),
                _number(window.expires_at),
                ",".join(map(str, window.thresholds)),
            ]
        flat = await self._call(self._settle, keys, args)
        return [(int(flat[i]), int(flat[i + 1]), int(flat[i + 2])) for i in range(0, len(flat), 3)]

    # -- reading ---------------------------------------------------------------------------

    def _sum(
        self, fields: dict[bytes, bytes], window: BudgetWindow | None, now: float
    ) -> tuple[int, int]:
        spent = reserved = 0
        oldest = slot_of(now - window.rolling, window.slot) if window and window.rolling else None
        first_lease = slot_of(now, self._lease_slot) - LEASE_SLOTS
        for raw, value in fields.items():
            field = raw.decode()
            if field == "s":
                spent += int(value)
            elif field[0] == "t":
                if oldest is None or int(field[1:]) >= oldest:
                    spent += int(value)
            elif field[0] == "r" and int(field[1:]) >= first_lease:
                reserved += int(value)
        return spent, reserved

    async def read(self, windows: Sequence[BudgetWindow], now: float) -> list[tuple[int, int]]:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for window in windows:
                    pipe.hgetall(self._key(window))
                found = await pipe.execute()
        except Exception as exc:
            raise self._unreachable(exc) from exc
        return [
            self._sum(fields, window, now) for fields, window in zip(found, windows, strict=True)
        ]

    async def entries(self, now: float) -> dict[str, tuple[int, int]]:
        prefix = self._prefix + "c:"
        try:
            keys = [key async for key in self._client.scan_iter(match=prefix + "*", count=1000)]
            out: dict[str, tuple[int, int]] = {}
            for key in keys:
                fields = await self._client.hgetall(key)
                out[key.decode()[len(prefix) :]] = self._sum(fields, None, now)
        except Exception as exc:
            raise self._unreachable(exc) from exc
        return out

    async def spend_history(self, now: float) -> list[int]:
        if not self._rate_slot:
            return []
        current = slot_of(now, self._rate_slot)
        slots = [str(s) for s in range(current - self._rate_slots + 1, current + 1)]
        try:
            values = await self._client.hmget(self._rate_key, slots)
        except Exception as exc:
            raise self._unreachable(exc) from exc
        return [int(v) if v is not None else 0 for v in values]

    # -- the emergency stop ----------------------------------------------------------------

    async def trip(self, reason: str, now: float) -> bool:
        try:
            return bool(await self._client.set(self._stop_key, f"{now!r}\n{reason}", nx=True))
        except Exception as exc:
            raise self._unreachable(exc) from exc

    async def reset(self) -> bool:
        try:
            return bool(await self._client.delete(self._stop_key))
        except Exception as exc:
            raise self._unreachable(exc) from exc

    async def stopped(self) -> tuple[str, float] | None:
        try:
            raw = await self._client.get(self._stop_key)
        except Exception as exc:
            raise self._unreachable(exc) from exc
        if raw is None:
            return None
        since, _, reason = raw.decode().partition("\n")
        return reason, float(since)

    async def aclose(self) -> None:
        await self._client.aclose()


__all__ = ["RESERVE_SCRIPT", "SETTLE_SCRIPT", "RedisBudgetCounters", "client_for"]
