"""`tollway budget`: what each budget has spent, and the emergency stop.

These commands act on the configured counters backend (``[budgets] backend``). With ``local``
the counters live inside each running process, so from the command line there is nothing to
see or stop: to watch or stop a running service from here, its budgets must use a shared
backend (``backend = "redis"``, from tollway-redis). Everything beyond click is imported inside
the commands, so ``tollway --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import click

from tollway.cli import main

if TYPE_CHECKING:
    from tollway.config import Config

_LOCAL_NOTE = (
    "note: [budgets] backend is 'local': each process keeps its own counters, and this command "
    "sees none of them. To watch or stop a running service from here, set [budgets] backend = "
    '"redis" (pip install "tollway[redis]").'
)

_CONFIG_OPTION = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="The config file (default: $TOLLWAY_CONFIG, else ./tollway.toml).",
)


def open_counters(config_path: str | None) -> tuple[Config, Any]:
    """The loaded config and the counters ``[budgets] backend`` names."""
    from tollway.config import find_config_file, load_config
    from tollway.errors import ConfigError
    from tollway.metrics import Metrics
    from tollway.plugins import build_plugin_manager

    plugins = build_plugin_manager()
    config = load_config(find_config_file(config_path), plugins=plugins)
    backend = config.budgets.backend
    backends = plugins.registrations("budget_counters")
    registration = backends.get(backend)
    if registration is None:
        hint = ' (pip install "tollway[redis]")' if backend == "redis" else ""
        raise ConfigError(
            f"no budget counters backend is called {backend!r}{hint}; set it to one of: "
            f"{', '.join(sorted(backends)) or 'none'}",
            file=config.source,
            key="budgets.backend",
        )
    return config, registration.factory(config.budgets, Metrics())


def _note_if_local(config: Config) -> None:
    if config.budgets.backend == "local":
        click.secho(_LOCAL_NOTE, fg="yellow", err=True)


@main.group()
def budget() -> None:
    """Budgets: spend per budget, and the emergency stop.

    These act on the configured counters backend. With the default backend ("local") each
    process counts on its own and nothing here reaches a running service: set [budgets]
    backend = "redis" for that.
    """


@budget.command("status")
@_CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def status(config_path: str | None, as_json: bool) -> None:
    """Each budget in its current window: spent, reserved, remaining, and when it resets."""
    asyncio.run(_status(config_path, as_json))


async def _status(config_path: str | None, as_json: bool) -> None:
    import time

    from tollway.budgets.alerts import money
    from tollway.budgets.stage import Budgets
    from tollway.budgets.windows import iso

    config, counters = open_counters(config_path)
    try:
        now = time.time()
        rows = await Budgets(config.budgets).status(counters, now, config.pricing.currency)
        stop = await counters.stopped()
    finally:
        await counters.aclose()
    if as_json:
        payload = {
            "backend": config.budgets.backend,
            "emergency_stop": (
                None if stop is None else {"reason": stop[0], "since": iso(stop[1])}
            ),
            "budgets": [row.to_dict() for row in rows],
        }
        click.echo(json.dumps(payload, indent=2))
        _note_if_local(config)
        return
    if stop is not None:
        click.secho(
            f"EMERGENCY STOP since {iso(stop[1])}: {stop[0]}\n"
            "  every call is refused; `tollway budget reset` lifts it",
            fg="red",
            bold=True,
        )
    else:
        click.echo("emergency stop: not tripped")
    if not rows:
        click.echo(
            "no budgets to show"
            + (" (none configured in [[budgets.limits]])" if not config.budgets.limits else "")
        )
    else:
        header = ("budget", "window", "spent", "reserved", "remaining", "amount", "resets")
        table = [header]
        for row in rows:
            table.append(
                (
                    row.budget + ("" if row.hard else " (soft)"),
                    row.window,
                    money(row.spent, row.currency),
                    money(row.reserved, row.currency),
                    money(row.remaining, row.currency),
                    money(row.amount, row.currency),
                    iso(row.window_end) if row.window_end is not None else "rolling",
                )
            )
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]
        for line in table:
            click.echo(
                "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
            )
    _note_if_local(config)


@budget.command("trip")
@_CONFIG_OPTION
@click.option("--reason", default="tripped by an operator", help="Why; shown in every refusal.")
def trip(config_path: str | None, reason: str) -> None:
    """Trip the emergency stop: every call is refused until `tollway budget reset`.

    Reaches running services only through a shared backend (redis).
    """

    async def run() -> bool:
        import time

        config, counters = open_counters(config_path)
        _note_if_local(config)
        try:
            return bool(await counters.trip(reason, time.time()))
        finally:
            await counters.aclose()

    if asyncio.run(run()):
        click.echo(f"emergency stop tripped: {reason}")
    else:
        click.echo("the emergency stop was already tripped; `tollway budget status` says why")


@budget.command("reset")
@_CONFIG_OPTION
def reset(config_path: str | None) -> None:
    """Reset the emergency stop: calls go through again.

    Reaches running services only through a shared backend (redis).
    """

    async def run() -> bool:
        config, counters = open_counters(config_path)
        _note_if_local(config)
        try:
            return bool(await counters.reset())
        finally:
            await counters.aclose()

    if asyncio.run(run()):
        click.echo("emergency stop reset: calls go through again")
    else:
        click.echo("the emergency stop was not tripped")
