"""``tollway usage``: spend and tokens from the configured usage store, filtered and grouped."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import sys
from decimal import Decimal
from typing import Any

import click

from tollway.cli import main

_AGE = re.compile(r"^(\d+)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``7d``/``24h``/``30m``/``2w`` ago, or an ISO date or time (UTC unless it says)."""
    text = text.strip()
    found = _AGE.match(text)
    if found:
        amount, unit = int(found.group(1)), found.group(2)
        return (now or dt.datetime.now(dt.UTC)) - dt.timedelta(**{_UNITS[unit]: amount})
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither an age (7d, 24h, 30m, 2w) nor a date (2026-11-01) or time "
            "(2026-11-01T09:00)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def format_money(amount: Decimal, currency: str) -> str:
    """Readable money: more decimals for small sums, so a tenth of a cent still shows."""
    size = abs(amount)
    places = 2 if size >= 100 else 4 if size >= 1 else 6
    return f"{currency} {amount:,.{places}f}"


@main.command("usage")
@click.option("--since", default="7d", show_default=True, help="An age (7d, 24h) or a date.")
@click.option("--until", default=None, help="An age or a date (default: now).")
@click.option("--user", help="Only this user.")
@click.option("--team", help="Only this team.")
@click.option("--model", help="Only this model (PROVIDER/MODEL as recorded).")
@click.option("--provider", help="Only this provider.")
@click.option(
    "--by",
    "group_by",
    default="",
    help="Group by these, comma-separated: user, team, model, provider, session, api_key_id, "
    "cached, stream, tag:NAME, and one of hour, day, week, month.",
)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
    show_default=True,
)  # fmt: skip
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False))
def usage_command(
    since: str,
    until: str | None,
    user: str | None,
    team: str | None,
    model: str | None,
    provider: str | None,
    group_by: str,
    fmt: str,
    config_path: str | None,
) -> None:
    """Show spend and tokens from the usage store, filtered and grouped."""
    from tollway.usage.records import UsageQuery

    filters = {
        name: value
        for name, value in (
            ("user", user),
            ("team", team),
            ("model", model),
            ("provider", provider),
        )
        if value
    }
    groups = tuple(g.strip() for g in group_by.split(",") if g.strip())
    try:
        query = UsageQuery(
            since=parse_when(since),
            until=parse_when(until) if until else None,
            filters=filters,
            group_by=groups,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--by") from None
    rows = asyncio.run(_query(config_path, query))
    if fmt != "table":
        from tollway.usage.export import write_rows

        write_rows(rows, sys.stdout, fmt, groups)
        return
    _print_table(rows, groups)


async def _query(config_path: str | None, query: Any) -> list[Any]:
    from tollway.config import find_config_file, load_config
    from tollway.errors import ConfigError
    from tollway.plugins import build_plugin_manager
    from tollway.usage.store import open_store

    plugins = build_plugin_manager()
    file = find_config_file(config_path)
    config = load_config(file, plugins=plugins)
    settings = config.usage
    if settings.store == "memory":
        raise ConfigError(
            "the memory usage store forgets everything when its process ends, so there is "
            'nothing to read; use store = "sqlite" or "postgres"',
            file=config.source,
            key="usage.store",
        )
    if settings.store == "sqlite":
        from pathlib import Path

        from tollway.usage.sqlite import default_path

        path = Path(settings.path) if settings.path else default_path()
        if not path.exists():
            hint = (
                "no call has been recorded yet"
                if settings.enabled
                else "usage recording is off: set enabled = true in [usage]"
            )
            raise ConfigError(
                f"no usage database at {path}; {hint} (or point [usage] path at the file)",
                file=config.source,
                key="usage",
            )
    store = open_store(settings, plugins)
    try:
        rows: list[Any] = await store.query(query)
    except ConnectionError as exc:
        raise ConfigError(str(exc), file=config.source, key="usage") from None
    finally:
        await store.aclose()
    return rows


def _print_table(rows: list[Any], groups: tuple[str, ...]) -> None:
    if not rows:
        click.echo("no usage recorded in that range")
        return
    header = [*groups, "calls", "input", "output", "cached", "cost", "saved"]
    lines = []
    totals: dict[str, Decimal] = {}
    calls = tokens_in = tokens_out = cached = 0
    for row in rows:
        group = ["-" if row.group.get(g) is None else str(row.group[g]) for g in groups]
        lines.append(
            [
                *group,
                f"{row.calls:,}",
                f"{row.input_tokens:,}",
                f"{row.output_tokens:,}",
                f"{row.cached_calls:,}",
                format_money(row.cost, row.currency),
                format_money(row.saved, row.currency),
            ]
        )
        totals[row.currency] = totals.get(row.currency, Decimal(0)) + row.cost
        calls += row.calls
        tokens_in += row.input_tokens
        tokens_out += row.output_tokens
        cached += row.cached_calls
    if len(rows) > 1:
        total_cost = " + ".join(format_money(v, c) for c, v in sorted(totals.items()))
        lines.append(
            [*(["total"] + [""] * (len(groups) - 1) if groups else []),
             f"{calls:,}", f"{tokens_in:,}", f"{tokens_out:,}", f"{cached:,}", total_cost, ""]
        )  # fmt: skip
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines, strict=True)]
    numeric = len(groups)

    def render(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < numeric else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    click.echo(render(header))
    for line in lines:
        click.echo(render(line))
