"""The Pipeline: routes a call to its provider through a chain of stages built once.

Assembly (plugins, config, provider instances, the stage chain) happens when the pipeline is
built or reloaded; a call does a dictionary lookup for its route and then runs plain method
calls. A stage that is switched off is not in the chain, so it costs nothing.

Hot reload swaps the whole assembled state in one assignment: calls in flight finish on the
state they started with, and that state's providers are closed when its last call ends.
Providers whose settings did not change are carried over, so a reload does not reload a model
or drop pooled connections.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType, ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

from tollway.config import Config, find_config_file, load_config, structure_provider
from tollway.errors import ConfigError, TollwayError, UnknownModelError
from tollway.logging import get_logger
from tollway.metrics import Metrics
from tollway.plugins import PluginManager, build_plugin_manager
from tollway.providers.base import Provider, ProviderContext, ProviderSettings
from tollway.providers.http import HttpPool, ProbeResult
from tollway.stages import StageContext, build_stages
from tollway.types import (
    ContentPart,
    ImagePart,
    Message,
    ModelInfo,
    Request,
    Response,
    StreamChunk,
    TextPart,
    Tool,
    ToolCall,
)

if TYPE_CHECKING:
    from tollway.cache.stage import CacheStage

log = get_logger("tollway.pipeline")

CompleteFn = Callable[[Request], Awaitable[Response]]
StreamFn = Callable[[Request], AsyncIterator[StreamChunk]]

# The provider that works offline with no configuration, when its plugin is installed.
LOCAL_PROVIDER = "llamacpp"


class Stage:
    """A step on the request path. Subclass it and override ``complete``, ``stream`` or both.

    A stage gets the request and the rest of the chain (``call_next``); it may change the
    request, answer without calling on, or look at what comes back. A stage that overrides
    only ``complete`` is left out of the stream chain (and the other way round).
    """

    name: str = "stage"

    async def complete(self, request: Request, call_next: CompleteFn) -> Response:
        return await call_next(request)

    def stream(self, request: Request, call_next: StreamFn) -> AsyncIterator[StreamChunk]:
        return call_next(request)

    async def aclose(self) -> None:
        """Release what the stage holds; called once when the pipeline closes."""


def _overrides(stage: Stage, method: str) -> bool:
    return getattr(type(stage), method) is not getattr(Stage, method)


def build_chain(
    stages: Sequence[Stage], complete: CompleteFn, stream: StreamFn
) -> tuple[CompleteFn, StreamFn]:
    """Fold the stages around the terminal calls, outermost first. Done once, at assembly."""
    for stage in reversed(stages):
        if _overrides(stage, "complete"):
            complete = _bind_complete(stage, complete)
        if _overrides(stage, "stream"):
            stream = _bind_stream(stage, stream)
    return complete, stream


def _bind_complete(stage: Stage, call_next: CompleteFn) -> CompleteFn:
    method = stage.complete

    def bound(request: Request) -> Awaitable[Response]:
        return method(request, call_next)

    return bound


def _bind_stream(stage: Stage, call_next: StreamFn) -> StreamFn:
    method = stage.stream

    def bound(request: Request) -> AsyncIterator[StreamChunk]:
        return method(request, call_next)

    return bound


class _Router:
    """Model name -> (provider instance, canonical ``instance/model``), built up as used."""

    def __init__(
        self,
        config: Config,
        plugins: PluginManager,
        http: HttpPool,
        fixed: Mapping[str, Provider],
        carried: Mapping[str, tuple[ProviderSettings, Provider]],
    ) -> None:
        self.config = config
        self.plugins = plugins
        self.http = http
        self.fixed = fixed
        # Providers carried over from the previous state: their settings did not change.
        self.instances: dict[str, tuple[ProviderSettings | None, Provider]] = dict(carried)
        self.routes: dict[str, tuple[Provider, str]] = {}
        self.lock = threading.Lock()

    def known_providers(self) -> list[str]:
        return sorted(set(self.fixed) | set(self.config.providers) | set(self.plugins.providers()))

    def settings_for(self, name: str) -> ProviderSettings | None:
        if name in self.config.providers:
            return self.config.providers[name]
        if name in self.plugins.providers():
            return structure_provider(name, {}, self.plugins)
        return None

    def instance(self, name: str) -> Provider:
        found = self.instances.get(name)
        if found is not None:
            return found[1]
        with self.lock:
            found = self.instances.get(name)
            if found is not None:
                return found[1]
            provider = self.fixed.get(name)
            settings: ProviderSettings | None = None
            if provider is None:
                settings = self.settings_for(name)
                if settings is None:
                    raise UnknownModelError(
                        f"no provider is called {name!r}; configure [providers.{name}] or use "
                        f"one of: {', '.join(self.known_providers()) or 'none installed'}"
                    )
                provider_type = self.plugins.providers()[settings.type or name]
                provider = provider_type.factory(settings, ProviderContext(name, self.http))
            self.instances[name] = (settings, provider)
            return provider

    def route(self, model: str) -> tuple[Provider, str]:
        found = self.routes.get(model)
        if found is not None:
            return found
        resolved = self.config.aliases.get(model) or self.plugins.resolve_model(model)
        name, sep, model_name = resolved.partition("/")
        if not sep or not model_name:
            provider_name = name
            if provider_name not in self.known_providers():
                raise UnknownModelError(
                    f"model {model!r} names no provider; write it as PROVIDER/MODEL "
                    f"(for example openai/gpt-4o-mini); providers: "
                    f"{', '.join(self.known_providers()) or 'none installed'}"
                )
            provider = self.instance(provider_name)
            settings = self.instances[provider_name][0]
            default = settings.default_model if settings is not None else None
            if not default:
                raise UnknownModelError(
                    f"model {model!r} names the provider {provider_name!r} but no model; "
                    f"write it as {provider_name}/MODEL or set default_model in "
                    f"[providers.{provider_name}]"
                )
            model_name = default
        else:
            provider = self.instance(name)
        found = (provider, f"{name}/{model_name}")
        self.routes[model] = found
        # The canonical name routes to itself: a Request carries it, and must not be resolved
        # a second time into something else.
        self.routes.setdefault(found[1], found)
        return found


class _State:
    """One assembled configuration: its router and its chain. Swapped whole on reload."""

    def __init__(
        self,
        config: Config,
        router: _Router,
        stages: Sequence[Stage],
        builtin: dict[str, tuple[Any, Stage]],
    ) -> None:
        self.config = config
        self.router = router
        self.builtin = builtin
        self.inflight = 0
        self.retired = False
        route = router.route

        # Plain functions returning the provider's coroutine or iterator: with no stages the
        # caller awaits the provider directly, with no extra coroutine frame in between.
        def call_provider(request: Request) -> Awaitable[Response]:
            provider, _ = route(request.model)
            return provider.complete(request)

        def stream_provider(request: Request) -> AsyncIterator[StreamChunk]:
            provider, _ = route(request.model)
            return provider.stream(request)

        self.complete, self.stream = build_chain(stages, call_provider, stream_provider)

    def owned_providers(self) -> list[Provider]:
        fixed = set(map(id, self.router.fixed.values()))
        return [p for _, p in self.router.instances.values() if id(p) not in fixed]


class Pipeline:
    """Every call goes through here. Build it with :meth:`build` or :meth:`from_config`.

    Use it as an async context manager (or call :meth:`aclose`) so that pooled connections
    and local models are released.
    """

    def __init__(
        self,
        config: Config,
        plugins: PluginManager,
        *,
        stages: Iterable[Stage] = (),
        providers: Mapping[str, Provider] | None = None,
        config_path: str | Path | None = None,
    ) -> None:
        self.plugins = plugins
        self.http = HttpPool()
        self.metrics = Metrics()
        self.stages = tuple(stages)
        self._fixed = dict(providers or {})
        self._config_path = Path(config_path) if config_path is not None else None
        self._state = self._assemble(config, carried={}, previous=None)
        self._disposals: set[asyncio.Task[None]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._sighup = False
        self._file_stamp = self._stamp()
        self._closed = False

    # -- building --------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        *,
        providers: Mapping[str, Mapping[str, Any] | ProviderSettings | Provider] | None = None,
        default_model: str | None = None,
        aliases: Mapping[str, str] | None = None,
        stages: Iterable[Stage] = (),
        plugins: Iterable[ModuleType | object] = (),
        load_entrypoints: bool = True,
        config: Config | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> Pipeline:
        """Assemble a pipeline in code.

        ``providers`` maps instance names to a config table (as in ``[providers.NAME]``), a
        settings object, or a ready Provider object. ``settings`` holds any other tables of
        the config file, e.g. ``{"cache": {"enabled": True}, "retry": {"enabled": True}}``,
        checked exactly as a file would be. ``plugins`` are registered after the installed
        ones, so they can override them.
        """
        manager = build_plugin_manager(plugins, load_entrypoints=load_entrypoints)
        fixed: dict[str, Provider] = {}
        tables: dict[str, Any] = {}
        for name, value in (providers or {}).items():
            if isinstance(value, (Mapping, ProviderSettings)):
                tables[name] = value
            elif isinstance(value, Provider):
                fixed[name] = value
            else:
                raise ConfigError(
                    f"expected a table of settings or a Provider object, got "
                    f"{type(value).__name__}",
                    key=f"providers.{name}",
                )
        if config is not None and settings:
            raise ConfigError("pass either config or settings, not both")
        if config is None:
            data: dict[str, Any] = dict(settings or {})
            if default_model is not None:
                data["default_model"] = default_model
            if aliases:
                data["aliases"] = dict(aliases)
            config = load_config(data=data, plugins=manager, environ={})
        for name, table in tables.items():
            config.providers[name] = structure_provider(name, table, manager)
        manager.configure(config)
        return cls(config, manager, stages=stages, providers=fixed)

    @classmethod
    def from_config(
        cls,
        path: str | Path | None = None,
        *,
        stages: Iterable[Stage] = (),
        plugins: Iterable[ModuleType | object] = (),
        load_entrypoints: bool = True,
        watch: bool | None = None,
    ) -> Pipeline:
        """Assemble from a TOML file (or ``$TOLLWAY_CONFIG``, or ``./tollway.toml``).

        With ``watch=True`` (or ``watch = true`` in the file) a changed file, or SIGHUP,
        reloads the configuration while running.
        """
        manager = build_plugin_manager(plugins, load_entrypoints=load_entrypoints)
        file = find_config_file(path)
        config = load_config(file, plugins=manager)
        if watch is not None:
            config.watch = watch
        manager.configure(config)
        return cls(config, manager, stages=stages, config_path=file)

    def _assemble(
        self,
        config: Config,
        carried: Mapping[str, tuple[ProviderSettings, Provider]],
        previous: _State | None,
    ) -> _State:
        router = _Router(config, self.plugins, self.http, self._fixed, carried)
        context = StageContext(config, self.plugins, self.metrics, lambda m: router.route(m)[1])
        builtin = build_stages(context, previous.builtin if previous is not None else None)
        # The caller's own stages go outermost, then the built-in ones in their fixed order.
        stages = [*self.stages, *(stage for _, stage in builtin.values())]
        return _State(config, router, stages, builtin)

    # -- properties ------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self._state.config

    @property
    def default_model(self) -> str:
        """The configured default model, else the local model when its plugin is installed."""
        configured = self._state.config.default_model
        if configured:
            return configured
        if LOCAL_PROVIDER in self._state.router.known_providers():
            return LOCAL_PROVIDER
        raise ConfigError(
            "no model given and no default_model configured; pass a model such as "
            "openai/gpt-4o-mini, set default_model in tollway.toml, or install the local "
            'model: pip install "tollway[llamacpp]"',
            key="default_model",
        )

    def providers(self) -> list[str]:
        """The names a model string may start with."""
        return self._state.router.known_providers()

    # -- calls -----------------------------------------------------------------------------

    def request(
        self,
        model: str | None,
        messages: str | Sequence[Message | Mapping[str, Any]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        tools: Sequence[Tool | Mapping[str, Any]] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        response_format: Mapping[str, Any] | None = None,
        user: str | None = None,
        session: str | None = None,
        team: str | None = None,
        api_key_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        timeout: float | None = None,
        cache: str | None = None,
        cache_ttl: float | None = None,
        priority: int | None = None,
        fallbacks: Sequence[str] | None = None,
        retry: bool | None = None,
        controls: Mapping[str, Any] | None = None,
        **extra: Any,
    ) -> Request:
        """Build the Request that :meth:`complete` would send, routed to its canonical model.

        ``cache`` ("no-cache", "no-store" or "off"), ``cache_ttl``, ``priority``,
        ``fallbacks`` (``[]`` for none) and ``retry`` (False for none) direct tollway's own
        stages; anything unknown goes to the provider.
        """
        _, canonical = self._state.router.route(model or self.default_model)
        if (
            cache is not None
            or cache_ttl is not None
            or priority is not None
            or fallbacks is not None
            or retry is not None
        ):
            controls = dict(controls or {})
            if cache is not None:
                if cache not in _CACHE_DIRECTIVES:
                    raise ValueError(
                        f"cache={cache!r} is not one of {', '.join(sorted(_CACHE_DIRECTIVES))}"
                    )
                controls["cache"] = cache
            if cache_ttl is not None:
                controls["cache_ttl"] = cache_ttl
            if priority is not None:
                controls["priority"] = priority
            if fallbacks is not None:
                controls["fallbacks"] = list(fallbacks)
            if retry is not None:
                controls["retry"] = retry
        return Request(
            model=canonical,
            messages=to_messages(messages),
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
            seed=seed,
            tools=to_tools(tools) if tools else (),
            tool_choice=tool_choice,
            response_format=response_format,
            user=user,
            session=session,
            team=team,
            api_key_id=api_key_id,
            tags=tags if tags is not None else _EMPTY,
            extra=extra,
            timeout=timeout,
            controls=controls if controls is not None else _EMPTY,
        )

    async def complete(
        self,
        model: str | None = None,
        messages: str | Sequence[Message | Mapping[str, Any]] = (),
        **params: Any,
    ) -> Response:
        """Send one call and wait for the whole answer."""
        request = self.request(model, messages, **params)
        # send()'s body, inlined: this is the path every call takes.
        state = self._state
        state.inflight += 1
        try:
            return await state.complete(request)
        finally:
            state.inflight -= 1
            if state.retired and not state.inflight:
                self._dispose(state)

    async def send(self, request: Request) -> Response:
        """Send a ready Request (its model already canonical) through the chain."""
        state = self._state
        state.inflight += 1
        try:
            return await state.complete(request)
        finally:
            state.inflight -= 1
            if state.retired and not state.inflight:
                self._dispose(state)

    def stream(
        self,
        model: str | None = None,
        messages: str | Sequence[Message | Mapping[str, Any]] = (),
        **params: Any,
    ) -> AsyncIterator[StreamChunk]:
        """Send one call and yield the answer as it comes; the last chunks carry usage.

        A bad model or bad messages raise here, before anything is sent.
        """
        # Not a generator itself: one layer fewer per chunk, and closing the returned
        # iterator closes the provider's stream directly.
        return self.send_stream(self.request(model, messages, **params))

    async def send_stream(self, request: Request) -> AsyncIterator[StreamChunk]:
        state = self._state
        state.inflight += 1
        iterator = state.stream(request)
        try:
            async for chunk in iterator:
                yield chunk
        finally:
            # Close the provider's stream now, not at garbage collection, so an abandoned
            # stream gives its connection back at once.
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
            state.inflight -= 1
            if state.retired and not state.inflight:
                self._dispose(state)

    async def list_models(self, provider: str | None = None) -> list[ModelInfo]:
        """The models of one provider, or of every configured one."""
        router = self._state.router
        names = [provider] if provider else sorted(set(router.config.providers) | set(router.fixed))
        models: list[ModelInfo] = []
        for name in names:
            models.extend(await router.instance(name).list_models())
        return models

    @property
    def cache(self) -> CacheStage | None:
        """The cache stage, for ``await pipe.cache.invalidate(model=..., tag=...)``; None when
        the cache is off."""
        found = self._state.builtin.get("cache")
        return found[1] if found is not None else None  # type: ignore[return-value]

    @property
    def usage(self) -> Any:
        """The usage stage (``await pipe.usage.flush()``); None when usage is off."""
        found = self._state.builtin.get("usage")
        return found[1] if found is not None else None

    @property
    def budgets(self) -> Any:
        """The budget stage (``status()``, ``trip()``, ``reset()``); None when budgets are off."""
        found = self._state.builtin.get("budget")
        return found[1] if found is not None else None

    def health(self) -> dict[str, dict[str, Any]]:
        """Per endpoint: open, in-use and idle connections, requests, failures, latency."""
        return self.http.endpoints()

    async def probe(self) -> list[ProbeResult]:
        """Check every endpoint in use with a cheap request; any HTTP answer counts as up."""
        return await self.http.probe()

    # -- reload ----------------------------------------------------------------------------

    def reload(self, config: Config | None = None) -> Config:
        """Swap in a new configuration (read again from the file when none is given).

        Raises ConfigError, and keeps the running configuration, when the new one is wrong.
        """
        if config is None:
            if self._config_path is None:
                raise ConfigError("this pipeline was not built from a file; pass a Config")
            config = load_config(self._config_path, plugins=self.plugins)
        old = self._state
        probe = _Router(config, self.plugins, self.http, self._fixed, {})
        carried: dict[str, tuple[ProviderSettings, Provider]] = {}
        for name, (settings, provider) in list(old.router.instances.items()):
            try:
                unchanged = settings is not None and probe.settings_for(name) == settings
            except TollwayError:
                unchanged = False
            if unchanged and settings is not None:
                carried[name] = (settings, provider)
                # Now the new state's: it must not be closed with the old one.
                del old.router.instances[name]
        new = self._assemble(config, carried, previous=old)
        # Stages carried into the new state must not be closed with the old one either.
        kept = {id(stage) for _, stage in new.builtin.values()}
        old.builtin = {k: v for k, v in old.builtin.items() if id(v[1]) not in kept}
        self.plugins.configure(config)
        self._state = new
        old.retired = True
        if not old.inflight:
            self._dispose(old)
        log.info("config_reloaded", source=config.source)
        return config

    def _dispose(self, state: _State) -> None:
        providers = state.owned_providers()
        stages = [stage for _, stage in state.builtin.values()]
        state.router.instances = {}
        state.builtin = {}
        if not providers and not stages:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(_close_all(providers, stages))
        self._disposals.add(task)
        task.add_done_callback(self._disposals.discard)

    def _stamp(self) -> tuple[float, int] | None:
        if self._config_path is None:
            return None
        try:
            stat = os.stat(self._config_path)
        except OSError:
            return None
        return (stat.st_mtime, stat.st_size)

    def _reload_from_file(self, reason: str) -> None:
        try:
            self.reload()
        except TollwayError as exc:
            log.error("config_reload_failed", reason=reason, error=str(exc))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._state.config.watch_interval)
            stamp = self._stamp()
            if stamp is not None and stamp != self._file_stamp:
                self._file_stamp = stamp
                self._reload_from_file("file changed")

    def start_watching(self) -> None:
        """Reload on file change and on SIGHUP. Called by ``async with`` when watch is on."""
        if self._watcher is not None or self._config_path is None:
            return
        loop = asyncio.get_running_loop()
        self._watcher = loop.create_task(self._watch())
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGHUP"):
            try:
                loop.add_signal_handler(signal.SIGHUP, self._reload_from_file, "SIGHUP")
                self._sighup = True
            except (NotImplementedError, RuntimeError):
                pass

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Pipeline:
        if self._state.config.watch:
            self.start_watching()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close providers, stages and pooled connections. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
            try:
                await self._watcher
            except asyncio.CancelledError:
                pass
        if self._sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._disposals:
            await asyncio.gather(*self._disposals, return_exceptions=True)
        state = self._state
        await _close_all(state.owned_providers(), [s for _, s in state.builtin.values()])
        await _close_all(list(self._fixed.values()), self.stages)
        await self.http.aclose()


async def _close_all(providers: Iterable[Provider], stages: Iterable[Stage] = ()) -> None:
    closeables: list[Stage | Provider] = [*stages, *providers]
    for closeable in closeables:
        try:
            await closeable.aclose()
        except Exception as exc:  # one failing to close must not keep the others open
            log.warning(
                "close_failed",
                what=getattr(closeable, "name", repr(closeable)),
                error=f"{type(exc).__name__}: {exc}",
            )


# -- input normalisation ---------------------------------------------------------------------

_CACHE_DIRECTIVES = frozenset(("no-cache", "no-store", "off", "default"))
# Shared by every request that has no tags or controls: read-only, so sharing is safe.
_EMPTY: Mapping[str, Any] = MappingProxyType({})

_MESSAGE_KEYS = frozenset(("role", "content", "tool_calls", "tool_call_id", "name"))


def to_messages(messages: str | Sequence[Message | Mapping[str, Any]]) -> tuple[Message, ...]:
    """Messages from records, OpenAI-style dicts, or a single string (one user turn)."""
    if isinstance(messages, str):
        return (Message("user", messages),)
    out = []
    for index, item in enumerate(messages):
        if isinstance(item, Message):
            out.append(item)
        elif (
            type(item) is dict
            and len(item) == 2
            and type(item.get("content")) is str
            and "role" in item
        ):
            # The common case, {"role": ..., "content": "text"}, without the general checks.
            try:
                out.append(Message(item["role"], item["content"]))
            except ValueError as exc:
                raise ValueError(f"messages[{index}]: {exc}") from None
        elif isinstance(item, Mapping):
            out.append(_message_from_dict(item, index))
        else:
            raise TypeError(
                f"messages[{index}] is a {type(item).__name__}; give a tollway Message or a "
                "dict like {'role': 'user', 'content': '...'}"
            )
    if not out:
        raise ValueError("messages is empty; give at least one message, e.g. a user turn")
    return tuple(out)


def _message_from_dict(data: Mapping[str, Any], index: int) -> Message:
    unknown = set(data) - _MESSAGE_KEYS
    if unknown:
        raise ValueError(
            f"messages[{index}] has unknown key(s) {', '.join(sorted(unknown))}; "
            f"a message takes: {', '.join(sorted(_MESSAGE_KEYS))}"
        )
    try:
        role = data["role"]
    except KeyError:
        raise ValueError(
            f"messages[{index}] has no 'role'; use 'user', 'assistant' or 'system'"
        ) from None
    content = data.get("content")
    if content is None:
        content = ""
    elif not isinstance(content, str):
        content = tuple(_part(p, index) for p in content)
    calls = data.get("tool_calls")
    tool_calls = tuple(_tool_call(c) for c in calls) if calls else ()
    try:
        return Message(role, content, tool_calls, data.get("tool_call_id"), data.get("name"))
    except ValueError as exc:
        raise ValueError(f"messages[{index}]: {exc}") from None


def _part(part: ContentPart | Mapping[str, Any], index: int) -> ContentPart:
    if isinstance(part, (TextPart, ImagePart)):
        return part
    kind = part.get("type", "text")
    if kind == "text":
        return TextPart(part["text"])
    if kind in ("image_url", "image"):
        image = part.get("image_url", part)
        if isinstance(image, str):
            return ImagePart(image)
        return ImagePart(image["url"], image.get("detail"))
    raise ValueError(
        f"messages[{index}] has a content part of unknown type {kind!r}; use 'text' or 'image_url'"
    )


def _tool_call(call: ToolCall | Mapping[str, Any]) -> ToolCall:
    if isinstance(call, ToolCall):
        return call
    function = call.get("function")
    if function is not None:
        return ToolCall(call.get("id", ""), function["name"], function.get("arguments", "{}"))
    return ToolCall(call.get("id", ""), call["name"], call.get("arguments", "{}"))


def to_tools(tools: Sequence[Tool | Mapping[str, Any]]) -> tuple[Tool, ...]:
    """Tools from records or OpenAI-style ``{"type": "function", "function": {...}}`` dicts."""
    out = []
    for tool in tools:
        if isinstance(tool, Tool):
            out.append(tool)
            continue
        spec = tool.get("function", tool)
        out.append(
            Tool(
                spec["name"],
                spec.get("description", ""),
                spec.get("parameters", {"type": "object", "properties": {}}),
            )
        )
    return tuple(out)
