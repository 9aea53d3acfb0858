"""Ollama's native chat API over the pipeline's pooled aiohttp session.

Every call passes through here, so the request path builds plain dicts and records directly,
encodes with ``json.dumps`` and decodes each body or NDJSON line with one ``json.loads``, and does
nothing per call that can be done once per provider (URLs, headers, the default timeout).

What Ollama's API does not give, and how it is filled in:

- No response id and no request id: ``Response.id`` is empty, and ``request_id`` is read from an
  ``x-request-id`` header only when a proxy in front of Ollama adds one.
- No tool-call ids: calls are numbered in the order they come, ``call_0``, ``call_1``, ... in a
  stream and in a whole answer alike, so both assemble to the same thing.
- Tool-call arguments are a JSON object, not JSON text: they are encoded on the way in and
  decoded on the way out.
- No cached or reasoning token counts: ``prompt_eval_count`` is what Ollama evaluated, and it is
  left out when its KV cache already held the whole prompt; ``input_tokens`` is then 0.
  ``eval_count`` includes a thinking model's reasoning, which is not counted apart.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from tollway.errors import (
    BadRequestError,
    ContextLengthExceededError,
    NotFoundError,
    ProviderError,
    ProviderTimeoutError,
    StreamInterruptedError,
    UnavailableError,
)
from tollway.providers.sse import iter_ndjson_lines
from tollway.providers.wire import (
    EXCERPT_CHARS,
    PARSE_ERRORS,
    HttpProvider,
    checked_endpoint,
    configured_key,
    malformed,
    status_error,
)
from tollway.types import (
    ImagePart,
    Message,
    ModelInfo,
    Request,
    Response,
    StreamChunk,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from tollway_ollama.settings import OllamaSettings, default_base_url, normalise_host

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy

    from tollway.providers.base import ProviderContext

__all__ = ["OllamaProvider"]

_REQUEST_ID_HEADER = "x-request-id"
# Ollama's done_reason in OpenAI's words. "load" and "unload" (a chat with no messages loads
# or unloads the model) end an answer with nothing in it, which is a plain stop.
_FINISH_REASONS = {"stop": "stop", "length": "length"}
# Sampling and runtime options Ollama reads from "options" only: given in ``request.extra`` at
# the top level (``num_ctx=8192``) they would be ignored silently, so they are moved there.
_OPTION_NAMES = frozenset(
    (
        "num_keep", "seed", "num_predict", "top_k", "top_p", "min_p", "typical_p",
        "repeat_last_n", "temperature", "repeat_penalty", "presence_penalty",
        "frequency_penalty", "stop", "num_ctx", "num_batch", "num_gpu", "main_gpu",
        "use_mmap", "num_thread", "penalize_newline", "mirostat", "mirostat_tau",
        "mirostat_eta", "low_vram", "f16_kv", "vocab_only", "use_mlock", "numa",
    )
)  # fmt: skip
# How Ollama words an error that the same request would get again; anything else sent
# mid-stream is the runner failing, which another try may not.
_NOT_FOUND_PHRASES = ("not found",)
_CONTEXT_PHRASES = ("context length", "context window", "context size")
_BAD_REQUEST_PHRASES = (
    "does not support", "invalid", "is required", "unsupported", "unknown", "cannot unmarshal",
    "illegal base64", "template",
)  # fmt: skip


class OllamaProvider(HttpProvider):
    """An Ollama server: ``ollama serve`` on this machine, another host, or a hosted Ollama."""

    settings: OllamaSettings

    def __init__(self, settings: OllamaSettings, context: ProviderContext) -> None:
        super().__init__(settings, context)
        self._base = normalise_host(settings.base_url or default_base_url())
        self._endpoint = checked_endpoint(self._base, self.name, "base_url")
        self._chat_url = URL(self._base + "/api/chat", encoded=True)
        self._tags_url = URL(self._base + "/api/tags", encoded=True)
        self._root_url = URL(self._base + "/", encoded=True)
        # Built on the first call, so a key set in the environment after start-up is seen.
        self._headers: dict[str, str] | None = None
        self._keep_alive = _keep_alive(settings.keep_alive)
        self._options = dict(settings.options)

    # -- the Provider protocol -------------------------------------------------------------

    async def complete(self, request: Request) -> Response:
        model = request.model_name
        data = json.dumps(self._payload(request, model, False)).encode()
        started = time.perf_counter()
        body, headers = await self._send(
            "POST",
            self._chat_url,
            data,
            request.timeout,
            self._headers or self._resolve_headers(),
            model=model,
        )
        try:
            parsed = json.loads(body)
            message = parsed["message"]
            text = message.get("content") or ""
            if not isinstance(text, str):
                raise TypeError("content is not a string")
            raw_calls = message.get("tool_calls")
            calls = tuple(_tool_call(c, n) for n, c in enumerate(raw_calls)) if raw_calls else ()
            response = Response(
                "",
                f"{self.name}/{model}",
                self.name,
                Message("assistant", text, calls),
                "tool_calls" if calls else _FINISH_REASONS.get(parsed.get("done_reason"), "stop"),
                Usage(parsed.get("prompt_eval_count") or 0, parsed.get("eval_count") or 0),
                None,
                headers.get(_REQUEST_ID_HEADER),
                time.perf_counter() - started,
            )
        except PARSE_ERRORS as exc:
            raise self._count(self._unparseable(body, exc)) from None
        return response

    async def stream(self, request: Request) -> AsyncIterator[StreamChunk]:
        model = request.model_name
        data = json.dumps(self._payload(request, model, True)).encode()
        handle = self._handle or self._take_handle()
        sent = time.monotonic()
        try:
            response = await handle.session.post(
                self._chat_url,
                data=data,
                headers=self._headers or self._resolve_headers(),
                timeout=self._timeout_for(request.timeout),
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            handle.failed(sent, exc)
            raise self._transport_error(exc, request.timeout) from exc
        handle.ok(sent)

        done = False
        started = False
        request_id = response.headers.get(_REQUEST_ID_HEADER)
        try:
            if response.status >= 400:
                body = await response.read()
                raise self._status_error(response.status, body, response.headers, model=model)
            full_model = f"{self.name}/{model}"
            calls_seen = 0
            async for line in iter_ndjson_lines(response):
                if done:
                    # Read to the end so the connection goes back to the pool clean.
                    continue
                try:
                    obj = json.loads(line)
                    message = obj.get("message")
                    if message is None:
                        raise self._embedded_error(obj["error"], request_id)
                    text = message.get("content") or ""
                    if not isinstance(text, str):
                        raise TypeError("content is not a string")
                    raw_calls = message.get("tool_calls")
                    if raw_calls:
                        deltas = tuple(
                            _tool_delta(c, n) for n, c in enumerate(raw_calls, calls_seen)
                        )
                        calls_seen += len(deltas)
                    else:
                        deltas = ()
                    if obj.get("done"):
                        done = True
                        chunk = StreamChunk(
                            text,
                            deltas,
                            "tool_calls"
                            if calls_seen
                            else _FINISH_REASONS.get(obj.get("done_reason"), "stop"),
                            Usage(obj.get("prompt_eval_count") or 0, obj.get("eval_count") or 0),
                            None,
                            full_model,
                        )
                    elif text or deltas:
                        chunk = StreamChunk(text, deltas, None, None, None, full_model)
                    else:
                        # A thinking model's reasoning, which a Response has no place for.
                        continue
                except PARSE_ERRORS as exc:
                    raise self._unparseable(line, exc) from None
                started = True
                yield chunk
            if not done:
                raise StreamInterruptedError(
                    f'{self.name}\'s stream ended without its "done": true line; the answer '
                    "may be incomplete",
                    provider=self.name,
                    request_id=request_id,
                )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._stream_broken(
                handle, exc, started and not done, request_id, request.timeout
            ) from exc
        except ProviderError as exc:
            self._count(exc)
            raise
        finally:
            if done:
                # The body was read to its end, so the connection can go back to the pool.
                response.release()
            else:
                # The consumer stopped early or the stream failed: a half-read connection
                # cannot be reused, and closing it tells Ollama to stop generating.
                response.close()

    async def list_models(self) -> list[ModelInfo]:
        body, _ = await self._send(
            "GET", self._tags_url, None, None, self._headers or self._resolve_headers()
        )
        try:
            items = json.loads(body)["models"]
            name = self.name
            return [ModelInfo(item.get("name") or item["model"], name) for item in items]
        except PARSE_ERRORS as exc:
            raise self._count(self._unparseable(body, exc)) from None

    async def ping(self) -> bool:
        """Whether an Ollama server answers at ``base_url`` (``GET /``), within the connect
        timeout. Never raises: a health probe wants yes or no."""
        handle = self._handle or self._take_handle()
        timeout = aiohttp.ClientTimeout(total=self.settings.connect_timeout)
        sent = time.monotonic()
        try:
            async with handle.session.get(self._root_url, timeout=timeout) as response:
                status = response.status
                body = await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            handle.failed(sent, exc)
            return False
        handle.ok(sent)
        return status == 200 and b"Ollama is running" in body

    # -- HTTP ------------------------------------------------------------------------------

    def _resolve_headers(self) -> dict[str, str]:
        settings = self.settings
        key = configured_key(settings)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            # A local Ollama needs no key, so none is sent unless one is configured.
            headers["Authorization"] = f"Bearer {key}"
        headers.update(settings.headers)
        self._headers = headers
        return headers

    # -- building and reading --------------------------------------------------------------

    def _payload(self, request: Request, model: str, stream: bool) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": model,
            "messages": self._messages(request.messages),
            # Ollama streams unless told not to, so this is always sent.
            "stream": stream,
        }
        options = dict(self._options) if self._options else {}
        if request.max_tokens is not None:
            options["num_predict"] = request.max_tokens
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.top_p is not None:
            options["top_p"] = request.top_p
        if request.stop:
            options["stop"] = list(request.stop)
        if request.seed is not None:
            options["seed"] = request.seed
        if request.tools:
            tools = _tools(request.tools, request.tool_choice)
            if tools:
                payload["tools"] = tools
        if request.response_format is not None:
            fmt = _format(request.response_format)
            if fmt is not None:
                payload["format"] = fmt
        if self._keep_alive is not None:
            payload["keep_alive"] = self._keep_alive
        if request.extra:
            for key, value in request.extra.items():
                if key in _OPTION_NAMES:
                    options[key] = value
                elif key == "options" and isinstance(value, Mapping):
                    options.update(value)
                else:
                    payload[key] = value
        if options:
            payload["options"] = options
        return payload

    def _messages(self, messages: Sequence[Message]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        # Ollama names a tool result by its function, not by a call id: remember which
        # function each call id of this conversation was.
        call_names: dict[str, str] = {}
        for message in messages:
            role = message.role
            content = message.content
            if isinstance(content, str):
                item: dict[str, Any] = {
                    "role": "system" if role == "developer" else role,
                    "content": content,
                }
            else:
                item = self._parts(role, content)
            if message.tool_calls:
                calls = []
                for call in message.tool_calls:
                    call_names[call.id] = call.name
                    calls.append(
                        {"function": {"name": call.name, "arguments": self._arguments(call)}}
                    )
                item["tool_calls"] = calls
            if role == "tool":
                tool_name = message.name or call_names.get(message.tool_call_id or "")
                if tool_name:
                    item["tool_name"] = tool_name
            out.append(item)
        return out

    def _parts(self, role: str, parts: Sequence[TextPart | ImagePart]) -> dict[str, Any]:
        texts: list[str] = []
        images: list[str] = []
        for part in parts:
            if isinstance(part, TextPart):
                texts.append(part.text)
                continue
            header, sep, data = part.url.partition(";base64,")
            if not sep or not header.startswith("data:"):
                raise BadRequestError(
                    f"{self.name}: Ollama takes images inline only; give the image as a "
                    f"data: URL (data:image/png;base64,...), not {part.url[:60]!r}",
                    provider=self.name,
                )
            images.append(data)
        item: dict[str, Any] = {
            "role": "system" if role == "developer" else role,
            "content": "\n".join(texts),
        }
        if images:
            item["images"] = images
        return item

    def _arguments(self, call: ToolCall) -> Any:
        """A tool call's arguments as the JSON object Ollama wants, from tollway's JSON text."""
        if not call.arguments.strip():
            return {}
        try:
            arguments = json.loads(call.arguments)
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            raise BadRequestError(
                f"{self.name}: the arguments of tool call {call.id!r} ({call.name}) must be a "
                f"JSON object for Ollama, not {call.arguments[:60]!r}",
                provider=self.name,
            )
        return arguments

    def _status_error(
        self,
        status: int,
        body: bytes,
        headers: CIMultiDictProxy[str],
        *,
        model: str | None = None,
    ) -> ProviderError:
        message: str | None = None
        try:
            error = json.loads(body)["error"]
            if isinstance(error, str):
                message = error
            elif isinstance(error, dict):
                message = error.get("message")
        except PARSE_ERRORS:
            pass
        page = not message
        exc = status_error(
            self.name, status, body, headers, message, request_id=headers.get(_REQUEST_ID_HEADER)
        )
        if status == 404:
            if page:
                _add_hint(
                    exc,
                    f"no Ollama API at {self._base}; base_url should be the server's root, "
                    f"such as {default_base_url()} (without /v1 or /api)",
                )
            elif model:
                _add_hint(exc, f"run `ollama pull {model}` on the Ollama host")
        return exc

    def _embedded_error(self, error: Any, request_id: str | None) -> ProviderError:
        """An ``{"error": ...}`` line in a stream (or a 200 body), which has no HTTP status."""
        text = error if isinstance(error, str) else json.dumps(error)[:EXCERPT_CHARS]
        lowered = text.lower()
        cls: type[ProviderError]
        if any(p in lowered for p in _NOT_FOUND_PHRASES):
            cls = NotFoundError
        elif any(p in lowered for p in _CONTEXT_PHRASES):
            cls = ContextLengthExceededError
        elif any(p in lowered for p in _BAD_REQUEST_PHRASES):
            cls = BadRequestError
        else:
            cls = UnavailableError
        return cls(
            f"{self.name} sent an error in place of an answer: {text}",
            provider=self.name,
            provider_message=text,
            request_id=request_id,
        )

    def _unparseable(self, body: bytes, cause: BaseException) -> ProviderError:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and "error" in parsed:
            return self._embedded_error(parsed["error"], None)
        return malformed(self.name, "an Ollama chat response", body, cause)

    def _transport_error(
        self, exc: BaseException, timeout: float | None, endpoint: str | None = None
    ) -> ProviderError:
        # Ollama's own advice for a slow first answer and for a server that is not running;
        # the rest as every provider words it, naming the URL as configured.
        if not isinstance(exc, aiohttp.ConnectionTimeoutError):
            if isinstance(exc, TimeoutError):
                seconds = timeout if timeout is not None else self.settings.timeout
                return ProviderTimeoutError(
                    f"{self.name} did not answer within {seconds:g}s (a model being loaded into "
                    "memory can take a while: raise timeout for the first call)",
                    provider=self.name,
                )
            if isinstance(exc, aiohttp.ClientConnectorError):
                return UnavailableError(
                    f"Ollama does not seem to be running at {self._base} ({exc.os_error}); start "
                    "it with `ollama serve` (or open the Ollama app), or point base_url (or "
                    "OLLAMA_HOST) at where it runs",
                    provider=self.name,
                )
        return super()._transport_error(exc, timeout, self._base)


def _keep_alive(value: str | None) -> str | float | None:
    """Seconds as a number (Ollama rejects ``"-1"`` as a duration string), else as given."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return value
    return int(seconds) if seconds.is_integer() else seconds


