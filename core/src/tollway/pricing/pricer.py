"""The pricer: per-model rates from the configured sources, and the cost of every call.

Built once per pipeline assembly (:func:`pricer_for`) or on its own (:func:`build_pricer`, for
the CLI and analytics). A model's rates are resolved the first time it is priced: your
``[pricing.models]`` entries first, then each source in ``[pricing] sources`` order, trying the
model's name as given and then its usual variants (an instance's provider type, a dated id's
base name, Azure as OpenAI, Bedrock and Vertex ids as their vendor's). What is found (or that
nothing is) is kept per model, with every multiplier folded in, so pricing a call is a dict
lookup and a few integer-times-Decimal products.

Volume discounts keep a running count of tokens per rule and calendar period (UTC) in the
pricer: per process, and reset when the ``[pricing]`` table changes. ``price()`` feeds the
count; ``quote()`` prices without counting (cache savings, what-if analysis).
"""

from __future__ import annotations

import fnmatch
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from tollway.errors import ConfigError
from tollway.pricing.config import ModelPriceConfig, PricingConfig
from tollway.pricing.rates import (
    CompiledRates,
    ModelRates,
    Tier,
    TokenRates,
    VolumeCounter,
    period_bounds,
)
from tollway.types import Cost, ImagePart, Request, Usage

if TYPE_CHECKING:
    from tollway.config import Config
    from tollway.plugins import PluginManager
    from tollway.stages import StageContext

log = structlog.get_logger("tollway.pricing")

Clock = Callable[[], float]

_ZERO = Decimal(0)
_ONE = Decimal(1)
# The sources [pricing] names when the config does not: missing ones are skipped quietly.
DEFAULT_SOURCES = ("toml", "genai-prices")
# Prompt overheads the estimate adds: per message (role and framing), once for priming the
# reply, and per image (the most any provider charges for one image at its largest size).
_TOKENS_PER_MESSAGE = 4
_TOKENS_PRIMING = 3
_TOKENS_PER_IMAGE = 1600


class PriceSource(Protocol):
    """What a ``tollway_register_pricing`` factory returns."""

    def rates(self, provider: str, model: str) -> ModelRates | None:
        """The prices of ``model`` of ``provider`` (a tollway provider type such as
        ``openai``, ``anthropic``, ``gemini``, ``bedrock``), or None when not known."""
        ...


SourceFactory = Callable[[], list[tuple[str, PriceSource]]]


# -- model names -------------------------------------------------------------------------------

# Provider types that sell another vendor's models at that vendor's prices.
_FAMILY = {"azure": "openai", "vertex": "gemini"}
_BEDROCK_REGION = re.compile(r"^(?:us|eu|apac|us-gov|ca|jp|au|global)\.")
_BEDROCK_VERSION = re.compile(r"-v\d+(?::\d+)?$")
# Bedrock's vendor prefixes and the tollway provider type whose prices they are.
_BEDROCK_VENDORS = {"anthropic": "anthropic", "meta": "meta", "mistral": "mistral"}
_DATED = re.compile(r"(?:-\d{4}-\d{2}-\d{2}|-\d{8}|@\d{8}|-latest|-\d{3,4})$")


def model_candidates(provider_type: str, model: str) -> list[tuple[str, str]]:
    """``(provider, model)`` pairs to look a model up by, most exact first."""
    out = [(provider_type, model)]
    if provider_type in ("gemini", "vertex"):
        for prefix in ("publishers/google/models/", "models/"):
            if model.startswith(prefix):
                out.append((provider_type, model[len(prefix) :]))
                break
    if provider_type == "bedrock":
        regional = _BEDROCK_REGION.sub("", model)
        if regional != model:
            out.append(("bedrock", regional))
        vendor, dot, rest = regional.partition(".")
        if dot and vendor in _BEDROCK_VENDORS:
            out.append((_BEDROCK_VENDORS[vendor], _BEDROCK_VERSION.sub("", rest)))
    if provider_type == "vertex" and model.startswith("claude"):
        out.append(("anthropic", model.replace("@", "-")))
    family = _FAMILY.get(provider_type)
    if family is not None:
        out.extend((family, name) for provider, name in list(out) if provider == provider_type)
    for provider, name in list(out):
        undated = _DATED.sub("", name)
        if undated != name and undated:
            out.append((provider, undated))
    seen: set[tuple[str, str]] = set()
    unique = []
    for pair in out:
        if pair not in seen:
            seen.add(pair)
            unique.append(pair)
    return unique


