"""Amazon Bedrock's Converse and ConverseStream APIs over the pipeline's pooled aiohttp session.

botocore only signs (SigV4) and finds credentials; the bytes go through aiohttp like every other
provider's. botocore is imported, and the credential chain walked, once, in a worker thread on
the first call: both do blocking file (and maybe network) I/O. Each call then takes frozen
credentials, so refreshable ones (SSO, assumed roles, instance roles) refresh as they expire.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from tollway.errors import (
    AuthenticationError,
    BadRequestError,
    ContextLengthExceededError,
    MalformedResponseError,
    NotFoundError,
    PermissionDeniedError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
    StreamInterruptedError,
    UnavailableError,
)
from tollway.providers.http import Endpoint
from tollway.providers.wire import (
    EXCERPT_CHARS,
    PARSE_ERRORS,
    HttpProvider,
    checked_endpoint,
    excerpt,
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
from tollway_bedrock.eventstream import CorruptFrameError, TruncatedFrameError, iter_messages
from tollway_bedrock.settings import BedrockSettings, control_plane_url, runtime_url

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy

    from tollway.providers.base import ProviderContext

__all__ = ["BedrockProvider"]

_SERVICE = "bedrock"
_EVENT_STREAM = "application/vnd.amazon.eventstream"
_NO_USAGE = Usage()

# Bedrock's stop reasons in OpenAI's words; one not listed is passed on as Bedrock said it.
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}

# Bedrock's error types, from ``x-amzn-ErrorType``, where the HTTP status alone says the wrong
# thing: the authentication layer answers 403 for a bad or expired key, and two 429s and a 424
# are the model's state rather than the caller's rate.
_ERROR_TYPES: dict[str, type[ProviderError]] = {
    "UnrecognizedClientException": AuthenticationError,
    "InvalidSignatureException": AuthenticationError,
    "IncompleteSignatureException": AuthenticationError,
    "MissingAuthenticationTokenException": AuthenticationError,
    "ExpiredTokenException": AuthenticationError,
    "InvalidClientTokenId": AuthenticationError,
    "AccessDeniedException": PermissionDeniedError,
    "ResourceNotFoundException": NotFoundError,
    "ValidationException": BadRequestError,
    "ThrottlingException": RateLimitedError,
    "ModelTimeoutException": ProviderTimeoutError,
    # Retrying helps (the model is loading); slowing the caller's rate does not.
    "ModelNotReadyException": UnavailableError,
    "ModelErrorException": UnavailableError,
    "ServiceUnavailableException": UnavailableError,
    "InternalServerException": UnavailableError,
}
# The exceptions ConverseStream sends inside a stream.
_STREAM_ERRORS: dict[str, type[ProviderError]] = {
    "throttlingException": RateLimitedError,
    "modelStreamErrorException": UnavailableError,
    "validationException": BadRequestError,
    "internalServerException": UnavailableError,
    "serviceUnavailableException": UnavailableError,
}
# How Bedrock and the models behind it word a prompt that does not fit: Bedrock itself ("Input
# is too long for requested model"), Anthropic ("prompt is too long"), Titan ("too many input
# tokens"), Mistral and Llama ("maximum context length").
_CONTEXT_LENGTH_PHRASES = (
    "input is too long",
    "too many input tokens",
    "prompt is too long",
    "context length",
    "context window",
)

_IMAGE_FORMATS = frozenset(("png", "jpeg", "gif", "webp"))
_NO_CREDENTIALS = (
    "no AWS credentials for provider {name!r}: set AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones), or AWS_PROFILE, or "
    "profile, or access_key_id and secret_access_key in [providers.{name}]"
)


class BedrockProvider(HttpProvider):
    """One AWS region's Bedrock runtime (and its control plane, for ``list_models``)."""

    settings: BedrockSettings

    def __init__(self, settings: BedrockSettings, context: ProviderContext) -> None:
        super().__init__(settings, context)
        self._region = settings.region
        self._base = (settings.base_url or runtime_url(settings.region)).rstrip("/")
        self._control = (settings.control_url or control_plane_url(settings.region)).rstrip("/")
        self._endpoint = checked_endpoint(self._base, self.name, "base_url")
        checked_endpoint(self._control, self.name, "control_url")
        # The control plane's handle, taken on first use like the runtime's (``_handle``).
        self._control_handle: Endpoint | None = None
        # Signed headers start from these; a custom header is signed with the rest.
        self._headers = {"Content-Type": "application/json", **settings.headers}
        self._urls: dict[str, tuple[str, URL, str, URL]] = {}
        # Set in a worker thread on the first call (see _load_credentials).
        self._credentials: Any = None
        self._refresh_needed: Any = None
        self._sigv4_auth: Any = None
        self._aws_request: Any = None
        self._credentials_lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, region={self._region!r})"

    # -- the Provider protocol -------------------------------------------------------------

    async def complete(self, request: Request) -> Response:
        model = request.model_name
        data = json.dumps(self._payload(request)).encode()
        url_text, url, _, _ = self._urls.get(model) or self._model_urls(model)
        started = time.perf_counter()
        headers = await self._signed_headers("POST", url_text, data)
        body, headers = await self._send("POST", url, data, request.timeout, headers)
        request_id = headers.get("x-amzn-RequestId")
        try:
            parsed = json.loads(body)
            texts: list[str] = []
            calls: list[ToolCall] = []
            for block in parsed["output"]["message"]["content"]:
                text = block.get("text")
                if text is not None:
                    texts.append(text)
                    continue
                use = block.get("toolUse")
                if use is not None:
                    calls.append(ToolCall(use["toolUseId"], use["name"], json.dumps(use["input"])))
                # reasoningContent, citations and the like are not part of the answer's text.
            stop = parsed.get("stopReason")
            response = Response(
                request_id or "",
                f"{self.name}/{model}",
                self.name,
                Message("assistant", "".join(texts), tuple(calls)),
                _FINISH_REASONS.get(stop, stop),
                _usage(parsed.get("usage")),
                None,
                request_id,
                time.perf_counter() - started,
            )
        except PARSE_ERRORS as exc:
            raise self._count(self._unparseable(body, exc, request_id)) from None
        return response

    async def stream(self, request: Request) -> AsyncIterator[StreamChunk]:
        model = request.model_name
        data = json.dumps(self._payload(request)).encode()
        _, _, url_text, url = self._urls.get(model) or self._model_urls(model)
        headers = await self._signed_headers("POST", url_text, data)
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

        request_id = response.headers.get("x-amzn-RequestId")
        name = self.name
        done = False
        started = False
        try:
            if response.status >= 400:
                raise self._status_error(response.status, await response.read(), response.headers)
            if response.content_type != _EVENT_STREAM:
                raise self._unparseable(
                    await response.read(), ValueError(f"expected {_EVENT_STREAM}"), request_id
                )
            model_name = f"{name}/{model}"
            tools: dict[int, int] = {}  # content block index -> tool call index
            finish: str | None = None
            stopped = False
            async for headers_, payload in iter_messages(response):
                message_type = headers_.get(":message-type")
                if message_type != "event":
                    raise self._stream_error(message_type, headers_, payload, request_id)
                event = headers_.get(":event-type")
                try:
                    if event == "contentBlockDelta":
                        obj = json.loads(payload)
                        delta = obj["delta"]
                        text = delta.get("text")
                        if text is not None:
                            if not text:
                                continue
                            chunk = StreamChunk(text, (), None, None, request_id, model_name)
                        else:
                            use = delta.get("toolUse")
                            if use is None:
                                continue  # reasoning, citations: not part of the text
                            piece = ToolCallDelta(
                                tools[obj["contentBlockIndex"]], None, None, use["input"]
                            )
                            chunk = StreamChunk("", (piece,), None, None, request_id, model_name)
                    elif event == "contentBlockStart":
                        obj = json.loads(payload)
                        use = obj["start"].get("toolUse")
                        if use is None:
                            continue
                        index = tools[obj["contentBlockIndex"]] = len(tools)
                        piece = ToolCallDelta(index, use["toolUseId"], use["name"], "")
                        chunk = StreamChunk("", (piece,), None, None, request_id, model_name)
                    elif event == "messageStop":
                        stop = json.loads(payload)["stopReason"]
                        finish = _FINISH_REASONS.get(stop, stop)
                        stopped = True
                        continue
                    elif event == "metadata":
                        if not stopped:
                            continue  # a stream's end is messageStop and then metadata
                        usage = _usage(json.loads(payload).get("usage"))
                        done = True
                        chunk = StreamChunk("", (), finish, usage, request_id, model_name)
                    else:
                        continue  # messageStart, contentBlockStop: nothing to pass on
                except PARSE_ERRORS as exc:
                    raise self._unparseable(payload, exc, request_id) from None
                started = True
                yield chunk
            if not done:
                raise StreamInterruptedError(
                    f"{name}'s stream ended before messageStop and metadata; the answer may be "
                    "incomplete",
                    provider=name,
                    request_id=request_id,
                )
        except TruncatedFrameError as exc:
            handle.stats.failures += 1
            raise StreamInterruptedError(
                f"{name}'s stream was cut off: {exc}", provider=name, request_id=request_id
            ) from None
        except CorruptFrameError as exc:
            handle.stats.failures += 1
            raise MalformedResponseError(
                f"{name} sent a damaged event stream: {exc}",
                provider=name,
                provider_message=str(exc),
                request_id=request_id,
            ) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._stream_broken(handle, exc, started, request_id, request.timeout) from exc
        except ProviderError as exc:
            self._count(exc)
            raise
        finally:
            if done:
                # The answer is complete, so the connection can go back to the pool.
                response.release()
            else:
                # The consumer stopped early or the stream failed: a half-read connection
                # cannot be reused, and closing it tells Bedrock to stop generating.
                response.close()

    async def list_models(self) -> list[ModelInfo]:
        # Only models that answer in text: embedding and image models cannot converse.
        url_text = f"{self._control}/foundation-models?byOutputModality=TEXT"
        headers = await self._signed_headers("GET", url_text, None)
        # Taken after signing, so a call that fails for want of credentials touches no endpoint.
        handle = self._control_handle or self._take_control_handle()
        body, headers = await self._send(
            "GET", URL(url_text, encoded=True), None, None, headers, handle
        )
        try:
            summaries = json.loads(body)["modelSummaries"]
            return [
                ModelInfo(
                    item["modelId"],
                    self.name,
                    supports_streaming=bool(item.get("responseStreamingSupported", True)),
                    owned_by=item.get("providerName"),
                )
                for item in summaries
            ]
        except PARSE_ERRORS as exc:
            raise self._unparseable(body, exc, headers.get("x-amzn-RequestId")) from None

    async def aclose(self) -> None:
        # The sessions belong to the pipeline's pool, which closes them; only forget them here.
        self._handle = self._control_handle = None

    # -- credentials and signing -----------------------------------------------------------

    def _load_credentials(self) -> Any:
        """Import botocore and find credentials; blocking, so run in a worker thread."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials
        from botocore.exceptions import BotoCoreError
        from botocore.session import Session

        settings = self.settings
        key_id, secret = settings.access_key_id, settings.secret_access_key
        if key_id is not None or secret is not None:
            if key_id is None or secret is None:
                raise AuthenticationError(
                    f"[providers.{self.name}] sets only one of access_key_id and "
                    "secret_access_key; set both, or neither to use the AWS credential chain",
                    provider=self.name,
                )
            token = settings.session_token.get() if settings.session_token is not None else None
            credentials: Any = Credentials(key_id.get(), secret.get(), token)
        else:
            try:
                credentials = Session(profile=settings.profile).get_credentials()
            except BotoCoreError as exc:
                raise AuthenticationError(
                    f"could not load AWS credentials for provider {self.name!r}: {exc}",
                    provider=self.name,
                ) from None
        if credentials is None:
            raise AuthenticationError(_NO_CREDENTIALS.format(name=self.name), provider=self.name)
        self._sigv4_auth = SigV4Auth
        self._aws_request = AWSRequest
        self._refresh_needed = getattr(credentials, "refresh_needed", None)
        return credentials

    async def _signed_headers(self, method: str, url: str, body: bytes | None) -> dict[str, str]:
        credentials = self._credentials
        if credentials is None:
            lock = self._credentials_lock
            if lock is None:
                lock = self._credentials_lock = asyncio.Lock()
            async with lock:
                credentials = self._credentials
                if credentials is None:
                    credentials = await asyncio.to_thread(self._load_credentials)
                    self._credentials = credentials
        refresh_needed = self._refresh_needed
        if refresh_needed is not None and refresh_needed():
            # Refreshing calls STS, SSO or the instance metadata service: not on the loop.
            frozen = await asyncio.to_thread(credentials.get_frozen_credentials)
        else:
            frozen = credentials.get_frozen_credentials()
        if not frozen.access_key or not frozen.secret_key:
            raise AuthenticationError(_NO_CREDENTIALS.format(name=self.name), provider=self.name)
        aws_request = self._aws_request(method=method, url=url, data=body, headers=self._headers)
        self._sigv4_auth(frozen, _SERVICE, self._region).add_auth(aws_request)
        return dict(aws_request.headers.items())

    # -- HTTP ------------------------------------------------------------------------------

    def _model_urls(self, model: str) -> tuple[str, URL, str, URL]:
        # Model ids hold ':' and ARNs hold '/': both quoted, as botocore quotes a path label,
        # and the same text is what gets signed.
        base = f"{self._base}/model/{quote(model, safe='')}"
        converse, stream = base + "/converse", base + "/converse-stream"
        urls = (converse, URL(converse, encoded=True), stream, URL(stream, encoded=True))
        self._urls[model] = urls
        return urls

    def _take_control_handle(self) -> Endpoint:
        # The control plane serves only list_models: the pool's default limit is plenty.
        handle = self._control_handle = self._http.endpoint(self._control)
        return handle

    # -- building the request --------------------------------------------------------------

    def _payload(self, request: Request) -> dict[str, Any]:
        system: list[dict[str, Any]] = []
        messages: list[dict[str, Any]] = []
        last_role = ""
        for message in request.messages:
            role = message.role
            if role == "user":
                content = message.content
                blocks = (
                    [{"text": content}] if isinstance(content, str) else _parts(content, self.name)
                )
            elif role == "assistant":
                blocks = self._assistant_blocks(message)
                if not blocks:
                    continue  # an empty turn: Bedrock refuses blank text
            elif role == "tool":
                # Converse has no tool role: results go back in the user's turn.
                role = "user"
                blocks = [self._tool_result(message)]
            else:  # system, developer: Converse takes instructions apart from the turns
                text = message.text
                if text:
                    system.append({"text": text})
                continue
            if role == last_role:
                # Converse insists that the roles alternate.
                messages[-1]["content"].extend(blocks)
            else:
                messages.append({"role": role, "content": blocks})
                last_role = role
        payload: dict[str, Any] = {"messages": messages}
        if system:
            payload["system"] = system
        config: dict[str, Any] = {}
        if request.max_tokens is not None:
            config["maxTokens"] = request.max_tokens
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.top_p is not None:
            config["topP"] = request.top_p
        if request.stop:
            config["stopSequences"] = list(request.stop)
        if config:
            payload["inferenceConfig"] = config
        if request.tools:
            tool_config: dict[str, Any] = {"tools": [_tool(t) for t in request.tools]}
            choice = _tool_choice(request.tool_choice)
            if choice is not None:
                tool_config["toolChoice"] = choice
            payload["toolConfig"] = tool_config
        if request.extra:
            for key, value in request.extra.items():
                if key == "additional_model_request_fields":
                    payload["additionalModelRequestFields"] = (
                        dict(value) if isinstance(value, Mapping) else value
                    )
                elif isinstance(value, Mapping) and isinstance(payload.get(key), dict):
                    payload[key] = {**payload[key], **value}
                else:
                    payload[key] = value
        return payload

    def _assistant_blocks(self, message: Message) -> list[dict[str, Any]]:
        content = message.content
        if isinstance(content, str):
            blocks: list[dict[str, Any]] = [{"text": content}] if content else []
        else:
            blocks = [b for b in _parts(content, self.name) if b.get("text", True)]
        for call in message.tool_calls:
            arguments = call.arguments
            try:
                tool_input = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                raise BadRequestError(
                    f"the arguments of tool call {call.id!r} ({call.name}) are not JSON: "
                    f"{arguments[:EXCERPT_CHARS]!r}; Bedrock takes tool input as a JSON object",
                    provider=self.name,
                ) from None
            blocks.append(
                {"toolUse": {"toolUseId": call.id, "name": call.name, "input": tool_input}}
            )
        return blocks

    def _tool_result(self, message: Message) -> dict[str, Any]:
        content = message.content
        if isinstance(content, str):
            result: list[dict[str, Any]] | None = None
            if content[:1] == "{":
                try:
                    value = json.loads(content)
                except ValueError:
                    value = None
                if isinstance(value, dict):
                    result = [{"json": value}]
            if result is None:
                result = [{"text": content}]
        else:
            result = _parts(content, self.name)
        return {"toolResult": {"toolUseId": message.tool_call_id or "", "content": result}}

    # -- reading errors --------------------------------------------------------------------

    def _status_error(
        self,
        status: int,
        body: bytes,
        headers: CIMultiDictProxy[str],
        *,
        model: str | None = None,
    ) -> ProviderError:
        kind = headers.get("x-amzn-ErrorType", "").partition(":")[0] or None
        message: Any = None
        try:
            parsed = json.loads(body)
            message = parsed.get("message") or parsed.get("Message")
            if kind is None:
                kind = str(parsed.get("__type", "")).rpartition("#")[2] or None
        except PARSE_ERRORS:
            pass
        error = status_error(
            self.name,
            status,
            body,
            headers,
            message,
            request_id=headers.get("x-amzn-RequestId"),
            code=kind,
        )
        text = error.provider_message
        cls = _ERROR_TYPES.get(kind or "", type(error))
        if cls is BadRequestError and _is_context_length(text):
            cls = ContextLengthExceededError
        if cls is not type(error):
            error = cls(
                error.message,
                provider=self.name,
                status=status,
                provider_message=text,
                request_id=error.request_id,
                code=kind,
                retry_after=error.retry_after,
            )
        return error

    def _stream_error(
        self,
        message_type: Any,
        headers: Mapping[str, Any],
        payload: bytes,
        request_id: str | None,
    ) -> ProviderError:
        """An ``exception`` (or ``error``) message in place of the next event."""
        if message_type == "exception":
            kind = str(headers.get(":exception-type", ""))
            try:
                message = json.loads(payload).get("message")
            except PARSE_ERRORS:
                message = None
            text = str(message) if message else excerpt(payload)
        elif message_type == "error":
            kind = str(headers.get(":error-code", ""))
            text = str(headers.get(":error-message", ""))
        else:
            return MalformedResponseError(
                f"{self.name} sent an event-stream message of unknown type {message_type!r}",
                provider=self.name,
                provider_message=excerpt(payload),
                request_id=request_id,
            )
        cls = _STREAM_ERRORS.get(kind, UnavailableError)
        if cls is BadRequestError and _is_context_length(text):
            cls = ContextLengthExceededError
        return cls(
            f"{self.name} sent {kind or 'an error'} in the middle of its answer: {text}",
            provider=self.name,
            provider_message=text,
            request_id=request_id,
            code=kind or None,
        )

    def _unparseable(
        self, body: bytes, cause: BaseException, request_id: str | None
    ) -> ProviderError:
        return malformed(self.name, "a Bedrock Converse response", body, cause, request_id)


def _parts(parts: tuple[TextPart | ImagePart, ...], provider: str) -> list[dict[str, Any]]:
    return [
        {"text": part.text} if isinstance(part, TextPart) else _image(part.url, provider)
        for part in parts
    ]


def _image(url: str, provider: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        mime, _, encoding = header[5:].partition(";")
        image_format = mime.rpartition("/")[2].lower()
        if image_format == "jpg":
            image_format = "jpeg"
        if image_format in _IMAGE_FORMATS and encoding == "base64" and data:
            # JSON carries bytes as base64: the data URL's text is already that.
            return {"image": {"format": image_format, "source": {"bytes": data}}}
    elif url.startswith("s3://"):
        image_format = url.rpartition(".")[2].lower()
        if image_format == "jpg":
            image_format = "jpeg"
        if image_format in _IMAGE_FORMATS:
            return {"image": {"format": image_format, "source": {"s3Location": {"uri": url}}}}
    raise BadRequestError(
        f"Bedrock takes images as base64 data: URLs (png, jpeg, gif or webp) or s3:// URIs, "
        f"not {url[:60]!r}; download the image and pass it as data:image/png;base64,...",
        provider=provider,
    )


def _tool(tool: Tool) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": tool.name, "inputSchema": {"json": dict(tool.parameters)}}
    if tool.description:
        spec["description"] = tool.description
    return {"toolSpec": spec}


def _tool_choice(choice: str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Converse's ``toolChoice``; None leaves the model to decide (it has no "none")."""
    if choice is None or choice == "none":
        return None
    if isinstance(choice, str):
        if choice == "auto":
            return {"auto": {}}
        if choice in ("required", "any"):
            return {"any": {}}
        return {"tool": {"name": choice}}
    function = choice.get("function")
    name: Any = None
    if isinstance(function, Mapping):  # OpenAI's {"type": "function", "function": {"name"}}
        name = function.get("name")
    elif choice.get("type") == "tool":  # Anthropic's {"type": "tool", "name"}
        name = choice.get("name")
    elif choice.get("type") in ("auto", "any"):
        return {choice["type"]: {}}
    if name is not None:
        return {"tool": {"name": name}}
    return dict(choice)  # Converse's own form


def _usage(usage: Mapping[str, Any] | None) -> Usage:
    if not usage:
        return _NO_USAGE
    read = usage.get("cacheReadInputTokens") or 0
    write = usage.get("cacheWriteInputTokens") or 0
    # Bedrock's inputTokens leaves out the tokens read from or written to the prompt cache;
    # tollway counts every prompt token as input.
    return Usage(
        (usage.get("inputTokens") or 0) + read + write,
        usage.get("outputTokens") or 0,
        read,
        write,
        0,
    )


def _is_context_length(message: str | None) -> bool:
    lowered = (message or "").lower()
    return any(phrase in lowered for phrase in _CONTEXT_LENGTH_PHRASES)
