"""Anthropic's Messages API over the pipeline's pooled aiohttp session.

Every call passes through here, so the request path builds plain dicts and records directly,
encodes with ``json.dumps`` and decodes each body or event with one ``json.loads``, and does
once per provider what can be done once (URLs, headers, the default timeout).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from tollway.errors import (
    BadRequestError,
    ProviderError,
    StreamInterruptedError,
    error_for_status,
)
from tollway.providers.sse import iter_sse
from tollway.providers.wire import (
    EXCERPT_CHARS,
    PARSE_ERRORS,
    HttpProvider,
    checked_endpoint,
    configured_key,
    malformed,
    no_api_key,
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
from tollway_anthropic.settings import ANTHROPIC_BASE_URL, AnthropicSettings

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy

    from tollway.providers.base import ProviderContext

__all__ = ["AnthropicProvider"]

_MODELS_PAGE = 1000  # the most /v1/models gives per page

# Anthropic's stop reasons in OpenAI's vocabulary; anything else (``pause_turn``, a reason added
# later) is passed on as Anthropic named it, since no OpenAI word would say the same.
_FINISH: dict[str | None, str | None] = {
    None: None,
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_TOOL_CHOICE: dict[str, dict[str, str]] = {
    "auto": {"type": "auto"},
    "required": {"type": "any"},
    "any": {"type": "any"},
    "none": {"type": "none"},
}
# An error event inside a stream has no HTTP status; its ``type`` says which status Anthropic
# would have answered with, and that picks the tollway error class.
_STATUS_OF_ERROR_TYPE: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
_SYSTEM_ROLES = frozenset(("system", "developer"))


class _ImageError(ValueError):
    """An image part Anthropic cannot take; raised as BadRequestError naming the provider."""


class AnthropicProvider(HttpProvider):
    """Anthropic's ``/v1/messages``, at api.anthropic.com or a server with the same API."""

    settings: AnthropicSettings

    def __init__(self, settings: AnthropicSettings, context: ProviderContext) -> None:
        super().__init__(settings, context)
        base = (settings.base_url or ANTHROPIC_BASE_URL).rstrip("/")
        # The SDK's base URL has no /v1, OpenAI's has one; take either so a copied URL works.
        self._base = base[:-3] if base.endswith("/v1") else base
        self._endpoint = checked_endpoint(self._base, self.name, "base_url")
        self._messages_url = URL(self._base + "/v1/messages", encoded=True)
        # Built on the first call, so a provider that is configured but never used needs no key.
        self._headers: dict[str, str] | None = None
        self._default_max_tokens = settings.default_max_tokens
        cache = settings.system_cache_control
        self._system_cache = dict(cache) if cache else None

    # -- the Provider protocol -------------------------------------------------------------

    async def complete(self, request: Request) -> Response:
        model = request.model_name
        data = json.dumps(self._payload(request, model)).encode()
        started = time.perf_counter()
        body, headers = await self._send(
            "POST",
            self._messages_url,
            data,
            request.timeout,
            self._headers or self._resolve_headers(),
        )
        try:
            parsed = json.loads(body)
            texts: list[str] = []
            calls: list[ToolCall] = []
            for block in parsed["content"]:
                kind = block["type"]
                if kind == "text":
                    texts.append(block["text"])
                elif kind == "tool_use":
                    calls.append(ToolCall(block["id"], block["name"], json.dumps(block["input"])))
                # thinking, redacted_thinking and server-tool blocks are not the answer.
            text = texts[0] if len(texts) == 1 else "".join(texts)
            if not isinstance(text, str):
                raise TypeError("a text block's text is not a string")
            stop = parsed.get("stop_reason")
            response = Response(
                parsed["id"],
                f"{self.name}/{parsed.get('model') or model}",
                self.name,
                Message("assistant", text, tuple(calls)),
                _FINISH.get(stop, stop),
                _usage(parsed["usage"]),
                None,
                headers.get("request-id"),
                time.perf_counter() - started,
            )
        except PARSE_ERRORS as exc:
            raise self._count(self._unparseable(body, exc)) from None
        return response

    async def stream(self, request: Request) -> AsyncIterator[StreamChunk]:
        model = request.model_name
        payload = self._payload(request, model)
        payload["stream"] = True
        data = json.dumps(payload).encode()
        headers = self._headers or self._resolve_headers()
        handle = self._handle or self._take_handle()
        sent = time.monotonic()
        try:
            response = await handle.session.post(
                self._messages_url,
                data=data,
                headers=headers,
                timeout=self._timeout_for(request.timeout),
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            handle.failed(sent, exc)
            raise self._transport_error(exc, request.timeout) from exc
        handle.ok(sent)

        request_id = response.headers.get("request-id")
        done = False
        started = False
        try:
            if response.status >= 400 or response.content_type != "text/event-stream":
                # An error status, a server that ignored "stream": true and answered at once, or
                # a page from something in between (a proxy's login page).
                body = await response.read()
                if response.status >= 400:
                    raise self._status_error(response.status, body, response.headers)
                raise self._unparseable(body, ValueError("expected an event stream"))
            name = self.name
            loads = json.loads
            message_id: str | None = None
            chunk_model: str | None = None
            input_tokens = cache_read = cache_write = output_tokens = thinking_tokens = 0
            # Content-block index -> the tool call's ordinal among the answer's tool calls.
            tools: dict[int, int] = {}
            async for event, text in iter_sse(response):
                if done:
                    continue
                try:
                    obj = loads(text)
                    kind = obj["type"]
                    if kind == "content_block_delta":
                        delta = obj["delta"]
                        delta_type = delta["type"]
                        if delta_type == "text_delta":
                            piece = delta["text"]
                            if not piece:
                                continue
                            if not isinstance(piece, str):
                                raise TypeError("text_delta text is not a string")
                            chunk = StreamChunk(piece, (), None, None, message_id, chunk_model)
                        elif delta_type == "input_json_delta":
                            ordinal = tools.get(obj["index"])
                            partial = delta["partial_json"]
                            # A server tool's input (web search) streams too; it is not ours.
                            if ordinal is None or not partial:
                                continue
                            chunk = StreamChunk(
                                "",
                                (ToolCallDelta(ordinal, None, None, partial),),
                                None,
                                None,
                                message_id,
                                chunk_model,
                            )
                        else:
                            # thinking_delta, signature_delta, citations_delta: not answer text.
                            continue
                    elif kind == "content_block_start":
                        block = obj["content_block"]
                        block_type = block["type"]
                        if block_type == "tool_use":
                            ordinal = tools[obj["index"]] = len(tools)
                            chunk = StreamChunk(
                                "",
                                (ToolCallDelta(ordinal, block["id"], block["name"], ""),),
                                None,
                                None,
                                message_id,
                                chunk_model,
                            )
                        elif block_type == "text" and block.get("text"):
                            chunk = StreamChunk(
                                block["text"], (), None, None, message_id, chunk_model
                            )
                        else:
                            continue
                    elif kind == "message_start":
                        message = obj["message"]
                        message_id = message["id"]
                        reported = message.get("model")
                        chunk_model = f"{name}/{reported}" if reported else None
                        usage = message.get("usage")
                        if usage:
                            input_tokens = usage.get("input_tokens") or 0
                            cache_read = usage.get("cache_read_input_tokens") or 0
                            cache_write = usage.get("cache_creation_input_tokens") or 0
                            output_tokens = usage.get("output_tokens") or 0
                        continue
                    elif kind == "message_delta":
                        stop = obj["delta"].get("stop_reason")
                        usage = obj.get("usage")
                        if usage:
                            # Cumulative totals: they replace, and an absent one keeps the
                            # message_start value.
                            output_tokens = usage.get("output_tokens") or output_tokens
                            value = usage.get("input_tokens")
                            if value is not None:
                                input_tokens = value
                            value = usage.get("cache_read_input_tokens")
                            if value is not None:
                                cache_read = value
                            value = usage.get("cache_creation_input_tokens")
                            if value is not None:
                                cache_write = value
                            details = usage.get("output_tokens_details")
                            if details:
                                thinking_tokens = details.get("thinking_tokens") or 0
                        chunk = StreamChunk(
                            "",
                            (),
                            _FINISH.get(stop, stop),
                            Usage(
                                input_tokens + cache_read + cache_write,
                                output_tokens,
                                cache_read,
                                cache_write,
                                thinking_tokens,
                            ),
                            message_id,
                            chunk_model,
                        )
                    elif kind == "message_stop":
                        # Read on to the end of the body rather than stop here, so the
                        # connection goes back to the pool whole.
                        done = True
                        continue
                    elif kind == "error" or event == "error":
                        raise self._stream_error(obj.get("error"), request_id)
                    else:
                        # ping, content_block_stop, and event types added later.
                        continue
                except PARSE_ERRORS as exc:
                    raise self._unparseable(text.encode(), exc) from None
                started = True
                yield chunk
            if not done:
                raise StreamInterruptedError(
                    f"{name}'s stream ended before message_stop; the answer may be incomplete",
                    provider=name,
                    request_id=request_id,
                )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._stream_broken(handle, exc, started, request_id, request.timeout) from exc
        except ProviderError as exc:
            self._count(exc)
            raise
        except UnicodeDecodeError as exc:
            # iter_sse decodes each data line; a server sending something else is malformed.
            raise self._not_utf8(exc) from None
        finally:
            if done:
                response.release()
            else:
                # The consumer stopped early or the stream failed: a half-read connection
                # cannot be reused, and closing it tells Anthropic to stop generating.
                response.close()

    async def list_models(self) -> list[ModelInfo]:
        models: list[ModelInfo] = []
        after: str | None = None
        while True:
            query = f"?limit={_MODELS_PAGE}"
            if after:
                query += f"&after_id={quote(after, safe='')}"
            url = URL(self._base + "/v1/models" + query, encoded=True)
            body, _ = await self._send(
                "GET", url, None, None, self._headers or self._resolve_headers()
            )
            try:
                page = json.loads(body)
                for item in page["data"]:
                    models.append(
                        ModelInfo(
                            item["id"],
                            self.name,
                            context_window=item.get("max_input_tokens"),
                            max_output_tokens=item.get("max_tokens"),
                            owned_by="anthropic",
                        )
                    )
                after = page.get("last_id") if page.get("has_more") else None
            except PARSE_ERRORS as exc:
                raise self._count(self._unparseable(body, exc)) from None
            if not after:
                return models

    # -- HTTP ------------------------------------------------------------------------------

    def _resolve_headers(self) -> dict[str, str]:
        settings = self.settings
        key = configured_key(settings)
        custom = {k.lower() for k in settings.headers}
        if not key and not custom & {"x-api-key", "authorization"}:
            raise no_api_key(self.name, settings.api_key_env)
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "anthropic-version": settings.anthropic_version,
        }
        if key:
            headers["x-api-key"] = key
        if settings.beta:
            headers["anthropic-beta"] = ",".join(settings.beta)
        headers.update(settings.headers)
        self._headers = headers
        return headers

    # -- building the request --------------------------------------------------------------

    def _payload(self, request: Request, model: str) -> dict[str, Any]:
        try:
            system, messages = self._messages(request.messages)
        except _ImageError as exc:
            raise BadRequestError(str(exc), provider=self.name) from None
        max_tokens = request.max_tokens
        payload: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens if max_tokens is not None else self._default_max_tokens,
            "messages": messages,
        }
        if system:
            cache = self._system_cache
            payload["system"] = (
                [{"type": "text", "text": system, "cache_control": cache}] if cache else system
            )
        if request.temperature is not None:
            payload["temperature"] = request.temperature
        if request.top_p is not None:
            payload["top_p"] = request.top_p
        if request.stop:
            payload["stop_sequences"] = list(request.stop)
        if request.tools:
            payload["tools"] = [_tool(t) for t in request.tools]
        choice = request.tool_choice
        if choice is not None:
            payload["tool_choice"] = _tool_choice(choice)
        if request.user is not None:
            payload["metadata"] = {"user_id": request.user}
        if request.extra:
            payload.update(request.extra)
        return payload

    def _messages(self, messages: Sequence[Message]) -> tuple[str, list[dict[str, Any]]]:
        """The joined system prompt, and the turns with roles alternating as Anthropic requires:
        tool results become user turns, and consecutive turns of one role are merged."""
        system: list[str] = []
        out: list[dict[str, Any]] = []
        previous: dict[str, Any] | None = None
        for message in messages:
            role = message.role
            content: str | list[dict[str, Any]]
            if role in _SYSTEM_ROLES:
                text = message.text
                if text:
                    system.append(text)
                continue
            if role == "tool":
                role = "user"
                content = [self._tool_result(message)]
            elif message.tool_calls:
                content = _blocks(message.content)
                content.extend(self._tool_use(call) for call in message.tool_calls)
            else:
                raw = message.content
                content = raw if isinstance(raw, str) else [_block(p) for p in raw]
            if previous is not None and previous["role"] == role:
                merged = _as_blocks(previous["content"])
                merged.extend(_as_blocks(content))
                previous["content"] = merged
            else:
                previous = {"role": role, "content": content}
                out.append(previous)
        return "\n\n".join(system), out

    def _tool_use(self, call: ToolCall) -> dict[str, Any]:
        arguments = call.arguments
        try:
            parsed = json.loads(arguments) if arguments else {}
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise BadRequestError(
                f"the assistant's tool call {call.id!r} ({call.name}) has arguments that are not "
                f"a JSON object, which Anthropic requires: {arguments[:EXCERPT_CHARS]!r}",
                provider=self.name,
            )
        return {"type": "tool_use", "id": call.id, "name": call.name, "input": parsed}

    def _tool_result(self, message: Message) -> dict[str, Any]:
        if not message.tool_call_id:
            raise BadRequestError(
                "a message with role 'tool' needs tool_call_id: the id of the assistant's tool "
                "call it answers",
                provider=self.name,
            )
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
        content = message.content
        if isinstance(content, str):
            if content:
                block["content"] = content
        else:
            block["content"] = [_block(p) for p in content]
        return block

    # -- reading answers and errors --------------------------------------------------------

    def _status_error(
        self,
        status: int,
        body: bytes,
        headers: CIMultiDictProxy[str],
        *,
        model: str | None = None,
    ) -> ProviderError:
        message: Any = None
        kind: Any = None
        request_id = headers.get("request-id")
        try:
            parsed = json.loads(body)
            error = parsed["error"]
            if isinstance(error, dict):
                message = error.get("message")
                kind = error.get("type")
            elif isinstance(error, str):
                message = error
            request_id = request_id or parsed.get("request_id")
        except PARSE_ERRORS:
            pass
        return status_error(
            self.name,
            status,
            body,
            headers,
            message,
            request_id=request_id,
            code=str(kind) if kind else None,
        )

    def _stream_error(self, error: Any, request_id: str | None) -> ProviderError:
        """An ``error`` event: Anthropic's way of failing a stream after its 200 was sent."""
        if isinstance(error, dict):
            message, kind = error.get("message"), error.get("type")
        else:
            message, kind = error, None
        text = str(message) if message else json.dumps(error)[:EXCERPT_CHARS]
        code = str(kind) if kind else None
        # The class an HTTP answer of the same type would get, without pretending to a status.
        status = _STATUS_OF_ERROR_TYPE.get(code or "", 500)
        cls = type(error_for_status(status, provider=self.name, provider_message=text))
        return cls(
            f"{self.name} sent an error in the middle of the stream: {text}",
            provider=self.name,
            provider_message=text,
            request_id=request_id,
            code=code,
        )

    def _unparseable(self, body: bytes, cause: BaseException) -> ProviderError:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and parsed.get("type") == "error" and "error" in parsed:
            return self._stream_error(parsed["error"], parsed.get("request_id"))
        return malformed(self.name, "an Anthropic message", body, cause)


