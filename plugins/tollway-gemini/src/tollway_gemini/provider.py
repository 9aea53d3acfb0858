"""Gemini's generateContent API over the pipeline's pooled aiohttp session; Vertex AI as a variant.

Every call passes through here, so the request path builds plain dicts and records directly,
encodes with ``json.dumps`` and decodes each body or event with one ``json.loads``, and does
nothing per call that can be done once per provider or per model (URLs, headers, names).
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote_to_bytes, urlsplit

import aiohttp
from yarl import URL

from tollway.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigError,
    ContentFilteredError,
    ContextLengthExceededError,
    MalformedResponseError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
    StreamInterruptedError,
    UnavailableError,
    error_for_status,
)
from tollway.providers.sse import iter_sse
from tollway.providers.wire import (
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
from tollway_gemini.settings import GEMINI_BASE_URL, GeminiSettings, VertexSettings

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy

    from tollway.providers.base import ProviderContext

__all__ = ["GeminiProvider", "VertexProvider"]

_NO_USAGE = Usage()
_MAX_MODEL_PAGES = 20

_FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
}
# Finish reasons that mean a safety system stopped the answer; with no usable text they are an
# error, with some they are a "content_filter" finish.
_FILTER_FINISHES = frozenset(
    ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY")
)
# The model tried to call a function and wrote something that is not a call: nothing usable
# came, and asking again often works.
_BROKEN_CALL_FINISHES = frozenset(("MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL"))
_TOOL_CHOICE_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY", "any": "ANY"}
# Error bodies inside a 200 (a mid-stream error) may carry only Google's status name.
_STATUS_CODES = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
_AUTH_REASONS = frozenset(("API_KEY_INVALID", "API_KEY_EXPIRED", "ACCESS_TOKEN_EXPIRED"))
# Gemini words an over-long prompt this way, which the core's phrase list does not know.
_TOO_LONG_PHRASE = "exceeds the maximum number of tokens"


class GeminiProvider(HttpProvider):
    """The Gemini API: generativelanguage.googleapis.com, or a server like it at ``base_url``."""

    settings: GeminiSettings | VertexSettings

    def __init__(self, settings: GeminiSettings | VertexSettings, context: ProviderContext) -> None:
        super().__init__(settings, context)
        self._base = self._base_url().rstrip("/")
        self._endpoint = checked_endpoint(self._base, self.name, "base_url")
        # Built on the first call, so a provider that is configured but never used needs no key.
        self._headers: dict[str, str] | None = None
        self._urls: dict[str, tuple[URL, URL, str]] = {}

    # -- what differs between the Gemini API and Vertex AI ---------------------------------

    def _base_url(self) -> str:
        return self.settings.base_url or GEMINI_BASE_URL

    def _model_path(self, model: str) -> str:
        # A tuned model is addressed as tunedModels/NAME; a bare name is a base model.
        if model.startswith(("models/", "tunedModels/")):
            return quote(model, safe="/")
        return "models/" + quote(model, safe="")

    def _models_url(self, page_token: str | None) -> URL:
        url = f"{self._base}/{self.settings.api_version}/models?pageSize=1000"
        if page_token:
            url += "&pageToken=" + quote(page_token, safe="")
        return URL(url, encoded=True)

    def _request_headers(self) -> dict[str, str]:
        headers = self._headers
        if headers is not None:
            return headers
        settings = self.settings
        key = configured_key(settings)
        env = settings.api_key_env
        if not key and env == "GEMINI_API_KEY":
            key = os.environ.get("GOOGLE_API_KEY") or None
        custom = {k.lower() for k in settings.headers}
        if not key and not custom & {"x-goog-api-key", "authorization"}:
            raise no_api_key(self.name, env, "; get a key at https://aistudio.google.com/apikey")
        headers = {"Content-Type": "application/json"}
        if key:
            headers["x-goog-api-key"] = key
        headers.update(settings.headers)
        self._headers = headers
        return headers

    # -- the Provider protocol -------------------------------------------------------------

    async def complete(self, request: Request) -> Response:
        model = request.model_name
        url, _, label = self._urls.get(model) or self._urls_for(model)
        data = json.dumps(self._payload(request)).encode()
        started = time.perf_counter()
        body, headers = await self._send(
            "POST", url, data, request.timeout, self._request_headers()
        )
        try:
            parsed = json.loads(body)
            candidate = self._candidate(parsed, in_stream=False)
            content = candidate.get("content")
            parts = content.get("parts") if content else None
            texts: list[str] = []
            calls: list[ToolCall] = []
            for part in parts or ():
                if "text" in part:
                    if not part.get("thought"):
                        texts.append(part["text"])
                elif "functionCall" in part:
                    call = part["functionCall"]
                    calls.append(
                        ToolCall(
                            call.get("id") or f"call_{len(calls)}",
                            call["name"],
                            json.dumps(call.get("args") or {}, ensure_ascii=False),
                        )
                    )
            text = "".join(texts)
            raw_finish = candidate.get("finishReason")
            response_id = parsed.get("responseId") or ""
            usage = _usage(parsed.get("usageMetadata"))
        except PARSE_ERRORS as exc:
            raise self._count(self._unparseable(body, exc)) from None
        finish = self._finish(raw_finish, candidate, bool(text or calls), bool(calls))
        return Response(
            response_id,
            label,
            self.name,
            Message("assistant", text, tuple(calls)),
            finish,
            usage,
            None,
            headers.get("x-request-id") or response_id or None,
            time.perf_counter() - started,
        )

    async def stream(self, request: Request) -> AsyncIterator[StreamChunk]:
        model = request.model_name
        _, url, label = self._urls.get(model) or self._urls_for(model)
        data = json.dumps(self._payload(request)).encode()
        headers = self._request_headers()
        handle = self._handle or self._take_handle()
        sent = time.monotonic()
        try:
            response = await handle.session.post(
                url, data=data, headers=headers, timeout=self._timeout_for(request.timeout)
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            handle.failed(sent, exc)
            raise self._transport_error(exc, request.timeout) from exc
        handle.ok(sent)

        done = False
        started = False
        name = self.name
        request_id = response.headers.get("x-request-id")
        try:
            if response.status >= 400 or response.content_type == "application/json":
                # An error status, or a server that ignored alt=sse and answered in one piece.
                body = await response.read()
                if response.status >= 400:
                    raise self._status_error(response.status, body, response.headers)
                raise self._unparseable(body, ValueError("expected an event stream"))
            finish: str | None = None
            finished: dict[str, Any] = {}
            usage_metadata: Any = None
            response_id: str | None = None
            calls = 0
            produced = False
            async for _, text in iter_sse(response):
                try:
                    event = json.loads(text)
                    error = event.get("error")
                    if error is not None:
                        raise self._api_error(
                            None, error, None, context="in the middle of its stream"
                        )
                    usage_metadata = event.get("usageMetadata") or usage_metadata
                    response_id = response_id or event.get("responseId")
                    candidate = self._candidate(event, in_stream=True)
                    content = candidate.get("content")
                    parts = content.get("parts") if content else None
                    chunk_text = ""
                    deltas: list[ToolCallDelta] = []
                    for part in parts or ():
                        if "text" in part:
                            if not part.get("thought"):
                                chunk_text += part["text"]
                        elif "functionCall" in part:
                            call = part["functionCall"]
                            # Gemini sends a call whole, so one delta carries all of it.
                            deltas.append(
                                ToolCallDelta(
                                    calls,
                                    call.get("id") or f"call_{calls}",
                                    call["name"],
                                    json.dumps(call.get("args") or {}, ensure_ascii=False),
                                )
                            )
                            calls += 1
                    if candidate.get("finishReason"):
                        finish, finished = candidate["finishReason"], candidate
                except PARSE_ERRORS as exc:
                    raise self._unparseable(text.encode(), exc) from None
                if chunk_text or deltas:
                    started = produced = True
                    yield StreamChunk(chunk_text, tuple(deltas), None, None, response_id, label)
            if finish is None:
                raise StreamInterruptedError(
                    f"{name}'s stream ended before a finishReason; the answer may be incomplete",
                    provider=name,
                    request_id=request_id or response_id,
                )
            try:
                usage = _usage(usage_metadata)
            except PARSE_ERRORS as exc:
                raise self._unparseable(json.dumps(usage_metadata).encode(), exc) from None
            reason = self._finish(finish, finished, produced, calls > 0)
            done = True
            yield StreamChunk("", (), reason, usage, response_id, label)
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
                # The body is finished, so the connection can go back to the pool.
                response.release()
            else:
                # The consumer stopped early or the stream failed: a half-read connection
                # cannot be reused, and closing it tells the server to stop generating.
                response.close()

    async def list_models(self) -> list[ModelInfo]:
        models: list[ModelInfo] = []
        token: str | None = None
        for _ in range(_MAX_MODEL_PAGES):
            body, _headers = await self._send(
                "GET", self._models_url(token), None, None, self._request_headers()
            )
            try:
                parsed = json.loads(body)
                models.extend(self._model_info(item) for item in parsed.get(self._models_key) or ())
                token = parsed.get("nextPageToken")
            except PARSE_ERRORS as exc:
                raise self._count(self._unparseable(body, exc)) from None
            if not token:
                break
        return models

    _models_key = "models"

    def _model_info(self, item: Mapping[str, Any]) -> ModelInfo:
        methods = item.get("supportedGenerationMethods") or ()
        return ModelInfo(
            item["name"].removeprefix("models/"),
            self.name,
            context_window=item.get("inputTokenLimit"),
            max_output_tokens=item.get("outputTokenLimit"),
            # Gemini lists streamGenerateContent for no model, yet every generateContent
            # model streams; function calling is not listed either way.
            supports_streaming="generateContent" in methods,
            owned_by="google",
        )

    # -- HTTP ------------------------------------------------------------------------------

    def _urls_for(self, model: str) -> tuple[URL, URL, str]:
        prefix = f"{self._base}/{self.settings.api_version}/{self._model_path(model)}"
        urls = (
            URL(prefix + ":generateContent", encoded=True),
            URL(prefix + ":streamGenerateContent?alt=sse", encoded=True),
            f"{self.name}/{model}",
        )
        self._urls[model] = urls
        return urls

    # -- building the request --------------------------------------------------------------

    def _payload(self, request: Request) -> dict[str, Any]:
        contents: list[dict[str, Any]] = []
        system: list[dict[str, Any]] = []
        call_names: dict[str, str] = {}
        responses: list[dict[str, Any]] | None = None
        for message in request.messages:
            role = message.role
            if role == "user":
                content = message.content
                parts: list[dict[str, Any]] = (
                    [{"text": content}] if isinstance(content, str) else [_part(p) for p in content]
                )
                contents.append({"role": "user", "parts": parts})
            elif role == "assistant":
                parts = [{"text": message.text}] if message.content else []
                for call in message.tool_calls:
                    call_names[call.id] = call.name
                    parts.append({"functionCall": {"name": call.name, "args": _args(call)}})
                contents.append({"role": "model", "parts": parts or [{"text": ""}]})
            elif role == "tool":
                part = self._function_response(message, call_names)
                if responses is not None and contents and contents[-1]["parts"] is responses:
                    # Gemini wants the answers to one turn's calls together, in one turn.
                    responses.append(part)
                    continue
                responses = [part]
                contents.append({"role": "user", "parts": responses})
                continue
            else:  # system, developer
                system.append({"text": message.text})
            responses = None
        payload: dict[str, Any] = {"contents": contents}
        if system:
            payload["systemInstruction"] = {"parts": system}
        config: dict[str, Any] = {}
        if request.max_tokens is not None:
            config["maxOutputTokens"] = request.max_tokens
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.top_p is not None:
            config["topP"] = request.top_p
        if request.stop:
            config["stopSequences"] = list(request.stop)
        if request.seed is not None:
            config["seed"] = request.seed
        response_format = request.response_format
        if response_format is not None:
            kind = response_format.get("type")
            if kind == "json_schema":
                config["responseMimeType"] = "application/json"
                spec = response_format.get("json_schema") or {}
                schema = spec.get("schema")
                if schema is not None:
                    config["responseSchema"] = _plain(schema)
            elif kind == "json_object":
                config["responseMimeType"] = "application/json"
        if request.tools:
            payload["tools"] = [{"functionDeclarations": [_declaration(t) for t in request.tools]}]
        if request.tool_choice is not None:
            payload["toolConfig"] = self._tool_config(request.tool_choice)
        extra = request.extra
        if extra:
            for key, value in extra.items():
                if key == "generationConfig" and isinstance(value, Mapping):
                    config.update(value)
                else:
                    payload[key] = value
        if config:
            payload["generationConfig"] = config
        return payload

    def _function_response(self, message: Message, call_names: dict[str, str]) -> dict[str, Any]:
        call_id = message.tool_call_id
        name = (call_names.get(call_id) if call_id is not None else None) or message.name
        if not name:
            raise BadRequestError(
                f"a tool message (tool_call_id={call_id!r}) answers no earlier assistant tool "
                "call in this request; Gemini needs the function's name: include the assistant "
                "turn that made the call, or set the tool message's name",
                provider=self.name,
            )
        text = message.text
        result: Any = None
        if text[:1] == "{" or text.lstrip()[:1] == "{":
            try:
                result = json.loads(text)
            except ValueError:
                result = None
        if not isinstance(result, dict):
            result = {"result": text}
        return {"functionResponse": {"name": name, "response": result}}

    def _tool_config(self, choice: str | Mapping[str, Any]) -> dict[str, Any]:
        if isinstance(choice, str):
            mode = _TOOL_CHOICE_MODES.get(choice)
            if mode is not None:
                return {"functionCallingConfig": {"mode": mode}}
            # A bare function name is the short way of forcing that function.
            return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice]}}
        if "functionCallingConfig" in choice:
            config: dict[str, Any] = _plain(choice)
            return config
        function = choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else choice.get("name")
        if not isinstance(name, str):
            raise BadRequestError(
                f"tool_choice {dict(choice)!r} is not understood; use 'auto', 'none', "
                "'required', a function name, or {'type': 'function', 'function': {'name': ...}}",
                provider=self.name,
            )
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}

    # -- reading the answer ----------------------------------------------------------------

    def _candidate(self, parsed: Mapping[str, Any], *, in_stream: bool) -> dict[str, Any]:
        """The first candidate; a blocked prompt (no candidate, a block reason) is raised."""
        candidates = parsed.get("candidates")
        if candidates:
            candidate: dict[str, Any] = candidates[0]
            return candidate
        feedback = parsed.get("promptFeedback")
        reason = feedback.get("blockReason") if feedback else None
        if feedback and reason:
            raise self._filtered(
                f"{self.name} blocked the prompt ({reason})",
                reason,
                feedback.get("safetyRatings"),
                feedback.get("blockReasonMessage"),
            )
        if in_stream and "usageMetadata" in parsed and "candidates" not in parsed:
            # A stream's last event may carry only usage; it has nothing else to read.
            return {}
        raise KeyError("candidates")

    def _finish(
        self, raw: str | None, candidate: Mapping[str, Any], usable: bool, calls: bool
    ) -> str:
        """OpenAI's word for Gemini's finishReason; a stop that left nothing usable raises."""
        reason = _FINISH_REASONS.get(raw) if raw is not None else "stop"
        if reason == "stop":
            return "tool_calls" if calls else "stop"
        if reason is not None:
            return reason
        if raw in _FILTER_FINISHES:
            if usable:
                return "content_filter"
            raise self._filtered(
                f"{self.name} stopped the answer ({raw})",
                raw,
                candidate.get("safetyRatings"),
                candidate.get("finishMessage"),
            )
        if raw in _BROKEN_CALL_FINISHES and not usable:
            message = candidate.get("finishMessage") or raw
            raise MalformedResponseError(
                f"{self.name}'s model produced an unusable function call ({raw}): {message}",
                provider=self.name,
                provider_message=str(message),
                code=raw,
                retryable=True,
            )
        # OTHER, LANGUAGE, TOO_MANY_TOOL_CALLS...: the model stopped for its own reasons.
        return "tool_calls" if calls else "stop"

    def _filtered(
        self, summary: str, reason: str | None, ratings: Any, message: Any
    ) -> ContentFilteredError:
        flagged = []
        if isinstance(ratings, list):
            for rating in ratings:
                if isinstance(rating, dict) and (
                    rating.get("blocked") or rating.get("probability") in ("MEDIUM", "HIGH")
                ):
                    category = str(rating.get("category", "?")).removeprefix("HARM_CATEGORY_")
                    flagged.append(f"{category}={rating.get('probability', '?')}")
        text = summary
        if flagged:
            text += f"; safety ratings: {', '.join(flagged)}"
        if message:
            text += f": {message}"
        return ContentFilteredError(
            text,
            provider=self.name,
            provider_message=str(message) if message else None,
            code=reason,
        )

    # -- errors ----------------------------------------------------------------------------

    def _status_error(
        self,
        status: int,
        body: bytes,
        headers: CIMultiDictProxy[str],
        *,
        model: str | None = None,
    ) -> ProviderError:
        error: Any = None
        try:
            parsed = json.loads(body)
            if isinstance(parsed, list) and parsed:
                # streamGenerateContent without alt=sse wraps its error in an array.
                parsed = parsed[0]
            error = parsed["error"]
        except PARSE_ERRORS:
            pass
        if not isinstance(error, dict):
            return status_error(
                self.name, status, body, headers, None, request_id=headers.get("x-request-id")
            )
        return self._api_error(status, error, headers)

    def _api_error(
        self,
        status: int | None,
        error: Any,
        headers: CIMultiDictProxy[str] | None,
        *,
        context: str | None = None,
    ) -> ProviderError:
        """A tollway error for Google's ``{"code", "message", "status", "details"}``."""
        if not isinstance(error, dict):
            error = {"message": str(error)}
        message = error.get("message")
        message = str(message) if message else None
        status_name = error.get("status")
        code = error.get("code")
        if status is None:
            status = code if isinstance(code, int) else _STATUS_CODES.get(status_name, 500)
        reason: str | None = None
        retry_delay: float | None = None
        for detail in error.get("details") or ():
            if not isinstance(detail, dict):
                continue
            kind = str(detail.get("@type", ""))
            if kind.endswith("rpc.ErrorInfo"):
                reason = detail.get("reason") or reason
            elif kind.endswith("rpc.RetryInfo"):
                retry_delay = _duration(detail.get("retryDelay"))
        base = error_for_status(
            status,
            provider=self.name,
            provider_message=message,
            request_id=headers.get("x-request-id") if headers is not None else None,
            code=reason or (str(status_name) if status_name else None),
            headers=headers,
        )
        cls: type[ProviderError] = type(base)
        if reason in _AUTH_REASONS or status_name == "UNAUTHENTICATED":
            cls = AuthenticationError
        elif status == 504 or status_name == "DEADLINE_EXCEEDED":
            cls = ProviderTimeoutError
        elif status_name == "RESOURCE_EXHAUSTED":
            cls = RateLimitedError
        elif status_name in ("INTERNAL", "UNAVAILABLE"):
            cls = UnavailableError
        elif cls is BadRequestError and message and _TOO_LONG_PHRASE in message:
            cls = ContextLengthExceededError
        retry_after = base.retry_after if base.retry_after is not None else retry_delay
        if cls is type(base) and retry_after == base.retry_after and context is None:
            return base
        text = (
            f"{self.name} sent an error {context}: {message or status_name or status}"
            if context is not None
            else base.message
        )
        return cls(
            text,
            provider=self.name,
            status=status,
            provider_message=message,
            request_id=base.request_id,
            code=base.code,
            retry_after=retry_after,
        )

    def _unparseable(self, body: bytes, cause: BaseException) -> ProviderError:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            return self._api_error(None, parsed["error"], None, context="in place of an answer")
        return malformed(self.name, "a Gemini GenerateContentResponse", body, cause)


