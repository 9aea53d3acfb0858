"""The Pipeline: routing, the stage chain, input normalisation, hot reload and closing."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from tollway import hookimpl
from tollway.errors import ConfigError, UnknownModelError
from tollway.pipeline import Pipeline, Stage
from tollway.providers import ProviderContext, ProviderSettings
from tollway.streaming import StreamAssembler
from tollway.types import Message, ModelInfo, Request, Response, StreamChunk, Tool, Usage


class ScriptedProvider:
    """Answers with its label and the last user text; records what it saw; can be held."""

    def __init__(self, name: str, label: str = "scripted") -> None:
        self.name = name
        self.label = label
        self.seen: list[Request] = []
        self.closed = False
        self.gate: asyncio.Event | None = None
        self.stream_closed = False

    async def complete(self, request: Request) -> Response:
        self.seen.append(request)
        if self.gate is not None:
            await self.gate.wait()
        text = f"{self.label}:{request.messages[-1].text}"
        return Response(
            "r1", request.model, self.name, Message("assistant", text), "stop", Usage(3, 2)
        )

    async def stream(self, request: Request) -> AsyncIterator[StreamChunk]:
        self.seen.append(request)
        try:
            for piece in (f"{self.label}:", request.messages[-1].text):
                yield StreamChunk(text=piece)
            yield StreamChunk(finish_reason="stop", usage=Usage(3, 2))
        finally:
            self.stream_closed = True

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo("m", self.name)]

    async def aclose(self) -> None:
        self.closed = True


@attrs.define(kw_only=True)
class ScriptedSettings(ProviderSettings):
    label: str = "scripted"
    default_model: str | None = "base"


class ScriptedPlugin:
    """A plugin object offering the provider type ``scripted``; keeps every instance made."""

    def __init__(self) -> None:
        self.made: list[ScriptedProvider] = []

    @hookimpl
    def tollway_register_providers(self, register: Callable[..., None]) -> None:
        def factory(settings: ScriptedSettings, context: ProviderContext) -> ScriptedProvider:
            provider = ScriptedProvider(context.name, settings.label)
            self.made.append(provider)
            return provider

        register("scripted", factory, settings=ScriptedSettings)


@pytest.fixture(autouse=True)
def _no_installed_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLWAY_DISABLE_PLUGIN_AUTOLOAD", "1")


class Recorder(Stage):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def complete(self, request: Request, call_next: Any) -> Response:
        self.log.append(f"{self.name}>")
        response = await call_next(request)
        self.log.append(f"<{self.name}")
        return response


class CompleteOnly(Stage):
    async def complete(self, request: Request, call_next: Any) -> Response:
        return await call_next(request)


class ShortCircuit(Stage):
    async def complete(self, request: Request, call_next: Any) -> Response:
        return Response("cached", request.model, "stage", Message("assistant", "from stage"))

    async def stream(self, request: Request, call_next: Any) -> AsyncIterator[StreamChunk]:
        yield StreamChunk(text="from stage", finish_reason="stop")


async def test_complete_and_stream_through_a_provider_object() -> None:
    provider = ScriptedProvider("p")
    async with Pipeline.build(providers={"p": provider}) as pipe:
        reply = await pipe.complete("p/model-a", "hi", max_tokens=5, user="u-17", tags={"a": "b"})
        assembler = StreamAssembler("p", "p/model-a")
        async for chunk in pipe.stream("p/model-a", [{"role": "user", "content": "hi"}]):
            assembler.add(chunk)
    assert reply.text == "scripted:hi"
    assert assembler.response().text == reply.text
    assert assembler.response().usage == reply.usage
    sent = provider.seen[0]
    assert (sent.model, sent.model_name, sent.provider) == ("p/model-a", "model-a", "p")
    assert (sent.max_tokens, sent.user, dict(sent.tags)) == (5, "u-17", {"a": "b"})
    # A provider object passed in belongs to the caller, but aclose still closes it.
    assert provider.closed


async def test_messages_in_openai_form_become_records() -> None:
    provider = ScriptedProvider("p")
    async with Pipeline.build(providers={"p": provider}) as pipe:
        await pipe.complete(
            "p/m",
            [
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look "},
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://x/y.png", "detail": "low"},
                        },
                        {"type": "text", "text": "here"},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"x": 1}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
            stop="END",
        )
    sent = provider.seen[0]
    assert sent.messages[1].text == "look here"
    assert sent.messages[2].tool_calls[0].arguments == '{"x": 1}'
    assert sent.messages[3].tool_call_id == "c1"
    assert sent.tools == (Tool("f", "", {}),)
    assert sent.stop == ("END",)


@pytest.mark.parametrize(
    ("messages", "needle"),
    [
        ([], "messages is empty"),
        ([{"content": "x"}], "has no 'role'"),
        ([{"role": "robot", "content": "x"}], "role 'robot'"),
        ([{"role": "user", "contents": "x"}], "unknown key(s) contents"),
        ([42], "messages[0] is a int"),
        ([{"role": "user", "content": [{"type": "video", "url": "v"}]}], "unknown type 'video'"),
    ],
)
async def test_bad_messages_are_named(messages: list[Any], needle: str) -> None:
    async with Pipeline.build(providers={"p": ScriptedProvider("p")}) as pipe:
        with pytest.raises((ValueError, TypeError)) as info:
            await pipe.complete("p/m", messages)
    assert needle in str(info.value)


async def test_routing_by_config_type_alias_and_default_model() -> None:
    plugin = ScriptedPlugin()
    async with Pipeline.build(
        plugins=[plugin],
        providers={"work": {"type": "scripted", "label": "W"}},
        aliases={"fast": "scripted/turbo"},
        default_model="work/x",
    ) as pipe:
        assert (await pipe.complete("work/x", "a")).text == "W:a"
        # An unconfigured type name works with its default settings.
        assert (await pipe.complete("scripted/y", "b")).text == "scripted:b"
        assert (await pipe.complete("fast", "c")).model == "scripted/turbo"
        # A provider name alone takes that provider's default_model.
        assert (await pipe.complete("work", "d")).model == "work/base"
        assert (await pipe.complete(None, "e")).model == "work/x"
        assert pipe.default_model == "work/x"
        with pytest.raises(UnknownModelError, match=r"no provider is called 'nope'.*scripted"):
            await pipe.complete("nope/m", "x")
        with pytest.raises(UnknownModelError, match="write it as PROVIDER/MODEL"):
            await pipe.complete("gpt-4o", "x")
    # One instance per configured name, made once and reused.
    assert sorted(p.name for p in plugin.made) == ["scripted", "work"]
    assert all(p.closed for p in plugin.made)


async def test_resolve_model_hook_is_asked_once_per_name() -> None:
    asked: list[str] = []

    class Aliases:
        @hookimpl
        def tollway_resolve_model(self, model: str) -> str | None:
            asked.append(model)
            return "p/real" if model == "nickname" else None

    async with Pipeline.build(plugins=[Aliases()], providers={"p": ScriptedProvider("p")}) as pipe:
        for _ in range(3):
            assert (await pipe.complete("nickname", "x")).model == "p/real"
    assert asked == ["nickname"]


async def test_no_model_and_no_default_says_how_to_fix() -> None:
    async with Pipeline.build(providers={"p": ScriptedProvider("p")}) as pipe:
        with pytest.raises(ConfigError, match="default_model"):
            await pipe.complete(None, "x")


async def test_stages_run_in_order_and_only_where_they_apply() -> None:
    log: list[str] = []
    provider = ScriptedProvider("p")
    stages = [Recorder("outer", log), CompleteOnly(), Recorder("inner", log)]
    async with Pipeline.build(providers={"p": provider}, stages=stages) as pipe:
        await pipe.complete("p/m", "x")
        chunks = [c async for c in pipe.stream("p/m", "x")]
        # Neither recorder overrides stream, so the stream chain is the bare provider call.
        assert pipe._state.stream.__name__ == "stream_provider"
        assert pipe._state.complete.__name__ == "bound"
    assert log == ["outer>", "inner>", "<inner", "<outer"]
    assert "".join(c.text for c in chunks) == "scripted:x"


async def test_with_no_stages_the_chain_is_the_provider_call() -> None:
    async with Pipeline.build(providers={"p": ScriptedProvider("p")}) as pipe:
        assert pipe._state.complete.__name__ == "call_provider"
        assert pipe._state.stream.__name__ == "stream_provider"


async def test_a_stage_can_answer_without_the_provider() -> None:
    provider = ScriptedProvider("p")
    async with Pipeline.build(providers={"p": provider}, stages=[ShortCircuit()]) as pipe:
        assert (await pipe.complete("p/m", "x")).text == "from stage"
        assert [c.text async for c in pipe.stream("p/m", "x")] == ["from stage"]
    assert provider.seen == []


async def test_abandoned_stream_closes_the_provider_stream_at_once() -> None:
    provider = ScriptedProvider("p")
    async with Pipeline.build(providers={"p": provider}) as pipe:
        stream = pipe.stream("p/m", "x")
        async for _ in stream:
            break
        await stream.aclose()  # type: ignore[attr-defined]
        assert provider.stream_closed
        assert pipe._state.inflight == 0


async def test_each_pipeline_has_its_own_plugin_manager() -> None:
    one = Pipeline.build(plugins=[ScriptedPlugin()])
    two = Pipeline.build()
    try:
        assert "scripted" in one.providers()
        assert "scripted" not in two.providers()
        assert one.plugins is not two.plugins
    finally:
        await one.aclose()
        await two.aclose()


async def test_aclose_twice_is_harmless() -> None:
    pipe = Pipeline.build(providers={"p": ScriptedProvider("p")})
    await pipe.aclose()
    await pipe.aclose()


# -- hot reload ------------------------------------------------------------------------------


def _write(path: Path, label: str, interval: float = 0.05) -> None:
    path.write_text(
        f'default_model = "work/m"\nwatch_interval = {interval}\n'
        f'[providers.work]\ntype = "scripted"\nlabel = "{label}"\n'
        '[providers.steady]\ntype = "scripted"\nlabel = "S"\n'
    )
    # Make sure the watcher sees a new stamp even on a coarse-mtime file system.
    stamp = path.stat().st_mtime + len(label)
    os.utime(path, (stamp, stamp))


async def test_reload_swaps_config_while_calls_in_flight_finish_on_the_old_one(
    tmp_path: Path,
) -> None:
    plugin = ScriptedPlugin()
    file = tmp_path / "tollway.toml"
    _write(file, "old")
    async with Pipeline.from_config(file, plugins=[plugin]) as pipe:
        await pipe.complete("steady/m", "warm")
        steady = next(p for p in plugin.made if p.name == "steady")
        await pipe.complete(None, "warm")
        old = next(p for p in plugin.made if p.label == "old")
        old.gate = asyncio.Event()
        in_flight = asyncio.create_task(pipe.complete(None, "slow"))
        await asyncio.sleep(0)

        _write(file, "new")
        pipe.reload()

        assert (await pipe.complete(None, "after")).text == "new:after"
        assert not old.closed, "the old provider still has a call in flight"
        old.gate.set()
        assert (await in_flight).text == "old:slow"
        await asyncio.sleep(0.01)
        assert old.closed, "the old provider is closed once its last call ends"
        # A provider whose settings did not change is carried over, not rebuilt.
        assert (await pipe.complete("steady/m", "again")).text == "S:again"
        assert [p for p in plugin.made if p.name == "steady"] == [steady]
        assert not steady.closed


async def test_watch_reloads_on_file_change_and_keeps_running_on_a_bad_file(
    tmp_path: Path,
) -> None:
    file = tmp_path / "tollway.toml"
    _write(file, "one")
    async with Pipeline.from_config(file, plugins=[ScriptedPlugin()], watch=True) as pipe:
        assert (await pipe.complete(None, "x")).text == "one:x"
        _write(file, "two")
        for _ in range(100):
            await asyncio.sleep(0.02)
            if (await pipe.complete(None, "x")).text == "two:x":
                break
        assert (await pipe.complete(None, "x")).text == "two:x"

        file.write_text("this is = = not toml")
        os.utime(file, (file.stat().st_mtime + 50, file.stat().st_mtime + 50))
        await asyncio.sleep(0.2)
        # The broken file is refused; the running config stays.
        assert (await pipe.complete(None, "x")).text == "two:x"


async def test_sighup_reloads(tmp_path: Path) -> None:
    file = tmp_path / "tollway.toml"
    # A long poll interval, so that only the signal can cause the reload.
    _write(file, "before", interval=60)
    async with Pipeline.from_config(file, plugins=[ScriptedPlugin()], watch=True) as pipe:
        assert (await pipe.complete(None, "x")).text == "before:x"
        _write(file, "after", interval=60)
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if pipe.config.providers["work"].label == "after":  # type: ignore[attr-defined]
                break
        assert (await pipe.complete(None, "x")).text == "after:x"


async def test_reload_with_an_invalid_config_raises_and_keeps_the_old(tmp_path: Path) -> None:
    file = tmp_path / "tollway.toml"
    _write(file, "good")
    async with Pipeline.from_config(file, plugins=[ScriptedPlugin()]) as pipe:
        file.write_text('[providers.work]\ntype = "scripted"\nlabell = "x"\n')
        expected = r"providers\.work\.labell: unknown key 'labell' \(did you mean 'label'\?\)"
        with pytest.raises(ConfigError, match=expected):
            pipe.reload()
        assert (await pipe.complete("work/m", "x")).text == "good:x"


async def test_settings_in_code_are_checked_like_a_file() -> None:
    async with Pipeline.build(
        providers={"p": ScriptedProvider("p")}, settings={"retry": {"enabled": True}}
    ) as pipe:
        assert "retry" in pipe._state.builtin
    with pytest.raises(ConfigError, match=r"retry\.enabeld.*did you mean 'enabled'"):
        Pipeline.build(providers={"p": ScriptedProvider("p")}, settings={"retry": {"enabeld": 1}})