def _block(part: TextPart | ImagePart) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    url = part.url
    if url.startswith("data:"):
        header, comma, data = url.partition(",")
        media_type, _, encoding = header[5:].partition(";")
        if not comma or encoding != "base64" or not media_type:
            raise _ImageError(
                f"image URL {url[:60]!r} is a data: URL but not base64 with a media type; "
                "Anthropic takes data:image/png;base64,... (png, jpeg, gif or webp) or https URLs"
            )
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content: str | tuple[TextPart | ImagePart, ...]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        # Anthropic rejects empty text blocks; a turn that only calls tools has none.
        return [{"type": "text", "text": content}] if content else []
    return [_block(p) for p in content]


def _as_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return content


def _tool(tool: Tool) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": tool.name, "input_schema": dict(tool.parameters)}
    if tool.description:
        spec["description"] = tool.description
    return spec


def _tool_choice(choice: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(choice, str):
        # A bare name other than the keywords is the short way of forcing that tool.
        known = _TOOL_CHOICE.get(choice)
        return dict(known) if known is not None else {"type": "tool", "name": choice}
    if choice.get("type") == "function":
        # OpenAI's form, as an application written against OpenAI sends it.
        function = choice.get("function") or {}
        return {"type": "tool", "name": function.get("name", "")}
    return dict(choice)


def _usage(usage: Mapping[str, Any]) -> Usage:
    # Anthropic's input_tokens leaves out the tokens read from or written to the cache.
    read = usage.get("cache_read_input_tokens") or 0
    write = usage.get("cache_creation_input_tokens") or 0
    details = usage.get("output_tokens_details")
    return Usage(
        (usage.get("input_tokens") or 0) + read + write,
        usage.get("output_tokens") or 0,
        read,
        write,
        (details.get("thinking_tokens") or 0) if details else 0,
    )