def rates_from_config(entry: ModelPriceConfig, source: str = "config") -> ModelRates:
    """A ``[pricing.models]`` entry (or a price table's) as :class:`ModelRates`."""
    return ModelRates(
        input_mtok=entry.input_mtok,
        output_mtok=entry.output_mtok,
        cache_read_mtok=entry.cache_read_mtok,
        cache_write_mtok=entry.cache_write_mtok,
        reasoning_mtok=entry.reasoning_mtok,
        request=entry.request,
        tiers=tuple(
            Tier(
                t.above_input_tokens,
                t.input_mtok,
                t.output_mtok,
                t.cache_read_mtok,
                t.cache_write_mtok,
                t.reasoning_mtok,
            )
            for t in entry.tiers
        ),
        currency=entry.currency.upper(),
        source=source,
        max_output_tokens=entry.max_output_tokens,
    )


# -- volume discounts --------------------------------------------------------------------------


class _VolumeRule:
    def __init__(self, match: str, period: str, steps: list[tuple[int, Decimal]], clock: Clock):
        self.match = match
        steps.sort()
        self.counter = VolumeCounter(period, [after for after, _ in steps], clock)
        # Step n applies the largest discount among the first n thresholds.
        factors = [_ONE]
        best = _ZERO
        for _, discount in steps:
            best = max(best, discount)
            factors.append(_ONE - best)
        self.factors = tuple(factors)

    def covers(self, instance: str, provider_type: str, model: str) -> bool:
        if self.match in ("*", instance, provider_type):
            return True
        return fnmatch.fnmatchcase(f"{instance}/{model}", self.match) or fnmatch.fnmatchcase(
            f"{provider_type}/{model}", self.match
        )


# -- the pricer --------------------------------------------------------------------------------

_UNRESOLVED: Any = object()