class VertexProvider(GeminiProvider):
    """Gemini on Vertex AI: a project and location in every URL, and an OAuth bearer token."""

    settings: VertexSettings
    _models_key = "publisherModels"

    def __init__(self, settings: VertexSettings, context: ProviderContext) -> None:
        self._project = settings.project or os.environ.get("GOOGLE_CLOUD_PROJECT")
        if not self._project:
            raise ConfigError(
                "Vertex AI needs a Google Cloud project: set project here or GOOGLE_CLOUD_PROJECT",
                key=f"providers.{context.name}.project",
            )
        self._location = (
            settings.location or os.environ.get("GOOGLE_CLOUD_LOCATION") or "us-central1"
        )
        self._token: str | None = None
        super().__init__(settings, context)

    def _base_url(self) -> str:
        if self.settings.base_url:
            return str(self.settings.base_url)
        if self._location == "global":
            return "https://aiplatform.googleapis.com"
        return f"https://{self._location}-aiplatform.googleapis.com"

    def _model_path(self, model: str) -> str:
        # A full resource name (a tuned model's endpoint) is used as it is.
        if model.startswith("projects/"):
            return quote(model, safe="/")
        return (
            f"projects/{quote(self._project or '', safe='')}/locations/"
            f"{quote(self._location, safe='')}/publishers/google/models/{quote(model, safe='')}"
        )

    def _models_url(self, page_token: str | None) -> URL:
        # Only v1beta1 lists the publisher's models.
        url = f"{self._base}/v1beta1/publishers/google/models?pageSize=1000"
        if page_token:
            url += "&pageToken=" + quote(page_token, safe="")
        return URL(url, encoded=True)

    def _model_info(self, item: Mapping[str, Any]) -> ModelInfo:
        return ModelInfo(
            item["name"].rpartition("/")[2], self.name, supports_streaming=True, owned_by="google"
        )

    def _request_headers(self) -> dict[str, str]:
        # Access tokens live an hour, so the variable is read on every call; the dict is
        # rebuilt only when the token changed.
        settings = self.settings
        token = os.environ.get(settings.access_token_env) or None
        headers = self._headers
        if headers is not None and token == self._token:
            return headers
        if not token and not any(k.lower() == "authorization" for k in settings.headers):
            raise AuthenticationError(
                f"no access token for provider {self.name!r}: set the "
                f"{settings.access_token_env} environment variable (for example to the output of "
                "`gcloud auth print-access-token`), or access_token_env in "
                f"[providers.{self.name}]",
                provider=self.name,
            )
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        headers.update(settings.headers)
        self._headers, self._token = headers, token
        return headers


