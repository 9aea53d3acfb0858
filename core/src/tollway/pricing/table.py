"""The ``toml`` price source: the core's shipped price table, plus tables of your own.

A table is TOML with one ``[models."PROVIDER/MODEL"]`` entry per model (see ``prices.toml``
next to this module for the format). ``[pricing.source_options.toml] files = [...]`` adds
tables read after the shipped one; a later table's entry for a model replaces an earlier one's.
Set ``shipped = false`` there to use only your own files.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import attrs

from tollway.errors import ConfigError
from tollway.pricing.config import ModelPriceConfig
from tollway.pricing.rates import ModelRates

SHIPPED = "prices.toml"
# Entry keys that describe the entry rather than price it.
_META_KEYS = ("aliases", "source", "as_of")


def shipped_table_text() -> str:
    return resources.files("tollway.pricing").joinpath(SHIPPED).read_text(encoding="utf-8")


def parse_table(text: str, origin: str) -> dict[str, ModelRates]:
    """``provider/model`` (lowercase, aliases included) -> its rates. Raises ConfigError."""
    from tollway.converter import converter, structure_errors
    from tollway.pricing.pricer import rates_from_config

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=origin) from None
    unknown = set(data) - {"models"}
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(sorted(unknown))}; a price table holds only "
            '[models."PROVIDER/MODEL"] entries',
            file=origin,
        )
    models = data.get("models", {})
    if not isinstance(models, Mapping):
        raise ConfigError("expected a table of models", file=origin, key="models")
    out: dict[str, ModelRates] = {}
    for key, raw in models.items():
        where = f'models."{key}"'
        provider, sep, model = key.partition("/")
        if not sep or not model:
            raise ConfigError("name the model PROVIDER/MODEL", file=origin, key=where)
        if not isinstance(raw, Mapping):
            raise ConfigError("expected a table of prices", file=origin, key=where)
        entry = dict(raw)
        aliases = entry.pop("aliases", [])
        source = str(entry.pop("source", ""))
        entry.pop("as_of", None)
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise ConfigError("expected a list of model ids", file=origin, key=f"{where}.aliases")
        try:
            prices = converter.structure(entry, ModelPriceConfig)
        except Exception as exc:
            problems = structure_errors(exc)
            sub, message = problems[0]
            raise ConfigError(
                message, file=origin, key=f"{where}.{sub}" if sub else where
            ) from None
        rates = rates_from_config(prices, source=f"toml:{source or origin}")
        for name in (model, *aliases):
            out[f"{provider}/{name}".lower()] = _with_id(rates, model)
    return out


def _with_id(rates: ModelRates, model_id: str) -> ModelRates:
    return attrs.evolve(rates, model_id=model_id)


class TomlPriceTable:
    """A price source over one or more TOML price tables."""

    def __init__(self, files: Iterable[str | Path] = (), *, shipped: bool = True) -> None:
        self.files = [Path(f) for f in files]
        self.shipped = shipped
        self._models: dict[str, ModelRates] = {}
        self.reload()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TomlPriceTable:
        unknown = set(options) - {"files", "shipped"}
        if unknown:
            raise ValueError(
                f"unknown option(s) {', '.join(sorted(unknown))}; the toml source takes "
                "files (a list of paths) and shipped (true or false)"
            )
        files = options.get("files", [])
        if isinstance(files, (str, Path)) or not isinstance(files, list):
            raise ValueError(f"files must be a list of paths, got {files!r}")
        return cls(files, shipped=bool(options.get("shipped", True)))

    def reload(self) -> None:
        """Read every table again; the shipped one first, then ``files`` in order."""
        models: dict[str, ModelRates] = {}
        if self.shipped:
            models.update(parse_table(shipped_table_text(), f"tollway/pricing/{SHIPPED}"))
        for file in self.files:
            try:
                text = file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the price table: {exc.strerror}; fix the path in "
                    "[pricing.source_options.toml] files",
                    file=str(file),
                ) from None
            models.update(parse_table(text, str(file)))
        self._models = models

    def rates(self, provider: str, model: str) -> ModelRates | None:
        return self._models.get(f"{provider}/{model}".lower())

    def models(self) -> dict[str, ModelRates]:
        """Every entry, aliases included, by lowercase ``provider/model``."""
        return dict(self._models)
