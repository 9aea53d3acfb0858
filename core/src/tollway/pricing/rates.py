"""A model's prices as a source states them, and the per-token rates the request path uses.

A price source answers ``rates(provider, model)`` with a :class:`ModelRates`: prices per
million tokens for each token class, a price per request, tiers by prompt size, and the
currency. The pricer turns it, once per model, into :class:`TokenRates` per token with every
multiplier folded in (discount, margin, exchange rate, volume step), so that pricing a call is
a handful of integer-times-Decimal products.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from decimal import Decimal

import attrs

from tollway.types import Cost, Usage

Clock = Callable[[], float]

_ZERO = Decimal(0)
_MILLION = Decimal(1_000_000)


@attrs.frozen(slots=True)
class Tier:
    """Prices for a call whose input tokens are more than ``above_input_tokens``.

    The whole call pays them (the "cliff" every provider uses). ``None`` keeps the base price.
    """

    above_input_tokens: int
    input_mtok: Decimal | None = None
    output_mtok: Decimal | None = None
    cache_read_mtok: Decimal | None = None
    cache_write_mtok: Decimal | None = None
    reasoning_mtok: Decimal | None = None


@attrs.frozen(slots=True)
class ModelRates:
    """One model's prices, per million tokens, as a source states them.

    ``cache_read_mtok`` and ``cache_write_mtok`` of ``None`` mean the input price (the source
    does not price them apart); ``reasoning_mtok`` of ``None`` means the output price.
    ``valid_until`` (UTC epoch seconds) is when the source's price changes next (a dated price
    change, an off-peak window): the pricer asks again then.
    """

    input_mtok: Decimal = _ZERO
    output_mtok: Decimal = _ZERO
    cache_read_mtok: Decimal | None = None
    cache_write_mtok: Decimal | None = None
    reasoning_mtok: Decimal | None = None
    request: Decimal = _ZERO
    tiers: tuple[Tier, ...] = ()
    currency: str = "USD"
    # Where the prices came from: the source's name, and its own id for the model.
    source: str = ""
    model_id: str = ""
    valid_until: float | None = None
    # The output tokens an estimate assumes when the request sets no max_tokens.
    max_output_tokens: int | None = None

    def at_tier(self, tier: Tier | None) -> tuple[Decimal, Decimal, Decimal, Decimal, Decimal]:
        """Input, output, cache-read, cache-write and reasoning prices per million tokens."""
        input_mtok = self.input_mtok
        output_mtok = self.output_mtok
        cache_read = self.cache_read_mtok
        cache_write = self.cache_write_mtok
        reasoning = self.reasoning_mtok
        if tier is not None:
            input_mtok = input_mtok if tier.input_mtok is None else tier.input_mtok
            output_mtok = output_mtok if tier.output_mtok is None else tier.output_mtok
            cache_read = _pick(tier.cache_read_mtok, cache_read)
            cache_write = _pick(tier.cache_write_mtok, cache_write)
            reasoning = _pick(tier.reasoning_mtok, reasoning)
        return (
            input_mtok,
            output_mtok,
            input_mtok if cache_read is None else cache_read,
            input_mtok if cache_write is None else cache_write,
            output_mtok if reasoning is None else reasoning,
        )


def _pick(value: Decimal | None, default: Decimal | None) -> Decimal | None:
    return default if value is None else value


def period_bounds(now: float, period: str) -> tuple[float, float]:
    """The UTC calendar day, ISO week (from Monday) or month that ``now`` falls in."""
    when = dt.datetime.fromtimestamp(now, dt.UTC)
    day = when.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        start, end = day, day + dt.timedelta(days=1)
    elif period == "week":
        start = day - dt.timedelta(days=day.weekday())
        end = start + dt.timedelta(days=7)
    else:
        start = day.replace(day=1)
        end = (start + dt.timedelta(days=32)).replace(day=1)
    return start.timestamp(), end.timestamp()


class VolumeCounter:
    """Tokens used in the current period by the models one volume rule covers, per process."""

    __slots__ = ("clock", "level", "period", "period_end", "period_start", "thresholds", "tokens")

    def __init__(self, period: str, thresholds: Sequence[int], clock: Clock) -> None:
        self.period = period
        self.thresholds = tuple(thresholds)
        self.clock = clock
        self.tokens = 0
        self.level = 0
        self.period_start = self.period_end = 0.0
        self._roll(clock())

    def _roll(self, now: float) -> None:
        self.period_start, self.period_end = period_bounds(now, self.period)
        self.tokens = 0
        self.level = 0
        self._climb()

    def _climb(self) -> None:
        thresholds = self.thresholds
        while self.level < len(thresholds) and self.tokens >= thresholds[self.level]:
            self.level += 1

    def current(self) -> int:
        """The discount step now applying (0: none yet)."""
        now = self.clock()
        if now >= self.period_end or now < self.period_start:
            self._roll(now)
        return self.level

    def add(self, tokens: int) -> None:
        self.tokens += tokens
        if self.level < len(self.thresholds) and self.tokens >= self.thresholds[self.level]:
            self._climb()


class TokenRates:
    """Per-token prices for one tier, multipliers applied. Plain slots: read on every call."""

    __slots__ = ("cache_read", "cache_write", "input", "output", "reasoning", "request")

    def __init__(
        self,
        input: Decimal,
        output: Decimal,
        cache_read: Decimal,
        cache_write: Decimal,
        reasoning: Decimal,
        request: Decimal,
    ) -> None:
        self.input = input
        self.output = output
        self.cache_read = cache_read
        self.cache_write = cache_write
        self.reasoning = reasoning
        self.request = request

    def __repr__(self) -> str:
        return (
            f"TokenRates(input={self.input}, output={self.output}, cache_read={self.cache_read}, "
            f"cache_write={self.cache_write}, reasoning={self.reasoning}, request={self.request})"
        )

    def cost(self, usage: Usage, currency: str) -> Cost:
        """Each token class at its own rate. ``input_tokens`` counts the cached ones and
        ``output_tokens`` the reasoning ones, so those are taken out of the plain classes."""
        cache_read = usage.cache_read_tokens
        cache_write = usage.cache_write_tokens
        reasoning = usage.reasoning_tokens
        plain_input = usage.input_tokens - cache_read - cache_write
        plain_output = usage.output_tokens - reasoning
        # A provider that reports the cached tokens apart from (not inside) the prompt count
        # would otherwise get a negative charge.
        if plain_input < 0:
            plain_input = 0
        if plain_output < 0:
            plain_output = 0
        return Cost(
            plain_input * self.input,
            plain_output * self.output,
            cache_read * self.cache_read,
            cache_write * self.cache_write,
            reasoning * self.reasoning,
            self.request,
            currency,
        )


def token_rates(rates: ModelRates, tier: Tier | None, factor: Decimal) -> TokenRates:
    """Per-token rates of ``rates`` at ``tier``, every price multiplied by ``factor``."""
    per_token = factor / _MILLION
    input_mtok, output_mtok, cache_read, cache_write, reasoning = rates.at_tier(tier)
    return TokenRates(
        input_mtok * per_token,
        output_mtok * per_token,
        cache_read * per_token,
        cache_write * per_token,
        reasoning * per_token,
        rates.request * factor,
    )


class CompiledRates:
    """A model's per-token rates for every tier and volume step, built once per model.

    ``steps[level]`` is ``(base, tiers)`` at volume-discount step ``level``: ``tiers`` is a
    tuple of ``(above_input_tokens, TokenRates)``, largest first.
    """

    __slots__ = ("currency", "first_tier", "model", "rates", "steps", "valid_until", "volume")

    def __init__(
        self,
        model: str,
        rates: ModelRates,
        factor: Decimal,
        currency: str,
        step_factors: Sequence[Decimal] = (Decimal(1),),
        volume: VolumeCounter | None = None,
    ) -> None:
        self.model = model
        self.rates = rates
        self.currency = currency
        self.valid_until = rates.valid_until
        # The volume counter this model's calls feed (see tollway.pricing.pricer), or None.
        self.volume = volume
        ordered = sorted(rates.tiers, key=lambda t: t.above_input_tokens, reverse=True)
        steps = []
        for step in step_factors:
            total = factor * step
            base = token_rates(rates, None, total)
            tiers = tuple((t.above_input_tokens, token_rates(rates, t, total)) for t in ordered)
            steps.append((base, tiers))
        self.steps: tuple[tuple[TokenRates, tuple[tuple[int, TokenRates], ...]], ...] = tuple(steps)
        # Below this many input tokens no tier applies: most calls stop at one comparison.
        self.first_tier = ordered[-1].above_input_tokens if ordered else None

    def select(self, input_tokens: int, level: int = 0) -> TokenRates:
        base, tiers = self.steps[level]
        first = self.first_tier
        if first is None or input_tokens <= first:
            return base
        for above, rates in tiers:
            if input_tokens > above:
                return rates
        return base  # pragma: no cover - first_tier is the smallest tier