def _part(part: TextPart | ImagePart) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"text": part.text}
    url = part.url
    if url.startswith("data:"):
        header, _, data = url[5:].partition(",")
        mime_type, _, encoding = header.partition(";")
        if "base64" not in encoding:
            data = base64.b64encode(unquote_to_bytes(data)).decode()
        return {"inline_data": {"mime_type": mime_type or "image/png", "data": data}}
    file_data = {"file_uri": url}
    mime_type = mimetypes.guess_type(urlsplit(url).path)[0]
    if mime_type:
        file_data["mime_type"] = mime_type
    return {"file_data": file_data}


def _args(call: ToolCall) -> Any:
    try:
        args = json.loads(call.arguments) if call.arguments else {}
    except ValueError:
        # The model wrote arguments that are not JSON; send them back as they were.
        return {"arguments": call.arguments}
    return args if isinstance(args, dict) else {"value": args}


def _declaration(tool: Tool) -> dict[str, Any]:
    declaration: dict[str, Any] = {"name": tool.name}
    if tool.description:
        declaration["description"] = tool.description
    parameters = tool.parameters
    # Gemini rejects an object schema with no properties ("should be non-empty for OBJECT
    # type"); a function without parameters is declared without a schema.
    if parameters and (parameters.get("type") != "object" or parameters.get("properties")):
        declaration["parameters"] = _plain(parameters)
    return declaration


def _plain(value: Any) -> Any:
    """Mappings (even read-only proxies) as dicts, so json.dumps takes them."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _usage(meta: Mapping[str, Any] | None) -> Usage:
    if not meta:
        return _NO_USAGE
    thoughts = meta.get("thoughtsTokenCount") or 0
    return Usage(
        # Tool-use prompt tokens (search results fed back) are billed as input too.
        (meta.get("promptTokenCount") or 0) + (meta.get("toolUsePromptTokenCount") or 0),
        # candidatesTokenCount leaves thoughts out; tollway's output counts them.
        (meta.get("candidatesTokenCount") or 0) + thoughts,
        meta.get("cachedContentTokenCount") or 0,
        0,
        thoughts,
    )


def _duration(value: Any) -> float | None:
    """Seconds from a google.protobuf.Duration in JSON (``"12s"``, ``"0.5s"``)."""
    if isinstance(value, str) and value.endswith("s"):
        try:
            seconds = float(value[:-1])
        except ValueError:
            return None
        return seconds if seconds >= 0 else None
    return None
