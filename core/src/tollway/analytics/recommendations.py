"""Recommendations: what would have cost less for the traffic seen, and how much less.

Four kinds, each estimated from the window's records and scaled to a month
(``savings * 30.4375 / window days``; 30.4375 is the mean month, 365.25 / 12). Cache hits
(``cached``) cost nothing already and are left out of every estimate.

``cheaper-model``
    A model of the *same capability tier* that costs less for the same usage. Tiers are a
    small, hand-kept map of known models (:data:`CAPABILITY_TIERS`; pass ``tiers`` to replace
    it): gpt-4o -> gpt-4o-mini is *not* a recommendation, claude-sonnet-4 <-> gpt-4.1 <->
    gemini-2.5-pro is. The model's summed usage in the window is priced by the pricer for the
    model and for each alternative it knows; the saving is the recorded cost times
    ``1 - alternative / current``, so tiers and discounts count the same on both sides.
    Needs a pricer.
``cache-repeats``
    Calls with the same ``prompt_hash`` (the canonical request key: model, messages,
    parameters) that were not answered from tollway's cache. Every call of a group after the
    first could have been a cache hit: the saving is the group's cost times
    ``(calls - 1) / calls``. Answers sampled at a temperature above 0 may be meant to differ;
    the recommendation says how many prompts repeat so that the reader can judge.
``batch``
    Traffic that did not need an answer at once, at the providers' batch discount
    (:data:`BATCH_DISCOUNTS`, 50%). A call is batch-eligible when its tag ``batch`` (see
    ``batch_tag``) is ``true``/``1``/``yes``, when its user is one of ``batch_users``, or when it
    is a non-streamed call made in the off-hours (``off_hours``, 00:00-06:00 UTC by default),
    when nobody is waiting at a screen. Local providers (no discount known) are left out.
``prompt-caching``
    Large prompts sent again with the same beginning, without the provider's prompt cache.
    tollway stores no prompt text, so a shared beginning is inferred: calls of the same model
    in the same ``session`` (a conversation resends what came before), or with the same
    ``prefix`` tag (see ``prefix_tag``; set it to a hash of your system prompt), in time order.
    Each such call after the first could have read ``min(previous prompt, its prompt)`` tokens
    from the cache when that is at least ``min_cacheable_tokens`` (1,024, the providers'
    minimum) and it read none. The saving is those tokens priced as input minus priced as
    cache reads, less the cache-write premium for writing each group's longest shared
    beginning once. Without a pricer, cache reads are taken to cost ``cache_read_factor``
    (0.5, the smallest discount of the large providers) of the model's input rate seen in the
    records, with no write premium. This is the one estimate that reads every record (the
    others use grouped sums); a long run shows its progress.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import attrs

from tollway.analytics.progress import NullProgress, Progress
from tollway.analytics.spend import Window, nano, spend, totals
from tollway.pricing.base import Pricer
from tollway.types import Usage
from tollway.usage.records import UsageRow
from tollway.usage.store import UsageStore

_ZERO = Decimal(0)
MONTH_DAYS = Decimal("30.4375")
_NOT_CACHED = {"cached": "false"}
_TRUE = frozenset(("true", "1", "yes", "on"))

# Bare model name -> capability tier. Only models that do the same work equally well share a
# tier; a cheaper model of a lower tier is a different product, not a saving.
CAPABILITY_TIERS: Mapping[str, str] = {
    # The most capable models.
    "claude-opus-4": "frontier",
    "claude-opus-4-1": "frontier",
    "o3": "frontier",
    "gpt-5": "frontier",
    # Large general-purpose models.
    "gpt-4o": "large",
    "gpt-4.1": "large",
    "claude-sonnet-4": "large",
    "claude-sonnet-4-5": "large",
    "claude-3-7-sonnet": "large",
    "claude-3-5-sonnet": "large",
    "gemini-2.5-pro": "large",
    "gemini-1.5-pro": "large",
    # Small, fast general-purpose models.
    "gpt-4o-mini": "small",
    "gpt-4.1-mini": "small",
    "gpt-5-mini": "small",
    "claude-3-5-haiku": "small",
    "claude-haiku-4-5": "small",
    "gemini-2.5-flash": "small",
    "gemini-2.0-flash": "small",
    "gemini-1.5-flash": "small",
    # The smallest.
    "gpt-4.1-nano": "nano",
    "gpt-5-nano": "nano",
    "claude-3-haiku": "nano",
    "gemini-2.5-flash-lite": "nano",
    "gemini-2.0-flash-lite": "nano",
    # Small reasoning models.
    "o4-mini": "reasoning-small",
    "o3-mini": "reasoning-small",
}

# The batch APIs' discount on both input and output, by provider.
BATCH_DISCOUNTS: Mapping[str, Decimal] = {
    "openai": Decimal("0.5"),
    "azure": Decimal("0.5"),
    "anthropic": Decimal("0.5"),
    "gemini": Decimal("0.5"),
    "vertex": Decimal("0.5"),
    "bedrock": Decimal("0.5"),
}

# Dates, "-latest", "-preview...", "-exp..." and Anthropic's "-0" name the same model.
_VERSION_SUFFIX = re.compile(
    r"(-\d{4}-\d{2}-\d{2}|-\d{8}|-latest|-preview[-\w.]*|-exp[-\w.]*|(?<=\d)-0)$"
)


def bare_model(model: str) -> str:
    """``anthropic/claude-sonnet-4-20250514`` -> ``claude-sonnet-4``: no provider, no date."""
    name = model.rsplit("/", 1)[-1]
    while True:
        stripped = _VERSION_SUFFIX.sub("", name)
        if stripped == name:
            return name
        name = stripped


def _provider_of(bare: str) -> str:
    if bare.startswith("claude"):
        return "anthropic"
    if bare.startswith("gemini"):
        return "gemini"
    return "openai"


def canonical(provider: Any, model: Any) -> str:
    """``PROVIDER/MODEL`` from a row's or record's two fields."""
    name = str(model)
    return name if "/" in name else f"{provider}/{name}"


@attrs.frozen(slots=True)
class RecommendationOptions:
    """How recommendations are found; every default is documented in the module docstring."""

    tiers: Mapping[str, str] = CAPABILITY_TIERS
    batch_discounts: Mapping[str, Decimal] = BATCH_DISCOUNTS
    batch_tag: str = "batch"
    batch_users: frozenset[str] = frozenset()
    off_hours: tuple[int, int] = (0, 6)  # UTC hours [start, end); start > end wraps midnight
    prefix_tag: str = "prefix"
    min_cacheable_tokens: int = 1024
    cache_read_factor: Decimal = Decimal("0.5")
    # Leave out recommendations that would save less than this a month.
    min_monthly_savings: Decimal = Decimal("0.01")

    def off_hour(self, hour: int) -> bool:
        start, end = self.off_hours
        return start <= hour < end if start <= end else (hour >= start or hour < end)


@attrs.frozen(slots=True)
class Recommendation:
    kind: str  # cheaper-model, cache-repeats, batch, prompt-caching
    title: str
    detail: str
    savings: Decimal  # in the analysed window
    savings_per_month: Decimal
    calls: int  # the calls it concerns
    cost: Decimal  # what those calls cost
    currency: str = "USD"
    # Breakdown rows for tables (model, alternative, calls, cost, savings...), values as text.
    items: tuple[Mapping[str, str], ...] = ()


def _usage(row: UsageRow) -> Usage:
    return Usage(
        row.input_tokens,
        row.output_tokens,
        row.cache_read_tokens,
        row.cache_write_tokens,
        row.reasoning_tokens,
    )


def _truthy(value: Any) -> bool:
    return value is True or (value is not None and str(value).strip().lower() in _TRUE)


def _hour_of(value: Any) -> int:
    import datetime as dt

    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).hour
    return dt.datetime.fromisoformat(str(value)).astimezone(dt.UTC).hour


def _money(amount: Decimal) -> str:
    """Item amounts to the millionth, without an exponent (``10``, not ``1E+1``)."""
    return format(amount.quantize(Decimal("0.000001")).normalize(), "f")


def cheaper_models(
    rows: Sequence[UsageRow], pricer: Pricer, scale: Decimal, options: RecommendationOptions
) -> list[Recommendation]:
    """From rows grouped by provider and model: one recommendation per model that has a cheaper
    alternative of its tier."""
    by_tier: dict[str, list[str]] = {}
    for name, tier_name in options.tiers.items():
        by_tier.setdefault(tier_name, []).append(f"{_provider_of(name)}/{name}")
    merged: dict[str, tuple[Usage, Decimal, int, str]] = {}
    for row in rows:
        model = canonical(row.group.get("provider"), row.group.get("model"))
        usage, cost, calls, _ = merged.get(model, (Usage(), _ZERO, 0, row.currency))
        merged[model] = (usage + _usage(row), cost + row.cost, calls + row.calls, row.currency)
    out = []
    for model, (usage, cost, calls, currency) in merged.items():
        bare = bare_model(model)
        tier = options.tiers.get(bare)
        if tier is None or cost <= 0 or not pricer.knows(model):
            continue
        current = pricer.price(model, usage).total
        if current <= 0:
            continue
        best: tuple[Decimal, str] | None = None
        for alternative in by_tier[tier]:
            if bare_model(alternative) == bare or not pricer.knows(alternative):
                continue
            price = pricer.price(alternative, usage).total
            if 0 < price < current and (best is None or price < best[0]):
                best = (price, alternative)
        if best is None:
            continue
        savings = cost * (1 - best[0] / current)
        out.append(
            Recommendation(
                kind="cheaper-model",
                title=f"Move {model} to {best[1]}",
                detail=(
                    f"{calls:,} calls of {model} would cost {(best[0] / current):.0%} as much on "
                    f"{best[1]}, a model of the same capability tier ({tier!r})."
                ),
                savings=nano(savings),
                savings_per_month=nano(savings * scale),
                calls=calls,
                cost=cost,
                currency=currency,
                items=(
                    {
                        "model": model,
                        "alternative": best[1],
                        "tier": tier,
                        "calls": str(calls),
                        "cost": _money(cost),
                        "savings": _money(savings),
                    },
                ),
            )
        )
    return out


def cache_repeats(rows: Sequence[UsageRow], scale: Decimal) -> list[Recommendation]:
    """From rows grouped by model and prompt_hash (cache hits left out)."""
    savings = _ZERO
    calls = repeats = groups = 0
    cost = _ZERO
    currency = "USD"
    per_model: dict[str, list[Any]] = {}
    for row in rows:
        if row.group.get("prompt_hash") is None or row.calls < 2:
            continue
        saved = row.cost * (row.calls - 1) / row.calls
        savings += saved
        calls += row.calls
        repeats += row.calls - 1
        groups += 1
        cost += row.cost
        currency = row.currency
        entry = per_model.setdefault(str(row.group.get("model")), [0, 0, _ZERO])
        entry[0] += 1
        entry[1] += row.calls - 1
        entry[2] += saved
    if not groups:
        return []
    items = tuple(
        {"model": m, "prompts": str(g), "repeats": str(r), "savings": _money(s)}
        for m, (g, r, s) in sorted(per_model.items(), key=lambda kv: -kv[1][2])
    )
    return [
        Recommendation(
            kind="cache-repeats",
            title="Turn on the answer cache for repeated prompts",
            detail=(
                f"{groups:,} prompts were sent more than once ({repeats:,} repeats) and answered "
                "by the provider every time; with [cache] enabled the repeats are served free."
            ),
            savings=nano(savings),
            savings_per_month=nano(savings * scale),
            calls=calls,
            cost=cost,
            currency=currency,
            items=items,
        )
    ]


def batch_eligible(
    rows: Sequence[UsageRow], scale: Decimal, options: RecommendationOptions
) -> list[Recommendation]:
    """From rows grouped by hour, provider, model, stream, the batch tag (and user)."""
    tag = f"tag:{options.batch_tag}"
    per_model: dict[str, list[Any]] = {}
    currency = "USD"
    for row in rows:
        group = row.group
        marked = _truthy(group.get(tag)) or (
            bool(options.batch_users) and group.get("user") in options.batch_users
        )
        if not marked and (
            _truthy(group.get("stream")) or not options.off_hour(_hour_of(group["hour"]))
        ):
            continue
        provider = str(group.get("provider"))
        model = canonical(provider, group.get("model"))
        discount = options.batch_discounts.get(provider)
        if discount is None:
            discount = options.batch_discounts.get(model.partition("/")[0])
        if discount is None or row.cost <= 0:
            continue
        currency = row.currency
        entry = per_model.setdefault(model, [0, _ZERO, _ZERO])
        entry[0] += row.calls
        entry[1] += row.cost
        entry[2] += row.cost * discount
    if not per_model:
        return []
    calls = sum(e[0] for e in per_model.values())
    cost = sum((e[1] for e in per_model.values()), _ZERO)
    savings = sum((e[2] for e in per_model.values()), _ZERO)
    start, end = options.off_hours
    return [
        Recommendation(
            kind="batch",
            title="Send non-interactive traffic through the batch APIs",
            detail=(
                f"{calls:,} calls were marked batch (tag {options.batch_tag!r}) or made "
                f"without streaming between {start:02d}:00 and {end:02d}:00 UTC; the providers' "
                "batch APIs charge half for answers within 24 hours."
            ),
            savings=nano(savings),
            savings_per_month=nano(savings * scale),
            calls=calls,
            cost=cost,
            currency=currency,
            items=tuple(
                {"model": m, "calls": str(c), "cost": _money(k), "savings": _money(s)}
                for m, (c, k, s) in sorted(per_model.items(), key=lambda kv: -kv[1][2])
            ),
        )
    ]


@attrs.define
class _CacheScan:
    """What the record scan learns for the prompt-caching estimate."""

    last_input: dict[tuple[str, str], int] = attrs.Factory(dict)
    longest: dict[tuple[str, str], int] = attrs.Factory(dict)
    tokens: dict[str, int] = attrs.Factory(dict)
    calls: dict[str, int] = attrs.Factory(dict)
    cost: dict[str, Decimal] = attrs.Factory(dict)
    input_cost: dict[str, Decimal] = attrs.Factory(dict)
    uncached_input: dict[str, int] = attrs.Factory(dict)
    currency: str = "USD"


async def prompt_caching(
    store: UsageStore,
    window: Window,
    pricer: Pricer | None,
    scale: Decimal,
    options: RecommendationOptions,
    *,
    filters: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    total: int | None = None,
) -> list[Recommendation]:
    progress = progress or NullProgress()
    progress.step("scanning records for prompt caching", total)
    scan = _CacheScan()
    query = window.query((), {**(filters or {}), **_NOT_CACHED})
    seen = 0
    async for record in store.records(query):
        seen += 1
        if seen % 1000 == 0:
            progress.advance(1000)
        model = canonical(record.provider, record.model)
        usage = record.usage
        uncached = usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens
        scan.input_cost[model] = scan.input_cost.get(model, _ZERO) + record.cost.input
        scan.uncached_input[model] = scan.uncached_input.get(model, 0) + max(uncached, 0)
        scan.currency = record.cost.currency
        group = record.session or record.tags.get(options.prefix_tag)
        if group is None:
            continue
        key = (model, group)
        previous = scan.last_input.get(key)
        scan.last_input[key] = usage.input_tokens
        if previous is None or usage.cache_read_tokens:
            continue
        shared = min(previous, usage.input_tokens)
        if shared < options.min_cacheable_tokens:
            continue
        scan.tokens[model] = scan.tokens.get(model, 0) + shared
        scan.calls[model] = scan.calls.get(model, 0) + 1
        scan.cost[model] = scan.cost.get(model, _ZERO) + record.cost.total
        scan.longest[key] = max(scan.longest.get(key, 0), shared)
    progress.advance(seen % 1000)
    written: dict[str, int] = {}
    for (model, _), tokens in scan.longest.items():
        written[model] = written.get(model, 0) + tokens
    items = []
    total_savings = _ZERO
    for model, tokens in scan.tokens.items():
        savings = _caching_savings(model, tokens, written.get(model, 0), pricer, scan, options)
        if savings <= 0:
            continue
        total_savings += savings
        items.append(
            {
                "model": model,
                "calls": str(scan.calls[model]),
                "cacheable_tokens": str(tokens),
                "savings": _money(savings),
            }
        )
    if not items:
        return []
    items.sort(key=lambda item: -Decimal(item["savings"]))
    calls = sum(scan.calls.values())
    tokens_total = sum(scan.tokens.values())
    return [
        Recommendation(
            kind="prompt-caching",
            title="Use the providers' prompt caching for long shared prompts",
            detail=(
                f"{calls:,} calls resent {tokens_total:,} prompt tokens that began like an "
                "earlier prompt of their session or prefix and read none from the provider's "
                "prompt cache; mark the shared beginning cacheable (Anthropic cache_control, "
                "Gemini cached content; OpenAI caches prefixes of 1,024+ tokens by itself)."
            ),
            savings=nano(total_savings),
            savings_per_month=nano(total_savings * scale),
            calls=calls,
            cost=sum(scan.cost.values(), _ZERO),
            currency=scan.currency,
            items=tuple(items),
        )
    ]


def _caching_savings(
    model: str,
    tokens: int,
    written: int,
    pricer: Pricer | None,
    scan: _CacheScan,
    options: RecommendationOptions,
) -> Decimal:
    if pricer is not None and pricer.knows(model):
        as_input = pricer.price(model, Usage(input_tokens=tokens)).total
        as_read = pricer.price(model, Usage(input_tokens=tokens, cache_read_tokens=tokens)).total
        plain = pricer.price(model, Usage(input_tokens=written)).total
        as_write = pricer.price(model, Usage(input_tokens=written, cache_write_tokens=written))
        premium = max(as_write.total - plain, _ZERO)
        return as_input - as_read - premium
    uncached = scan.uncached_input.get(model, 0)
    if not uncached:
        return _ZERO
    rate = scan.input_cost.get(model, _ZERO) / uncached
    return rate * tokens * (1 - options.cache_read_factor)


async def recommend(
    store: UsageStore,
    window: Window,
    pricer: Pricer | None = None,
    options: RecommendationOptions | None = None,
    *,
    filters: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> list[Recommendation]:
    """Every recommendation for the window's traffic, the largest monthly saving first."""
    options = options or RecommendationOptions()
    progress = progress or NullProgress()
    scale = MONTH_DAYS / window.days
    not_cached = {**(filters or {}), **_NOT_CACHED}
    found: list[Recommendation] = []
    if pricer is not None:
        progress.step("pricing alternative models")
        rows = await spend(store, window, ("provider", "model"), filters=not_cached)
        found += cheaper_models(rows, pricer, scale, options)
    progress.step("finding repeated prompts")
    found += cache_repeats(
        await spend(store, window, ("model", "prompt_hash"), filters=not_cached), scale
    )
    progress.step("finding batch-eligible traffic")
    by = ["provider", "model", "stream", f"tag:{options.batch_tag}"]
    if options.batch_users:
        by.append("user")
    found += batch_eligible(
        await spend(store, window, by, bucket="hour", filters=not_cached), scale, options
    )
    count = (await totals(store, window, not_cached)).calls
    found += await prompt_caching(
        store, window, pricer, scale, options, filters=filters, progress=progress, total=count
    )
    kept = [r for r in found if r.savings_per_month >= options.min_monthly_savings]
    kept.sort(key=lambda r: (-r.savings_per_month, r.kind, r.title))
    return kept