class TablePricer:
    """Prices calls from per-model rates resolved once; see the module docstring."""

    def __init__(
        self,
        config: PricingConfig,
        sources: Sequence[tuple[str, PriceSource]] | SourceFactory = (),
        *,
        provider_types: Mapping[str, str] | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.config = config
        self.currency = config.currency
        self.clock = clock
        self._make_sources: SourceFactory | None = None
        if callable(sources):
            self._make_sources = sources
            sources = sources()
        self._sources: list[tuple[str, PriceSource]] = list(sources)
        self._types = dict(provider_types or {})
        self._free = frozenset(config.free_providers)
        self._overrides = {key: rates_from_config(entry) for key, entry in config.models.items()}
        rules: dict[tuple[str, str], list[tuple[int, Decimal]]] = {}
        for rule in config.volume_discounts:
            rules.setdefault((rule.match, rule.period), []).append(
                (rule.after_tokens, rule.discount)
            )
        self._volume = [
            _VolumeRule(match, period, steps, clock) for (match, period), steps in rules.items()
        ]
        self._models: dict[str, CompiledRates | None] = {}
        self._zero = Cost(currency=self.currency)
        self._bytes_per_token = config.estimate_bytes_per_token
        self._default_output = config.default_output_tokens
        self._warned_currency: set[str] = set()

    # -- resolution (once per model) -------------------------------------------------------

    def rates(self, model: str) -> CompiledRates | None:
        """The compiled rates of ``model`` (canonical ``provider/model``), or None."""
        entry = self._models.get(model, _UNRESOLVED)
        if entry is _UNRESOLVED or (
            entry is not None
            and entry.valid_until is not None
            and self.clock() >= entry.valid_until
        ):
            entry = self._models[model] = self._resolve(model)
        return entry  # type: ignore[no-any-return]

    def model_rates(self, model: str) -> ModelRates | None:
        """What the source (or your config) says ``model`` costs, before any multiplier."""
        entry = self.rates(model)
        return entry.rates if entry is not None else None

    def knows(self, model: str) -> bool:
        return self.rates(model) is not None

    def _resolve(self, model: str) -> CompiledRates | None:
        instance, sep, name = model.partition("/")
        if not sep or not name:
            return None
        provider_type = self._types.get(instance, instance)
        if instance in self._free or provider_type in self._free:
            found: ModelRates | None = ModelRates(source="free", model_id=name)
        else:
            found = self._lookup(instance, provider_type, name)
        if found is None:
            return None
        exchange = self._exchange(found.currency)
        if exchange is None:
            return None
        factor = exchange
        discount = self._most_specific(self.config.discounts, instance, provider_type, name)
        if discount is not None:
            factor *= _ONE - discount
        margin = self._most_specific(self.config.margins, instance, provider_type, name)
        if margin is not None:
            factor *= _ONE + margin
        for rule in self._volume:
            if rule.covers(instance, provider_type, name):
                return CompiledRates(
                    model, found, factor, self.currency, rule.factors, rule.counter
                )
        return CompiledRates(model, found, factor, self.currency)

    def _lookup(self, instance: str, provider_type: str, name: str) -> ModelRates | None:
        candidates = model_candidates(provider_type, name)
        overrides = self._overrides
        if overrides:
            for provider, candidate in candidates:
                for key in (f"{instance}/{candidate}", f"{provider}/{candidate}"):
                    found = overrides.get(key)
                    if found is not None:
                        return found
        for provider, candidate in candidates:
            for source_name, source in self._sources:
                try:
                    found = source.rates(provider, candidate)
                except Exception as exc:  # one broken source must not fail the call
                    log.warning(
                        "price_source_failed",
                        source=source_name,
                        model=f"{provider}/{candidate}",
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    continue
                if found is not None:
                    return found
        return None

    def _exchange(self, currency: str) -> Decimal | None:
        if currency == self.currency:
            return _ONE
        rate = self.config.exchange_rates.get(currency)
        if rate is None and currency not in self._warned_currency:
            self._warned_currency.add(currency)
            log.warning(
                "pricing_currency_unknown",
                currency=currency,
                reporting_currency=self.currency,
                effect="models priced in it are treated as unknown (cost 0)",
                fix=f'set [pricing.exchange_rates] {currency} = "..."',
            )
        return rate

    @staticmethod
    def _most_specific(
        table: Mapping[str, Decimal], instance: str, provider_type: str, name: str
    ) -> Decimal | None:
        if not table:
            return None
        for key in (f"{instance}/{name}", f"{provider_type}/{name}", instance, provider_type, "*"):
            value = table.get(key)
            if value is not None:
                return value
        return None

    # -- the request path ------------------------------------------------------------------

    def price(self, model: str, usage: Usage) -> Cost:
        """What ``usage`` of ``model`` costs, and count it toward volume discounts.

        An unknown model costs zero (see :meth:`knows`).
        """
        entry: CompiledRates | None = self._models.get(model, _UNRESOLVED)
        if entry is _UNRESOLVED or (entry is not None and entry.valid_until is not None):
            entry = self.rates(model)
        if entry is None:
            return self._zero
        volume = entry.volume
        if volume is None:
            return entry.select(usage.input_tokens).cost(usage, entry.currency)
        cost = entry.select(usage.input_tokens, volume.current()).cost(usage, entry.currency)
        volume.add(usage.input_tokens + usage.output_tokens)
        return cost

    def quote(self, model: str, usage: Usage) -> Cost:
        """What ``usage`` of ``model`` would cost now, without counting it (a cache hit's
        saving, a what-if)."""
        entry = self.rates(model)
        if entry is None:
            return self._zero
        volume = entry.volume
        level = volume.current() if volume is not None else 0
        return entry.select(usage.input_tokens, level).cost(usage, entry.currency)

    def count(self, model: str, usage: Usage) -> None:
        """Count ``usage`` toward volume discounts without pricing it (a stream's usage,
        priced with :meth:`quote` as it arrived)."""
        entry = self.rates(model)
        if entry is not None and entry.volume is not None:
            entry.volume.current()
            entry.volume.add(usage.input_tokens + usage.output_tokens)

    def estimate(self, request: Request) -> Decimal:
        """The most the call can cost: the prompt's tokens estimated offline (one per
        ``estimate_bytes_per_token`` UTF-8 bytes, plus framing, tools and images) at the
        highest input-side rate, plus ``max_tokens`` (else the model's ``max_output_tokens``,
        else ``default_output_tokens``) at the higher of the output and reasoning rates, plus
        the per-request price. Zero for an unknown model."""
        entry = self.rates(request.model)
        if entry is None:
            return _ZERO
        prompt = self.prompt_tokens(request)
        output = request.max_tokens
        if output is None:
            output = entry.rates.max_output_tokens or self._default_output
        volume = entry.volume
        rates = entry.select(prompt, volume.current() if volume is not None else 0)
        return (
            prompt * max(rates.input, rates.cache_read, rates.cache_write)
            + output * max(rates.output, rates.reasoning)
            + rates.request
        )

    def prompt_tokens(self, request: Request) -> int:
        """An offline, deliberately high guess at the prompt's token count."""
        size = 0
        images = 0
        for message in request.messages:
            content = message.content
            if isinstance(content, str):
                size += len(content) if content.isascii() else len(content.encode())
            else:
                for part in content:
                    if isinstance(part, ImagePart):
                        images += 1
                    else:
                        text = part.text
                        size += len(text) if text.isascii() else len(text.encode())
            for call in message.tool_calls:
                size += len(call.name) + len(call.arguments.encode())
        for tool in request.tools:
            size += len(tool.name) + len(tool.description.encode())
            size += len(json.dumps(tool.parameters, separators=(",", ":")).encode())
        return (
            -(-size // self._bytes_per_token)
            + _TOKENS_PER_MESSAGE * len(request.messages)
            + _TOKENS_PRIMING
            + _TOKENS_PER_IMAGE * images
        )

    # -- reloading -------------------------------------------------------------------------

    def reload(self) -> None:
        """Read the sources again (a changed price file, fresh genai-prices data) and forget
        every resolved model. Volume counts are kept."""
        if self._make_sources is not None:
            self._sources = self._make_sources()
        else:
            for _, source in self._sources:
                reload = getattr(source, "reload", None)
                if reload is not None:
                    reload()
        self._models = {}

    def forget(self, models: Iterable[str] | None = None) -> None:
        """Resolve ``models`` (or every model) again at their next call."""
        if models is None:
            self._models = {}
        else:
            for model in models:
                self._models.pop(model, None)


# -- building ----------------------------------------------------------------------------------


def _source_factory(config: Config, plugins: PluginManager) -> SourceFactory:
    pricing = config.pricing
    registered = plugins.registrations("pricing")
    chosen = []
    for name in pricing.sources:
        registration = registered.get(name)
        if registration is None:
            if tuple(pricing.sources) == DEFAULT_SOURCES:
                log.debug("price_source_not_installed", source=name)
                continue
            hint = (
                ' (install it: pip install "tollway[genai-prices]")'
                if name == "genai-prices"
                else ""
            )
            raise ConfigError(
                f"no price source is called {name!r}{hint}; the installed ones are: "
                f"{', '.join(sorted(registered)) or 'none'}",
                key="pricing.sources",
            )
        options = {**registration.options, **pricing.source_options.get(name, {})}
        chosen.append((name, registration.factory, options))

    def make() -> list[tuple[str, PriceSource]]:
        sources = []
        for name, factory, options in chosen:
            try:
                sources.append((name, factory(options)))
            except (ValueError, TypeError, OSError) as exc:
                raise ConfigError(
                    f"the price source {name!r} cannot start: {exc}",
                    key=f"pricing.source_options.{name}",
                ) from exc
        return sources

    return make


def build_pricer(
    config: Config, plugins: PluginManager, *, clock: Clock = time.time
) -> TablePricer:
    """A pricer for ``config``, outside a pipeline (the CLI, analytics, reports)."""
    types = {name: settings.type or name for name, settings in config.providers.items()}
    return TablePricer(
        config.pricing, _source_factory(config, plugins), provider_types=types, clock=clock
    )


def pricer_for(context: StageContext) -> TablePricer:
    """The pricer of one pipeline assembly, built by the first stage that asks."""
    found = context.shared.get("pricer")
    if found is None:
        found = context.shared["pricer"] = build_pricer(context.config, context.plugins)
    pricer: TablePricer = found
    return pricer


__all__ = [
    "DEFAULT_SOURCES",
    "PriceSource",
    "TablePricer",
    "TokenRates",
    "VolumeCounter",
    "build_pricer",
    "model_candidates",
    "period_bounds",
    "pricer_for",
    "rates_from_config",
]