def _tools(tools: Sequence[Tool], choice: str | Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The tools to offer. Ollama has no tool_choice: "none" offers none, and a named function
    is the only one offered; "auto" and "required" offer all (Ollama cannot force a call)."""
    if choice == "none":
        return []
    only: str | None = None
    if isinstance(choice, str) and choice not in ("auto", "required"):
        only = choice
    elif isinstance(choice, Mapping):
        named = choice.get("function")
        only = named.get("name") if isinstance(named, Mapping) else choice.get("name")
    out = []
    for tool in tools:
        if only is not None and tool.name != only:
            continue
        function: dict[str, Any] = {"name": tool.name, "parameters": dict(tool.parameters)}
        if tool.description:
            function["description"] = tool.description
        out.append({"type": "function", "function": function})
    return out


def _format(response_format: Mapping[str, Any]) -> str | dict[str, Any] | None:
    """Ollama's ``format`` from OpenAI's ``response_format``, or from a bare JSON schema."""
    kind = response_format.get("type")
    if kind == "json_object":
        return "json"
    if kind == "text":
        return None
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        return dict(schema) if isinstance(schema, Mapping) else "json"
    return dict(response_format)


def _tool_call(call: Mapping[str, Any], index: int) -> ToolCall:
    function = call["function"]
    return ToolCall(call.get("id") or f"call_{index}", function["name"], _arguments_text(function))


def _tool_delta(call: Mapping[str, Any], index: int) -> ToolCallDelta:
    # Ollama sends each call whole, so one delta carries all of it.
    function = call["function"]
    return ToolCallDelta(
        index, call.get("id") or f"call_{index}", function["name"], _arguments_text(function)
    )


def _arguments_text(function: Mapping[str, Any]) -> str:
    arguments = function.get("arguments")
    if arguments is None:
        return "{}"
    # Ollama sends an object; a server imitating it may send the JSON text instead.
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _add_hint(error: ProviderError, hint: str) -> None:
    error.message = f"{error.message}; {hint}"
    error.args = (error.message,)
