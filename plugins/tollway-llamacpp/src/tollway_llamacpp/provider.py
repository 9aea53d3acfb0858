"""The llamacpp provider: tollway's records in, llama.cpp generations in worker threads, out.

A model is loaded on the first call that names it, in a worker thread, once. Llama objects are
not thread-safe, so each model runs one generation at a time: a call waits for the model's
asyncio lock, and the lock is released only when the worker thread has really finished, even
if the caller was cancelled meanwhile (a cancelled caller sets the stop flag, which the token
loop checks at every token).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from tollway.errors import (
    BadRequestError,
    ContextLengthExceededError,
    NotFoundError,
    ProviderError,
    TollwayError,
)
from tollway.logging import get_logger
from tollway.types import ImagePart, Message, ModelInfo, Request, Response, StreamChunk, Usage
from tollway_llamacpp.control import Generated, GenerationCancelled, GenerationControl
from tollway_llamacpp.model_files import (
    bundled_model_file,
    configured_model_file,
    default_cache_dir,
)
from tollway_llamacpp.settings import BUNDLED_MODEL, LlamaCppSettings, context_window

if TYPE_CHECKING:
    from tollway.providers import ProviderContext
    from tollway_llamacpp.engine import Engine

log = get_logger("tollway.llamacpp")

# How many streamed pieces the worker may produce ahead of the consumer.
STREAM_BUFFER = 16
_DONE = object()
# Request.extra keys passed to llama.cpp's sampler; others belong to other providers (a request
# may fall back here from one), so they are left alone.
SAMPLING_EXTRAS = frozenset(
    {"top_k", "min_p", "typical_p", "repeat_penalty", "presence_penalty", "frequency_penalty"}
)


@attrs.define
class _ModelFile:
    path: Path | None  # None: the bundled model, assembled on first load
    setting: str


@attrs.define
class _LoadedModel:
    engine: Engine
    lock: asyncio.Lock = attrs.field(factory=asyncio.Lock)
    control: GenerationControl | None = None


class LlamaCppProvider:
    """Local GGUF models through llama-cpp-python, in process. Text only: no tools, no images."""

    def __init__(self, settings: LlamaCppSettings, context: ProviderContext) -> None:
        self.name = context.name
        self.settings = settings
        self._section = f"providers.{context.name}"
        self._default = settings.default_model or BUNDLED_MODEL
        self._cache_dir = (
            Path(settings.cache_dir).expanduser() if settings.cache_dir else default_cache_dir()
        )
        # Configured files are checked now, so a wrong path fails when the pipeline is built
        # rather than on the first call.
        setting = f"{self._section}.model_path"
        self._files = {
            self._default: _ModelFile(
                configured_model_file(settings.model_path, key=setting)
                if settings.model_path
                else None,
                setting,
            )
        }
        for name, path in settings.models.items():
            setting = f"{self._section}.models.{name}"
            self._files[name] = _ModelFile(configured_model_file(path, key=setting), setting)
        self._models: dict[str, _LoadedModel] = {}
        self._loading: dict[str, asyncio.Task[_LoadedModel]] = {}
        self._closed = False

    # -- the Provider protocol ---------------------------------------------------------------

    async def complete(self, request: Request) -> Response:
        name = self._model_name(request)
        params = self._params(request, name)
        model = await self._model(name)
        control = GenerationControl()
        work = functools.partial(model.engine.complete, params, control)
        worker = await self._start(model, name, work, control)
        try:
            generated = await asyncio.shield(worker)
        except asyncio.CancelledError:
            control.cancel()
            raise
        return Response(
            id=generated.id,
            model=f"{self.name}/{name}",
            provider=self.name,
            message=Message("assistant", generated.text),
            finish_reason=generated.finish_reason,
            usage=Usage(generated.prompt_tokens, generated.completion_tokens),
        )

    async def stream(self, request: Request) -> AsyncIterator[StreamChunk]:
        name = self._model_name(request)
        params = self._params(request, name)
        model = await self._model(name)
        loop = asyncio.get_running_loop()
        control = GenerationControl(STREAM_BUFFER)
        # Bounded by the control's room (STREAM_BUFFER pieces) plus the end marker, so
        # put_nowait never finds it full.
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=STREAM_BUFFER + 1)

        def emit(text: str) -> None:
            control.wait_for_room()
            try:
                loop.call_soon_threadsafe(queue.put_nowait, text)
            except RuntimeError as exc:  # the loop is closed: nobody is listening any more
                raise GenerationCancelled from exc

        chunk_id = f"chatcmpl-{uuid.uuid4().hex}"
        full_name = f"{self.name}/{name}"
        try:
            work = functools.partial(model.engine.stream, params, control, emit)
            worker = await self._start(model, name, work, control)
            # The worker's pieces were queued by call_soon_threadsafe before it returned, and
            # the task completes after that, so the end marker always comes last.
            worker.add_done_callback(lambda _: queue.put_nowait(_DONE))
            while (item := await queue.get()) is not _DONE:
                control.chunk_taken()
                yield StreamChunk(text=str(item), id=chunk_id, model=full_name)
            generated = worker.result()
            yield StreamChunk(
                finish_reason=generated.finish_reason,
                usage=Usage(generated.prompt_tokens, generated.completion_tokens),
                id=chunk_id,
                model=full_name,
            )
        finally:
            # Harmless when the generation is over; stops it when the consumer left early.
            control.cancel()

    async def list_models(self) -> list[ModelInfo]:
        return [
            ModelInfo(
                id=name,
                provider=self.name,
                context_window=context_window(self.settings),
                supports_tools=False,
                owned_by="google" if file.path is None else None,
            )
            for name, file in self._files.items()
        ]

    async def aclose(self) -> None:
        """Stop what is generating, wait for the worker threads, and free every model."""
        self._closed = True
        for task in list(self._loading.values()):
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
        models, self._models = list(self._models.values()), {}
        for model in models:
            if model.control is not None:
                model.control.cancel()
            async with model.lock:
                model.engine.close()

    # -- requests ----------------------------------------------------------------------------

    def _model_name(self, request: Request) -> str:
        _, sep, name = request.model.partition("/")
        if not sep:
            name = "" if request.model == self.name else request.model
        name = name or self._default
        if name not in self._files:
            raise NotFoundError(
                f"provider {self.name!r} has no model {name!r}; it has "
                f"{', '.join(sorted(self._files))}. Name more GGUF files in "
                f"[{self._section}.models]",
                provider=self.name,
                code="model_not_found",
            )
        return name

    def _params(self, request: Request, name: str) -> dict[str, Any]:
        """llama-cpp-python's create_chat_completion arguments for a request."""
        if request.tools:
            raise BadRequestError(
                f"{self.name}/{name} does not support tools (function calling): this provider "
                "runs a small local model that cannot call them. Send the request without "
                "tools, or route it to a provider that supports them",
                provider=self.name,
                code="tools_not_supported",
            )
        max_tokens = self.settings.max_tokens if request.max_tokens is None else request.max_tokens
        if max_tokens < 1:
            raise BadRequestError(
                f"max_tokens must be at least 1, not {max_tokens}", provider=self.name
            )
        if request.seed is not None:
            seed = request.seed
        elif self.settings.seed is not None:
            seed = self.settings.seed
        else:
            # llama-cpp-python keeps the last seed it was given, so a call without one would
            # otherwise repeat the previous caller's sampling.
            seed = random.getrandbits(32)
        params: dict[str, Any] = {
            "messages": self._messages(request, name),
            "max_tokens": max_tokens,
            "seed": seed,
        }
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.top_p is not None:
            params["top_p"] = request.top_p
        if request.stop:
            params["stop"] = list(request.stop)
        response_format = self._response_format(request.response_format)
        if response_format is not None:
            params["response_format"] = response_format
        for key in SAMPLING_EXTRAS.intersection(request.extra):
            params[key] = request.extra[key]
        return params

    def _messages(self, request: Request, name: str) -> list[dict[str, str]]:
        messages = []
        for message in request.messages:
            if message.role == "tool" or message.tool_calls:
                raise BadRequestError(
                    f"{self.name}/{name} does not support tools: the conversation has a "
                    f"{'tool result' if message.role == 'tool' else 'tool call'}, which it "
                    "cannot read",
                    provider=self.name,
                    code="tools_not_supported",
                )
            if isinstance(message.content, tuple) and any(
                isinstance(part, ImagePart) for part in message.content
            ):
                raise BadRequestError(
                    f"{self.name}/{name} reads text only; remove the image parts",
                    provider=self.name,
                )
            # Chat templates know system, user and assistant; developer is OpenAI's newer
            # name for system.
            role = "system" if message.role == "developer" else message.role
            messages.append({"role": role, "content": message.text})
        if not messages:
            raise BadRequestError("the request has no messages", provider=self.name)
        return messages

    def _response_format(self, response_format: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """OpenAI's response_format as llama-cpp-python's grammar-backed JSON mode."""
        if response_format is None:
            return None
        kind = response_format.get("type")
        if kind in (None, "text"):
            return None
        if kind == "json_object":
            schema = response_format.get("schema")
        elif kind == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema")
        else:
            raise BadRequestError(
                f"response_format type {kind!r} is not supported; use 'text', 'json_object' "
                "or 'json_schema'",
                provider=self.name,
            )
        return {"type": "json_object", "schema": schema} if schema else {"type": "json_object"}

    # -- models and workers ------------------------------------------------------------------

    async def _model(self, name: str) -> _LoadedModel:
        if self._closed:
            raise self._closed_error()
        model = self._models.get(name)
        if model is not None:
            return model
        task = self._loading.get(name)
        if task is None:
            # One load per model however many calls arrive meanwhile; shielded so a caller that
            # is cancelled does not throw away a load the others are waiting for.
            task = asyncio.ensure_future(self._load(name))
            self._loading[name] = task
            task.add_done_callback(_retrieve_exception)
        return await asyncio.shield(task)

    async def _load(self, name: str) -> _LoadedModel:
        try:
            engine = await asyncio.to_thread(self._load_engine, name)
        finally:
            self._loading.pop(name, None)
        if self._closed:
            engine.close()
            raise self._closed_error()
        model = self._models[name] = _LoadedModel(engine)
        return model

    def _load_engine(self, name: str) -> Engine:
        from tollway_llamacpp.engine import Engine

        started = time.perf_counter()
        file = self._files[name]
        if file.path is None:
            path = bundled_model_file(self._cache_dir, key=f"{self._section}.cache_dir")
        else:
            path = configured_model_file(str(file.path), key=file.setting)
        engine = Engine.load(path, self.settings, section=self._section)
        log.info(
            "model_loaded",
            provider=self.name,
            model=name,
            path=str(path),
            seconds=round(time.perf_counter() - started, 3),
        )
        return engine

    async def _start(
        self,
        model: _LoadedModel,
        name: str,
        work: Callable[[], Generated],
        control: GenerationControl,
    ) -> asyncio.Task[Generated]:
        """Run ``work`` in a thread once the model is free; the model stays taken until the
        thread returns, whatever happens to the caller."""
        await model.lock.acquire()
        try:
            if self._closed:
                raise self._closed_error()
            model.control = control
            worker = asyncio.ensure_future(asyncio.to_thread(self._in_worker, work, name))
        except BaseException:
            model.lock.release()
            raise
        worker.add_done_callback(functools.partial(_release, model))
        return worker

    def _in_worker(self, work: Callable[[], Generated], name: str) -> Generated:
        try:
            return work()
        except TollwayError:
            raise
        except GenerationCancelled as exc:
            raise ProviderError(
                f"{self.name}/{name}: the generation was stopped because its caller went away "
                "or the provider was closed",
                provider=self.name,
            ) from exc
        except Exception as exc:
            raise llama_error(exc, provider=self.name, model=f"{self.name}/{name}") from exc

    def _closed_error(self) -> ProviderError:
        return ProviderError(
            f"provider {self.name!r} is closed; build a new Pipeline", provider=self.name
        )


def llama_error(exc: Exception, *, provider: str, model: str) -> TollwayError:
    """A tollway error for what llama-cpp-python raised, keeping its message."""
    message = str(exc)
    # llama-cpp-python: "Requested tokens (N) exceed context window of M"
    if "context window" in message:
        return ContextLengthExceededError(
            f"{model}: the prompt does not fit in the context window ({message}); shorten the "
            "conversation or raise n_ctx",
            provider=provider,
            provider_message=message,
            code="context_length_exceeded",
        )
    if isinstance(exc, ValueError):  # also what a chat template's raise_exception raises
        return BadRequestError(
            f"{model} rejected the request: {message}", provider=provider, provider_message=message
        )
    return ProviderError(
        f"{model} failed: {type(exc).__name__}: {message}",
        provider=provider,
        provider_message=message,
    )


def _release(model: _LoadedModel, worker: asyncio.Task[Generated]) -> None:
    model.control = None
    model.lock.release()
    _retrieve_exception(worker)


def _retrieve_exception(task: asyncio.Future[Any]) -> None:
    # A caller that was cancelled never reads its worker's error; reading it here keeps asyncio
    # from logging "exception was never retrieved" for an outcome nobody was waiting for.
    if not task.cancelled():
        task.exception()
