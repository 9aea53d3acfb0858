"""OpenAI's Chat Completions API over the pipeline's pooled aiohttp session; Azure as a variant.

Every call passes through here, so the request path builds plain dicts and records directly,
encodes with ``json.dumps`` and decodes with ``json.loads``, and does nothing per call that can
be done once per provider (URLs, headers, the default timeout).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from tollway.errors import (
    BadRequestError,
    ConfigError,
    ContextLengthExceededError,
    ProviderError,
    RateLimitedError,
    StreamInterruptedError,
    UnavailableError,
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
from tollway.providers.wire import decode as _decode
from tollway.types import (
    ImagePart,
    Message,
    ModelInfo,
    Request,
    Response,
    StreamChunk,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from tollway_openai.settings import OPENAI_BASE_URL, AzureSettings, OpenAISettings

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy

    from tollway.providers.base import ProviderContext

__all__ = ["AzureOpenAIProvider", "OpenAIProvider"]

_NO_USAGE = Usage()
# Reasoning models reject ``max_tokens``; anything named like one gets ``max_completion_tokens``.
_REASONING_PREFIXES = ("o1", "o2", "o3", "o4", "o5", "o6", "o7", "o8", "o9", "gpt-5")
_TOOL_CHOICE_KEYWORDS = frozenset(("auto", "none", "required"))
# Mid-stream (and HTTP 200) error bodies carry no status; their ``type``/``code`` say what
# went wrong.
_RATE_LIMIT_KINDS = frozenset(("rate_limit_exceeded", "requests", "tokens", "429"))
_SERVER_KINDS = frozenset(("server_error", "api_error", "internal_error", "500", "503"))


class OpenAIProvider(HttpProvider):
    """An OpenAI endpoint: api.openai.com, or any server with the same API at ``base_url``."""

    settings: OpenAISettings | AzureSettings

    def __init__(self, settings: OpenAISettings | AzureSettings, context: ProviderContext) -> None:
        super().__init__(settings, context)
        self._base = self._base_url().rstrip("/")
        self._endpoint = checked_endpoint(self._base, self.name, self._url_key)
        self._official = urlsplit(self._base).hostname == "api.openai.com"
        # Built on the first call, so a provider that is configured but never used needs no key.
        self._headers: dict[str, str] | None = None
        self._max_tokens_param = settings.max_tokens_param
        self._chat_urls: dict[str, URL] = {}
        self._completions_url = URL(self._base + "/chat/completions", encoded=True)

    _url_key = "base_url"

    # -- what differs between OpenAI and Azure ---------------------------------------------

    def _base_url(self) -> str:
        return self.settings.base_url or OPENAI_BASE_URL

    def _chat_url(self, model: str) -> URL:
        return self._completions_url

    def _models_url(self) -> URL:
        return URL(self._base + "/models", encoded=True)

    def _auth_headers(self, key: str | None) -> dict[str, str]:
        settings = self.settings
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        organization = getattr(settings, "organization", None)
        project = getattr(settings, "project", None)
        if organization:
            headers["OpenAI-Organization"] = organization
        if project:
            headers["OpenAI-Project"] = project
        return headers

    def _key_required(self) -> bool:
        # A local OpenAI-compatible server (vLLM, llama.cpp, Ollama) usually wants no key.
        return self._official

    def _max_tokens_field(self, model: str) -> str:
        if self._max_tokens_param:
            return self._max_tokens_param
        if self._official or model.startswith(_REASONING_PREFIXES):
            return "max_completion_tokens"
        return "max_tokens"

    # -- the Provider protocol -------------------------------------------------------------

    async def complete(self, request: Request) -> Response:
        model = request.model_name
        data = json.dumps(self._payload(request, model)).encode()
        # _send's steps, inlined: this is the one call every request makes.
        headers = self._headers or self._resolve_headers()
        handle = self._handle or self._take_handle()
        started = time.perf_counter()
        sent = time.monotonic()
        try:
            async with handle.session.post(
                self._chat_url(model),
                data=data,
                headers=headers,
                timeout=self._timeout_for(request.timeout),
            ) as http_response:
                body = await http_response.read()
                status = http_response.status
                response_headers = http_response.headers
        except (TimeoutError, aiohttp.ClientError) as exc:
            handle.failed(sent, exc)
            raise self._transport_error(exc, request.timeout) from exc
        handle.ok(sent)
        if status >= 400:
            raise self._count(self._status_error(status, body, response_headers))
        try:
            parsed = _decode(body.decode())
            choice = parsed["choices"][0]
            message = choice["message"]
            text = message.get("content")
            if text is None:
                # A refusal comes instead of content; it is the answer the user should see.
                text = message.get("refusal") or ""
            elif not isinstance(text, str):
                raise TypeError("content is not a string")
            raw_calls = message.get("tool_calls")
            calls = (
                tuple(
                    ToolCall(c["id"], c["function"]["name"], c["function"].get("arguments") or "{}")
                    for c in raw_calls
                )
                if raw_calls
                else ()
            )
            response = Response(
                parsed.get("id") or "",
                f"{self.name}/{parsed.get('model') or model}",
                self.name,
                Message("assistant", text, calls),
                choice.get("finish_reason"),
                _usage(parsed.get("usage")),
                None,
                response_headers.get("x-request-id") or response_headers.get("apim-request-id"),
                time.perf_counter() - started,
                _rate_limit(response_headers),
            )
        except PARSE_ERRORS as exc:
            raise self._count(self._unparseable(body, exc)) from None
        return response

    async def stream(self, request: Request) -> AsyncIterator[StreamChunk]:
        model = request.model_name
        payload = self._payload(request, model)
        payload["stream"] = True
        options = payload.get("stream_options")
        # Without include_usage OpenAI reports no usage for a stream, and it could not be billed.
        payload["stream_options"] = (
            {**options, "include_usage": True} if options else {"include_usage": True}
        )
        data = json.dumps(payload).encode()
        handle = self._handle or self._take_handle()
        sent = time.monotonic()
        try:
            response = await handle.session.post(
                self._chat_url(model),
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
        try:
            if response.status >= 400 or response.content_type == "application/json":
                # An error status, or a server that ignored "stream": true and answered at once.
                body = await response.read()
                if response.status >= 400:
                    raise self._status_error(response.status, body, response.headers)
                raise self._unparseable(body, ValueError("expected an event stream"))
            name = self.name
            async for event, text in iter_sse(response):
                if text == "[DONE]":
                    done = True
                    break
                try:
                    obj = _decode(text)
                    chunk = self._chunk(obj, name) if event != "error" else None
                    if chunk is None and (event == "error" or "error" in obj):
                        raise self._embedded_error(obj.get("error", obj))
                except PARSE_ERRORS as exc:
                    raise self._unparseable(text.encode(), exc) from None
                if chunk is not None:
                    started = True
                    yield chunk
            if not done:
                raise StreamInterruptedError(
                    f"{name}'s stream ended without [DONE]; the answer may be incomplete",
                    provider=name,
                    request_id=response.headers.get("x-request-id"),
                )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._stream_broken(
                handle, exc, started, response.headers.get("x-request-id"), request.timeout
            ) from exc
        except ProviderError as exc:
            self._count(exc)
            raise
        except UnicodeDecodeError as exc:
            # iter_sse decodes each data line; a server sending something else is malformed.
            raise self._not_utf8(exc) from None
        finally:
            if done:
                # The body is finished, so the connection can go back to the pool.
                response.release()
            else:
                # The consumer stopped early or the stream failed: a half-read connection
                # cannot be reused, and closing it tells the server to stop generating.
                response.close()

    async def list_models(self) -> list[ModelInfo]:
        body, _ = await self._send(
            "GET", self._models_url(), None, None, self._headers or self._resolve_headers()
        )
        try:
            items = json.loads(body)["data"]
            return [
                ModelInfo(item["id"], self.name, owned_by=item.get("owned_by")) for item in items
            ]
        except PARSE_ERRORS as exc:
            raise self._count(self._unparseable(body, exc)) from None

    # -- HTTP ------------------------------------------------------------------------------

    def _resolve_headers(self) -> dict[str, str]:
        settings = self.settings
        key = configured_key(settings)
        custom = {k.lower() for k in settings.headers}
        if not key and self._key_required() and not custom & {"authorization", "api-key"}:
            raise no_api_key(self.name, settings.api_key_env)
        headers = {"Content-Type": "application/json"}
        headers.update(self._auth_headers(key))
        headers.update(settings.headers)
        self._headers = headers
        return headers

    # -- building and reading --------------------------------------------------------------

    def _payload(self, request: Request, model: str) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": model,
            "messages": [_message(m) for m in request.messages],
        }
        if request.max_tokens is not None:
            payload[self._max_tokens_field(model)] = request.max_tokens
        if request.temperature is not None:
            payload["temperature"] = request.temperature
        if request.top_p is not None:
            payload["top_p"] = request.top_p
        if request.stop:
            payload["stop"] = list(request.stop)
        if request.seed is not None:
            payload["seed"] = request.seed
        if request.tools:
            payload["tools"] = [_tool(t) for t in request.tools]
        choice = request.tool_choice
        if choice is not None:
            if isinstance(choice, str):
                # A bare function name is the short way of forcing that function.
                payload["tool_choice"] = (
                    choice
                    if choice in _TOOL_CHOICE_KEYWORDS
                    else {"type": "function", "function": {"name": choice}}
                )
            else:
                payload["tool_choice"] = dict(choice)
        if request.response_format is not None:
            payload["response_format"] = dict(request.response_format)
        if request.user is not None:
            payload["user"] = request.user
        if request.extra:
            payload.update(request.extra)
        return payload

    def _chunk(self, obj: dict[str, Any], name: str) -> StreamChunk | None:
        """The chunk an event carries, or None for one with nothing in it (the role chunk,
        Azure's content-filter preamble)."""
        choices = obj.get("choices")
        usage = obj.get("usage")
        if choices:
            choice = choices[0]
            delta = choice.get("delta") or {}
            text = delta.get("content") or delta.get("refusal") or ""
            if not isinstance(text, str):
                raise TypeError("delta content is not a string")
            raw_calls = delta.get("tool_calls")
            finish = choice.get("finish_reason")
            if not text and not raw_calls and finish is None and not usage:
                return None
            calls = tuple(_tool_delta(c, n) for n, c in enumerate(raw_calls)) if raw_calls else ()
        elif usage:
            text, calls, finish = "", (), None
        else:
            return None
        model = obj.get("model")
        return StreamChunk(
            text,
            calls,
            finish,
            _usage(usage) if usage else None,
            obj.get("id") or None,
            f"{name}/{model}" if model else None,
        )

    def _status_error(
        self,
        status: int,
        body: bytes,
        headers: CIMultiDictProxy[str],
        *,
        model: str | None = None,
    ) -> ProviderError:
        message: str | None = None
        code: Any = None
        try:
            error = json.loads(body)["error"]
            if isinstance(error, dict):
                message = error.get("message")
                code = error.get("code") or error.get("type")
            elif isinstance(error, str):
                message = error
        except PARSE_ERRORS:
            pass
        return status_error(
            self.name,
            status,
            body,
            headers,
            message,
            request_id=headers.get("x-request-id") or headers.get("apim-request-id"),
            code=str(code) if code is not None else None,
        )

    def _embedded_error(self, error: Any) -> ProviderError:
        """An error sent inside a 200 answer (mid-stream), which has no HTTP status."""
        if isinstance(error, dict):
            message = error.get("message")
            kind = error.get("type")
            code = error.get("code")
        else:
            message, kind, code = error, None, None
        code_text = str(code) if code is not None else (str(kind) if kind else None)
        cls: type[ProviderError]
        if (kind is None and code is None) or kind in _SERVER_KINDS or code_text in _SERVER_KINDS:
            cls = UnavailableError
        elif kind in _RATE_LIMIT_KINDS or code_text in _RATE_LIMIT_KINDS:
            cls = RateLimitedError
        elif code_text == "context_length_exceeded":
            cls = ContextLengthExceededError
        elif kind == "invalid_request_error":
            cls = BadRequestError
        else:
            cls = ProviderError
        text = str(message) if message else json.dumps(error)[:EXCERPT_CHARS]
        return cls(
            f"{self.name} sent an error in place of an answer: {text}",
            provider=self.name,
            provider_message=text,
            code=code_text,
        )

    def _unparseable(self, body: bytes, cause: BaseException) -> ProviderError:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and "error" in parsed:
            # Some OpenAI-compatible servers send their errors with status 200.
            return self._embedded_error(parsed["error"])
        return malformed(self.name, "an OpenAI chat completion", body, cause)


class AzureOpenAIProvider(OpenAIProvider):
    """An Azure OpenAI resource: a deployment per model, an ``api-key`` header and an
    ``api-version`` on every URL."""

    settings: AzureSettings
    _url_key = "endpoint"

    def _base_url(self) -> str:
        settings = self.settings
        endpoint = settings.endpoint or settings.base_url or os.environ.get("AZURE_OPENAI_ENDPOINT")
        if not endpoint:
            raise ConfigError(
                "Azure OpenAI needs the resource's endpoint, e.g. "
                '"https://myresource.openai.azure.com"; set endpoint here or AZURE_OPENAI_ENDPOINT',
                key=f"providers.{self.name}.endpoint",
            )
        return endpoint

    def _chat_url(self, model: str) -> URL:
        url = self._chat_urls.get(model)
        if url is None:
            deployment = self.settings.deployments.get(model, model)
            url = self._chat_urls[model] = URL(
                f"{self._base}/openai/deployments/{quote(deployment, safe='')}/chat/completions"
                f"?api-version={quote(self.settings.api_version, safe='')}",
                encoded=True,
            )
        return url

    def _models_url(self) -> URL:
        return URL(
            f"{self._base}/openai/models?api-version={quote(self.settings.api_version, safe='')}",
            encoded=True,
        )

    def _auth_headers(self, key: str | None) -> dict[str, str]:
        return {"api-key": key} if key else {}

    def _key_required(self) -> bool:
        return True


def _message(message: Message) -> dict[str, Any]:
    content = message.content
    out: dict[str, Any] = {
        "role": message.role,
        "content": content if isinstance(content, str) else [_part(p) for p in content],
    }
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
        if content == "":
            # OpenAI's own form for a turn that only calls tools.
            out["content"] = None
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def _part(part: TextPart | ImagePart) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    image: dict[str, str] = {"url": part.url}
    if part.detail is not None:
        image["detail"] = part.detail
    return {"type": "image_url", "image_url": image}


def _tool(tool: Any) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": dict(tool.parameters)}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _tool_delta(call: Mapping[str, Any], position: int) -> ToolCallDelta:
    function = call.get("function") or {}
    return ToolCallDelta(
        call.get("index", position),
        call.get("id"),
        function.get("name"),
        function.get("arguments") or "",
    )


def _rate_limit(headers: Mapping[str, str]) -> dict[str, str] | None:
    """OpenAI's x-ratelimit-* headers, for the rate-limit stage to learn the real limits from."""
    if "x-ratelimit-remaining-requests" not in headers and (
        "x-ratelimit-remaining-tokens" not in headers
    ):
        return None
    return {name: headers[name] for name in _RATE_LIMIT_HEADERS if name in headers}


_RATE_LIMIT_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
)


def _usage(usage: Mapping[str, Any] | None) -> Usage:
    if not usage:
        return _NO_USAGE
    prompt = usage.get("prompt_tokens_details")
    completion = usage.get("completion_tokens_details")
    return Usage(
        usage.get("prompt_tokens") or 0,
        usage.get("completion_tokens") or 0,
        (prompt.get("cached_tokens") or 0) if prompt else 0,
        0,
        (completion.get("reasoning_tokens") or 0) if completion else 0,
    )
