"""`tollway report`: a spend report from the usage store, as JSON, CSV, HTML or PDF.

JSON and CSV are built in; HTML and PDF come from the tollway-reports plugin. Everything
beyond click is imported inside the command, so ``tollway --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tollway.cli import main

if TYPE_CHECKING:
    from tollway.config import Config
    from tollway.plugins import PluginManager
    from tollway.pricing.base import Pricer
    from tollway.usage.store import UsageStore

FORMATS = ("json", "csv", "html", "pdf")


def open_usage_store(config: Config, plugins: PluginManager) -> UsageStore:
    """The store ``[usage] store`` names, built by its registered factory from ``[usage]``."""
    from tollway.errors import ConfigError

    stores = plugins.registrations("usage_stores")
    registration = stores.get(config.usage.store)
    if registration is None:
        known = ", ".join(sorted(stores)) or "none"
        hint = ' (pip install "tollway[postgres]")' if config.usage.store == "postgres" else ""
        raise ConfigError(
            f"no usage store is called {config.usage.store!r}{hint}; the registered stores "
            f"are: {known}",
            file=config.source,
            key="usage.store",
        )
    store: UsageStore = registration.factory(config.usage)
    return store


def open_pricer(config: Config, plugins: PluginManager) -> Pricer | None:
    """The pipeline's pricer, for re-pricing traffic on other models; ``None`` when pricing
    cannot be set up (the report then says which recommendations it could not look for)."""
    from tollway.errors import TollwayError

    try:
        from tollway.pricing.pricer import build_pricer  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    try:
        pricer: Pricer = build_pricer(config, plugins)
    except TollwayError as exc:
        click.secho(f"warning: prices are unavailable ({exc}); reporting without them", err=True)
        return None
    return pricer


def _parse_filters(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, wanted = value.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(
                f"{value!r} is not DIMENSION=VALUE (e.g. team=research, tag:project=atlas)",
                param_hint="--filter",
            )
        out[name.strip()] = wanted.strip()
    return out


def _guess_format(output: str | None) -> str:
    if output:
        suffix = Path(output).suffix.lower().lstrip(".")
        if suffix in FORMATS:
            return suffix
        if suffix == "htm":
            return "html"
    return "json"


@main.command()
@click.option(
    "--since",
    default="30d",
    show_default=True,
    help="Start: a duration before now (30d, 12h, 2w), 'today', or an ISO date/time (UTC).",
)
@click.option("--until", default=None, help="End (exclusive), in the same forms; default now.")
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(FORMATS, case_sensitive=False),
    default=None,
    help="Output format; default from --output's suffix, else json. "
    'html and pdf need tollway-reports (pip install "tollway[reports]").',
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the report here instead of to standard output.",
)
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Config file (default: $TOLLWAY_CONFIG or ./tollway.toml); [usage] names the store.",
)
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="DIM=VALUE",
    help="Only calls with this value (team=research, user=u-17, tag:project=atlas); repeatable.",
)
@click.option(
    "--by",
    "dimensions",
    multiple=True,
    metavar="DIM",
    help="Add a breakdown by this dimension (api_key_id, session, tag:NAME); repeatable.",
)
@click.option("--top", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--title", default="LLM spend report", show_default=True)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show progress on standard error (default: when it is a terminal).",
)
def report(
    since: str,
    until: str | None,
    fmt: str | None,
    output: str | None,
    config_path: str | None,
    filters: tuple[str, ...],
    dimensions: tuple[str, ...],
    top: int,
    title: str,
    progress: bool | None,
) -> None:
    """Spend over a period: totals, breakdowns, daily spend, trend, month-end forecast and
    recommendations with the money each would save.

    \b
    tollway report --since 30d -o spend.pdf
    tollway report --since 2025-06-01 --until 2025-07-01 --format csv > june.csv
    tollway report --since 7d --filter team=research --by tag:project
    """
    import datetime as dt

    from tollway.analytics.spend import Window, parse_time

    now = dt.datetime.now(dt.UTC)
    try:
        window = Window(parse_time(since, now), parse_time(until, now) if until else now)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    fmt = (fmt or _guess_format(output)).lower()
    binary_to_terminal = output is None and fmt == "pdf" and sys.stdout.isatty()
    if binary_to_terminal:
        raise click.UsageError("a PDF is not for the terminal: give --output FILE.pdf")
    show_progress = sys.stderr.isatty() if progress is None else progress
    data = asyncio.run(
        _report(
            config_path,
            window,
            fmt,
            _parse_filters(filters),
            dimensions,
            top,
            title,
            show_progress,
        )
    )
    if output is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    Path(output).write_bytes(data)
    click.echo(f"wrote {output} ({fmt}, {len(data):,} bytes)", err=True)


async def _report(
    config_path: str | None,
    window: Any,
    fmt: str,
    filters: dict[str, str],
    dimensions: tuple[str, ...],
    top: int,
    title: str,
    show_progress: bool,
) -> bytes:
    from tollway.analytics.progress import NullProgress, Progress, StderrProgress
    from tollway.analytics.report import build_report, renderer_for
    from tollway.config import find_config_file, load_config
    from tollway.logging import configure_logging
    from tollway.plugins import build_plugin_manager
    from tollway.usage.records import UsageQuery

    plugins = build_plugin_manager()
    config = load_config(find_config_file(config_path), plugins=plugins)
    # Logs go to standard error, so that a report on standard output stays clean.
    configure_logging(config.logging.level, config.logging.format)
    # Before any work: a missing renderer or a bad filter should fail at once.
    renderer = renderer_for(fmt, plugins)
    try:
        UsageQuery(filters=filters, group_by=tuple(dimensions))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    pricer = open_pricer(config, plugins)
    store = open_usage_store(config, plugins)
    ticker: Progress = StderrProgress() if show_progress else NullProgress()
    try:
        built = await build_report(
            store,
            window,
            pricer,
            title=title,
            filters=filters,
            dimensions=(*("model", "team", "user", "provider"), *dimensions),
            top=top,
            progress=ticker,
        )
    finally:
        await store.aclose()
        close: Any = getattr(pricer, "aclose", None)
        if callable(close):
            result = close()
            if inspect.isawaitable(result):
                await result
    if show_progress:
        click.echo(f"rendering {fmt}...", err=True)
    return renderer.render(built)
