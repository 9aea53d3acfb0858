"""The ``tollway`` command. Subcommands import what they need when they run."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from tollway.errors import TollwayError


class _Group(click.Group):
    """Turns tollway's errors into one clear line and exit status 1, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TollwayError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(1)


@click.group(cls=_Group)
@click.version_option(package_name="tollway")
def main() -> None:
    """tollway: every LLM call of your application passes through it."""


def _setup(config_path: str | None, log_level: str | None) -> Any:
    from tollway.logging import configure_logging
    from tollway.pipeline import Pipeline

    pipe = Pipeline.from_config(config_path)
    configure_logging(log_level or pipe.config.logging.level, pipe.config.logging.format)
    return pipe


@main.command()
@click.argument("prompt", required=False)
@click.option(
    "-m", "--model", help="PROVIDER/MODEL; defaults to default_model, else the local model."
)
@click.option("-s", "--system", help="A system prompt.")
@click.option("--max-tokens", type=int, default=None, help="Upper bound on answer tokens.")
@click.option("-t", "--temperature", type=float, default=None)
@click.option(
    "--stream/--no-stream", default=True, show_default=True, help="Print the answer as it comes."
)
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Config file (default: $TOLLWAY_CONFIG or ./tollway.toml).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the response as JSON.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
def chat(
    prompt: str | None,
    model: str | None,
    system: str | None,
    max_tokens: int | None,
    temperature: float | None,
    stream: bool,
    config_path: str | None,
    as_json: bool,
    log_level: str | None,
) -> None:
    """Ask a model one question and print the answer and its usage.

    PROMPT may be omitted to read it from standard input.
    """
    if prompt is None:
        if sys.stdin.isatty():
            raise click.UsageError("give a PROMPT, or pipe one in on standard input")
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise click.UsageError("the prompt is empty")
    messages: list[dict[str, str]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    asyncio.run(
        _chat(
            config_path,
            log_level,
            model,
            messages,
            max_tokens,
            temperature,
            stream and not as_json,
            as_json,
        )
    )


async def _chat(
    config_path: str | None,
    log_level: str | None,
    model: str | None,
    messages: Sequence[dict[str, str]],
    max_tokens: int | None,
    temperature: float | None,
    stream: bool,
    as_json: bool,
) -> None:
    from tollway.streaming import StreamAssembler

    async with _setup(config_path, log_level) as pipe:
        params = {"max_tokens": max_tokens, "temperature": temperature}
        request = pipe.request(model, messages, **params)
        if stream:
            assembler = StreamAssembler(request.provider, request.model)
            async for chunk in pipe.send_stream(request):
                assembler.add(chunk)
                if chunk.text:
                    click.echo(chunk.text, nl=False)
            click.echo()
            # The usage line goes to stderr; let the answer reach the terminal first.
            sys.stdout.flush()
            response = assembler.response()
        else:
            response = await pipe.send(request)
            if not as_json:
                click.echo(response.text)
        if as_json:
            from tollway.converter import unstructure

            click.echo(json.dumps(unstructure(response), indent=2, default=str))
            return
        u = response.usage
        detail = [f"{u.input_tokens} in", f"{u.output_tokens} out"]
        if u.cache_read_tokens:
            detail.append(f"{u.cache_read_tokens} cached")
        if u.reasoning_tokens:
            detail.append(f"{u.reasoning_tokens} reasoning")
        money = ""
        if response.cached:
            money = f" | cached, saved {response.saved.normalize():f}"
        elif response.cost is not None:
            money = f" | {response.cost.currency} {response.cost.total.normalize():f}"
        click.secho(
            f"[{response.model} | {', '.join(detail)} tokens{money} | "
            f"finish: {response.finish_reason}]",
            dim=True,
            err=True,
        )


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def plugins(as_json: bool) -> None:
    """List installed plugins: name, version and the hooks each implements."""
    from tollway.plugins import build_plugin_manager

    manager = build_plugin_manager()
    infos = manager.plugins()
    providers = manager.providers()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "plugins": [
                        {
                            "name": p.name,
                            "version": p.version,
                            "distribution": p.distribution,
                            "hooks": list(p.hooks),
                            "builtin": p.builtin,
                        }
                        for p in infos
                    ],
                    "providers": {name: t.plugin for name, t in sorted(providers.items())},
                    "failures": [
                        {"name": f.name, "error": f.error, "stage": f.stage}
                        for f in manager.failures
                    ],
                },
                indent=2,
            )
        )
        return
    for info in infos:
        label = info.distribution or info.name
        version = info.version or "?"
        kind = " (built in)" if info.builtin else ""
        click.echo(f"{info.name}  {label} {version}{kind}")
        click.echo(f"    hooks: {', '.join(info.hooks) or '-'}")
        offered = sorted(n for n, t in providers.items() if t.plugin == info.name)
        if offered:
            click.echo(f"    providers: {', '.join(offered)}")
    for failure in manager.failures:
        click.secho(f"{failure.name}  FAILED at {failure.stage}: {failure.error}", fg="red")


@main.group()
def config() -> None:
    """Check and show configuration."""


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def config_check(file: str) -> None:
    """Load FILE as tollway would, and say what is wrong with it, if anything."""
    from tollway.config import load_config
    from tollway.plugins import build_plugin_manager

    manager = build_plugin_manager()
    cfg = load_config(file, plugins=manager)
    click.echo(f"{file}: ok")
    if cfg.default_model:
        click.echo(f"  default_model: {cfg.default_model}")
    for name, settings in sorted(cfg.providers.items()):
        click.echo(f"  providers.{name}: type {settings.type}")
    for alias, target in sorted(cfg.aliases.items()):
        click.echo(f"  alias {alias} -> {target}")


@main.command()
@click.argument("provider", required=False)
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False))
def models(provider: str | None, config_path: str | None) -> None:
    """List the models of PROVIDER, or of every configured provider."""

    async def run() -> None:
        async with _setup(config_path, None) as pipe:
            for info in await pipe.list_models(provider):
                click.echo(f"{info.provider}/{info.id}")

    asyncio.run(run())


# Subcommands of their own modules register on ``main`` when imported; each keeps its heavy
# imports inside its functions, so ``tollway --help`` stays fast.
from tollway.cli import budget, report, usage  # noqa: E402, F401
