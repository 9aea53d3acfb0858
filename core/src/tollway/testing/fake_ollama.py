"""A fake Ollama server that speaks Ollama's native API, for tests.

Ollama runs on the user's machine, not in tests, so this server answers in its place: the same
routes, JSON bodies, NDJSON stream lines and ``{"error": "..."}`` bodies as ``ollama serve``.
``core/tests/test_fake_ollama_sdk.py`` parses its answers with the official ``ollama`` SDK, so
the fake cannot drift from what the SDK accepts.

Start it with ``async with FakeOllama() as fake:`` and point a client at ``fake.url`` (the server
root, as ``OLLAMA_HOST`` names it; ``fake.base_url`` is the same). Without a script it answers
deterministically, echoing the last user message, with token counts derived from the text.
Script the next answers with ``reply``, ``fail`` and ``fault``; they are served in the order they
were scripted, one per ``/api/chat`` request.

Like Ollama, it streams unless the body says ``"stream": false``, answers only for the models it
has "pulled" (``models``; ``llama3.2`` means ``llama3.2:latest``), and sends no request-id
header (set ``request_id_header`` to have one stamped, as a proxy in front of Ollama would).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeAlias

import attrs
from aiohttp import web

from tollway.testing._server import (
    BODY,
    BODY_ERROR,
    PIECE_RE,
    REQUEST_ID,
    FakeServer,
    Fault,
    RecordedRequest,
    count_tokens,
    cut_body,
    reset_connection,
    truncate,
)

__all__ = ["DEFAULT_MODELS", "FakeOllama", "Fault", "RecordedRequest"]

DEFAULT_MODELS: tuple[str, ...] = ("llama3.2:latest", "qwen3:8b", "gemma3:270m")

# What ``ollama list`` shows for a few well-known models; others get a plausible 7B entry.
_MODEL_DETAILS: dict[str, tuple[str, str, str, int]] = {
    # base name: (family, parameter_size, quantization_level, size in bytes)
    "llama3.2": ("llama", "3.2B", "Q4_K_M", 2_019_393_189),
    "qwen3": ("qwen3", "8.2B", "Q4_K_M", 5_225_388_164),
    "gemma3": ("gemma3", "268.10M", "Q8_0", 291_554_930),
    "llava": ("llama", "7B", "Q4_0", 4_733_363_377),
}
_FALLBACK_DETAILS = ("llama", "7B", "Q4_K_M", 4_661_224_676)

# A Llama-3-style chat template wraps each message in a header and an end token, and the
# prompt ends with the assistant's header; LLaVA-style models turn an image into 576 tokens.
_TOKENS_PER_MESSAGE = 5
_TOKENS_PROMPT_FRAME = 5
_TOKENS_PER_IMAGE = 576
# Nanoseconds, as Ollama reports durations: a small model on a laptop GPU.
_LOAD_NS = 12_456_789
_PROMPT_NS_PER_TOKEN = 250_000
_EVAL_NS_PER_TOKEN = 12_000_000

# Go's time.ParseDuration syntax, which Ollama uses for a keep_alive given as a string.
_GO_DURATION_RE = re.compile(r"^[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+$")

_DEFAULT_ERRORS: dict[int, str] = {
    400: "{model} does not support tools",
    401: "unauthorized",
    403: "forbidden",
    404: 'model "{model}" not found, try pulling it first',
    429: "too many requests, please try again later",
    499: "request canceled",
    500: "llama runner process has terminated: exit status 2",
    502: "bad gateway",
    503: "server busy, please try again.  maximum pending requests exceeded",
}
_MID_STREAM_ERROR = "an error was encountered while running the model: unexpected EOF"
# What Go's net/http and gin answer for a route that does not exist.
_NOT_FOUND_PAGE = "404 page not found"


@attrs.frozen
class _Reply:
    text: str | None
    tool_calls: tuple[tuple[str, dict[str, Any]], ...]  # (name, arguments object)
    thinking: str | None
    done_reason: str | None
    prompt_eval_count: int | None
    eval_count: int | None
    prompt_cached: bool
    model: str | None


@attrs.frozen
class _Failure:
    status: int
    message: str | None
    headers: Mapping[str, str]
    raw_body: str | None


@attrs.frozen
class _Fault:
    kind: str
    message: str | None


_Outcome: TypeAlias = _Reply | _Failure | _Fault


@attrs.frozen
class _Answer:
    """What one chat answer says, ready to be sent as one JSON body or as NDJSON lines."""

    model: str
    text: str
    thinking: str
    tool_calls: tuple[tuple[str, dict[str, Any]], ...]
    done_reason: str
    metrics: dict[str, int]


class FakeOllama(FakeServer[_Outcome]):
    """An aiohttp.web server on 127.0.0.1 that answers like ``ollama serve``.

    Routes: ``POST /api/chat`` (NDJSON unless ``"stream": false``), ``GET /api/tags``,
    ``GET /api/version``, and ``GET``/``HEAD /`` ("Ollama is running").

    Knobs, all settable at any time:

    - ``models``: the pulled models, as ``GET /api/tags`` lists them; a chat for any other
      model gets Ollama's 404. ``None`` accepts every model.
    - ``require_api_key``: when set, ``/api/`` routes answer 401 unless
      ``Authorization: Bearer`` carries it (hosted Ollama; a local one needs no key).
    - ``request_id_header``: a header name under which each answer carries a request id.
    - ``latency``: seconds to wait before answering; ``chunk_delay``: seconds between lines.
    - ``stall_seconds``: how long the ``"stall"`` fault stays silent (the fake's close ends it).

    ``requests`` records every request received; ``abandoned_streams`` counts streams whose
    client went away before the end.
    """

    def __init__(
        self,
        *,
        models: Sequence[str] | None = DEFAULT_MODELS,
        require_api_key: str | None = None,
        request_id_header: str | None = None,
        latency: float = 0.0,
        chunk_delay: float = 0.0,
        stall_seconds: float = 3600.0,
        version: str = "0.12.6",
    ) -> None:
        super().__init__(latency=latency, chunk_delay=chunk_delay, stall_seconds=stall_seconds)
        self.models = list(models) if models is not None else None
        self.require_api_key = require_api_key
        self.request_id_header = request_id_header
        self.version = version

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/api/chat", self._chat)
        router.add_get("/api/tags", self._tags)
        router.add_get("/api/version", self._version)
        router.add_get("/", self._root)  # also answers HEAD

    @property
    def url(self) -> str:
        """The server root, ``http://127.0.0.1:PORT``: what ``OLLAMA_HOST`` names (and
        :attr:`base_url`, as Ollama's routes hang off the root)."""
        return self.base_url

    # -- scripting -------------------------------------------------------------------------

    def reply(
        self,
        text: str | None = None,
        *,
        tool_calls: Iterable[Mapping[str, Any] | Any] = (),
        thinking: str | None = None,
        done_reason: str | None = None,
        prompt_eval_count: int | None = None,
        eval_count: int | None = None,
        prompt_cached: bool = False,
        model: str | None = None,
        times: int = 1,
    ) -> None:
        """Queue the next answer(s), served verbatim (``num_predict`` does not cut them).

        ``tool_calls`` items are mappings with ``name`` and ``arguments`` (a mapping, or JSON
        text that is decoded: Ollama sends arguments as an object), or objects with those
        attributes (such as :class:`tollway.types.ToolCall`). Ollama sends no call ids.
        ``thinking`` is the reasoning a thinking model shows; its tokens count in ``eval_count``,
        as in Ollama. ``prompt_eval_count`` and ``eval_count`` override the counted tokens;
        ``prompt_cached`` leaves ``prompt_eval_count`` out, as Ollama does when the whole prompt
        came from its KV cache. ``model`` overrides the reported model.
        """
        calls = tuple(_tool_call(call) for call in tool_calls)
        outcome = _Reply(
            text,
            calls,
            thinking,
            done_reason,
            prompt_eval_count,
            eval_count,
            prompt_cached,
            model,
        )
        self._script(outcome, times)

    def fail(
        self,
        status: int,
        message: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        raw_body: str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next chat request(s) with an HTTP error in Ollama's ``{"error": ...}``.

        ``message`` defaults to what Ollama says for the status (404: the model is not
        pulled; 503: its queue is full). ``raw_body`` replaces the JSON body with plain text or
        an HTML page, as a proxy in front of Ollama would send.
        """
        self._check_status(status)
        self._script(_Failure(status, message, dict(headers or {}), raw_body), times)

    def fault(self, kind: Fault, *, message: str | None = None, times: int = 1) -> None:
        """Misbehave on the next chat request(s).

        - ``reset``: the connection is reset (TCP RST) before any answer.
        - ``stall``: no byte comes at all (as while Ollama loads a large model), until the
          client gives up or the fake closes.
        - ``malformed``: HTTP 200 with a body that is not valid JSON (or an invalid line).
        - ``cut_stream``: a stream ends cleanly part-way, without its ``"done": true`` line; a
          JSON answer is cut off before its declared length and the connection dropped.
        - ``mid_stream_error``: a stream sends some text, then an ``{"error": message}`` line,
          as Ollama does when the runner fails mid-answer; a JSON request gets HTTP 500.
          ``message`` defaults to a runner failure.
        """
        self._check_fault(kind)
        self._script(_Fault(kind, message), times)

    # -- plumbing --------------------------------------------------------------------------

    def _new_request_id(self) -> str:
        return secrets.token_hex(16)

    def _json_error(self, body: bytes, exc: ValueError) -> str:
        return _go_json_error(body, exc)

    def _route_error(self, request: web.Request, exc: web.HTTPException) -> web.Response | None:
        if exc.status < 400:
            return None
        # Ollama's router answers an unknown route (or method) with Go's plain page.
        return web.Response(status=404, text=_NOT_FOUND_PAGE)

    async def _stamp_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        if self.request_id_header:
            response.headers[self.request_id_header] = request.get(REQUEST_ID) or ""

    def _check_key(self, request: web.Request) -> web.Response | None:
        if self.require_api_key is None:
            return None
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or key.strip() != self.require_api_key:
            return _error(401, "unauthorized")
        return None

    def _find_model(self, name: str) -> str | None:
        """The pulled model a name means (a name without a tag means ``:latest``)."""
        if self.models is None:
            return name
        full = name if ":" in name else f"{name}:latest"
        return full if full in self.models else None

    # -- routes ----------------------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"version": self.version})

    async def _tags(self, request: web.Request) -> web.StreamResponse:
        denied = self._check_key(request)
        if denied is not None:
            return denied
        await self._wait(self.latency)
        return web.json_response({"models": [_tag(name) for name in self.models or ()]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        denied = self._check_key(request)
        if denied is not None:
            return denied
        body = request[BODY]
        invalid = _validate_chat(body, request.get(BODY_ERROR))
        if invalid is not None:
            return invalid
        model = str(body["model"])
        if self._find_model(model) is None:
            return _error(404, _DEFAULT_ERRORS[404].format(model=model))
        outcome = self._next_outcome()
        await self._wait(self.latency)
        stream = body.get("stream") is not False

        if isinstance(outcome, _Failure):
            return _scripted_error(outcome, model)
        fault = outcome.kind if isinstance(outcome, _Fault) else None
        fault_message = (outcome.message if isinstance(outcome, _Fault) else None) or (
            _MID_STREAM_ERROR
        )
        if fault == "reset":
            return await reset_connection(request)
        if fault == "stall":
            return await self._stall(request)
        if fault == "mid_stream_error" and not stream:
            return _error(500, fault_message)

        answer = _answer(body, model, outcome if isinstance(outcome, _Reply) else None)
        if not stream:
            if fault == "malformed":
                return web.Response(
                    body=b'{"model":"' + model.encode() + b'","created_at":"20',
                    content_type="application/json",
                    charset="utf-8",
                )
            payload = json.dumps(_final_json(answer, with_content=True)).encode()
            if fault == "cut_stream":
                return await cut_body(request, payload, "application/json; charset=utf-8")
            return web.Response(body=payload, content_type="application/json", charset="utf-8")
        return await self._stream(request, answer, fault, fault_message)

    async def _stream(
        self, request: web.Request, answer: _Answer, fault: str | None, fault_message: str
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        lines = list(_lines(answer))
        # Faults strike after about half the answer (and at least one line), like a real cut.
        cut_at = max(1, len(lines) // 2)
        try:
            for n, line in enumerate(lines):
                if fault is not None and n == cut_at:
                    break
                await response.write(json.dumps(line).encode() + b"\n")
                if self.chunk_delay:
                    await self._wait(self.chunk_delay)
            if fault == "malformed":
                await response.write(b'{"model":"' + answer.model.encode() + b'","message":{"ro\n')
            elif fault == "mid_stream_error":
                await response.write(json.dumps({"error": fault_message}).encode() + b"\n")
            # cut_stream (and each of the above) ends the body without the "done": true line.
            await response.write_eof()
        except ConnectionError:
            self.abandoned_streams += 1
        return response


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    body = json.dumps({"error": message}).encode()
    return web.Response(
        status=status,
        body=body,
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


def _scripted_error(failure: _Failure, model: str) -> web.Response:
    if failure.raw_body is not None:
        html = failure.raw_body.lstrip().startswith("<")
        return web.Response(
            status=failure.status,
            text=failure.raw_body,
            content_type="text/html" if html else "text/plain",
            headers=failure.headers,
        )
    default = _DEFAULT_ERRORS.get(
        failure.status, _DEFAULT_ERRORS[500] if failure.status >= 500 else "invalid request"
    )
    message = failure.message or default.format(model=model)
    return _error(failure.status, message, failure.headers)


def _go_json_error(body: bytes, exc: ValueError) -> str:
    """Roughly what Go's encoding/json says about a body it cannot decode."""
    stripped = body.lstrip()
    if stripped[:1] in (b"{", b"["):
        return "unexpected EOF"
    first = stripped[:1].decode("utf-8", "replace") or " "
    return f"invalid character {first!r} looking for beginning of value"


def _validate_chat(body: Any, decode_error: str | None) -> web.Response | None:
    """Ollama's 400s for a chat body, in the words its Go handlers use."""
    if decode_error is not None:
        return _error(400, decode_error)
    if body is None:
        return _error(400, "missing request body")
    if not isinstance(body, dict):
        return _error(
            400, f"json: cannot unmarshal {_go_type(body)} into Go value of type api.ChatRequest"
        )
    model = body.get("model")
    if not isinstance(model, str) and model is not None:
        return _unmarshal_error(model, "model", "string")
    if not model:
        return _error(400, "model is required")
    messages = body.get("messages")
    if messages is not None and not isinstance(messages, list):
        return _unmarshal_error(messages, "messages", "[]api.Message")
    for message in messages or ():
        if not isinstance(message, dict):
            return _unmarshal_error(message, "messages", "api.Message")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            return _unmarshal_error(content, "messages.content", "string")
        for image in message.get("images") or ():
            problem = _base64_problem(image)
            if problem is not None:
                return _error(400, problem)
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            arguments = function.get("arguments") if isinstance(function, dict) else None
            if arguments is not None and not isinstance(arguments, dict):
                return _unmarshal_error(
                    arguments,
                    "messages.tool_calls.function.arguments",
                    "api.ToolCallFunctionArguments",
                )
    options = body.get("options")
    if options is not None and not isinstance(options, dict):
        return _unmarshal_error(options, "options", "map[string]interface {}")
    fmt = body.get("format")
    if fmt is not None and fmt not in ("", "json") and not isinstance(fmt, dict):
        return _error(400, f'invalid format: {json.dumps(fmt)}; expected "json" or a JSON schema')
    keep_alive = body.get("keep_alive")
    if isinstance(keep_alive, str) and not _GO_DURATION_RE.match(keep_alive) and keep_alive != "0":
        return _error(400, f'time: invalid duration "{keep_alive}"')
    if keep_alive is not None and not isinstance(keep_alive, (str, int, float)):
        return _error(400, f"Unsupported type: '{_go_type(keep_alive)}'")
    return None


def _go_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _unmarshal_error(value: Any, field: str, go_type: str) -> web.Response:
    return _error(
        400,
        f"json: cannot unmarshal {_go_type(value)} into Go struct field ChatRequest.{field} "
        f"of type {go_type}",
    )


def _base64_problem(image: Any) -> str | None:
    if not isinstance(image, str):
        return (
            f"json: cannot unmarshal {_go_type(image)} into Go struct field "
            "ChatRequest.messages.images of type api.ImageData"
        )
    try:
        base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        for n, char in enumerate(image):
            if not (char.isalnum() or char in "+/="):
                return f"illegal base64 data at input byte {n}"
        return f"illegal base64 data at input byte {len(image)}"
    return None


def _tool_call(call: Mapping[str, Any] | Any) -> tuple[str, dict[str, Any]]:
    if isinstance(call, Mapping):
        name, arguments = call["name"], call.get("arguments", {})
    else:
        name, arguments = call.name, call.arguments
    if isinstance(arguments, str):
        arguments = json.loads(arguments) if arguments.strip() else {}
    if not isinstance(arguments, Mapping):
        raise TypeError(f"tool call arguments must be an object, not {arguments!r}")
    return (str(name), dict(arguments))


def _tag(name: str) -> dict[str, Any]:
    base = name.partition(":")[0]
    family, parameter_size, quantization, size = _MODEL_DETAILS.get(base, _FALLBACK_DETAILS)
    return {
        "name": name,
        "model": name,
        "modified_at": "2025-06-14T09:21:37.4823719Z",
        "size": size,
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": parameter_size,
            "quantization_level": quantization,
        },
    }


def _prompt_tokens(messages: list[dict[str, Any]], tools: Any) -> int:
    total = _TOKENS_PROMPT_FRAME
    for message in messages:
        total += _TOKENS_PER_MESSAGE + count_tokens(str(message.get("content") or ""))
        total += len(message.get("images") or ()) * _TOKENS_PER_IMAGE
        for call in message.get("tool_calls") or ():
            total += count_tokens(json.dumps(call.get("function", {})))
    if tools:
        total += count_tokens(json.dumps(tools))
    return total


def _default_text(messages: list[dict[str, Any]]) -> str:
    last = messages[-1]
    if last.get("role") == "tool":
        return f"The tool returned: {last.get('content') or ''}"
    for message in reversed(messages):
        if message.get("role") == "user":
            text = message.get("content") or ""
            if message.get("images"):
                text = f"{text} [{len(message['images'])} image(s)]".strip()
            return f"Echo: {text}" if text else "Hello! How can I help you today?"
    return "Hello! How can I help you today?"


def _answer(body: Mapping[str, Any], model: str, reply: _Reply | None) -> _Answer:
    messages: list[dict[str, Any]] = body.get("messages") or []
    options: Mapping[str, Any] = body.get("options") or {}
    if not messages and reply is None:
        # An empty chat only loads the model into memory, and says so.
        return _Answer(model, "", "", (), "load", {})
    prompt_tokens = _prompt_tokens(messages, body.get("tools"))
    tool_calls: tuple[tuple[str, dict[str, Any]], ...] = ()
    thinking = ""
    if reply is None:
        text = _default_text(messages)
        if body.get("format"):
            text = json.dumps({"echo": text})
        if body.get("think") not in (None, False, "false"):
            thinking = f"The user wrote {count_tokens(text)} tokens. I will echo them."
        done_reason = "stop"
        stops = options.get("stop")
        if isinstance(stops, str):
            stops = [stops]
        cuts = [text.find(s) for s in stops or () if isinstance(s, str) and s and s in text]
        if cuts:
            text = text[: min(cuts)]
        limit = options.get("num_predict")
        if isinstance(limit, int) and limit >= 0:
            text, cut = truncate(text, limit)
            done_reason = "length" if cut else "stop"
        prompt_cached = False
        eval_override = prompt_override = None
    else:
        tool_calls = reply.tool_calls
        if reply.text is not None:
            text = reply.text
        elif tool_calls or not messages:
            text = ""
        else:
            text = _default_text(messages)
        thinking = reply.thinking or ""
        done_reason = reply.done_reason or "stop"
        prompt_cached = reply.prompt_cached
        eval_override, prompt_override = reply.eval_count, reply.prompt_eval_count
        model = reply.model or model
    eval_count = count_tokens(text) + count_tokens(thinking) + 1  # the end-of-turn token
    for name, arguments in tool_calls:
        eval_count += count_tokens(name) + count_tokens(json.dumps(arguments))
    if eval_override is not None:
        eval_count = eval_override
    if prompt_override is not None:
        prompt_tokens = prompt_override
    prompt_ns = prompt_tokens * _PROMPT_NS_PER_TOKEN
    eval_ns = eval_count * _EVAL_NS_PER_TOKEN
    metrics: dict[str, int] = {
        "total_duration": _LOAD_NS + prompt_ns + eval_ns + 1_234_567,
        "load_duration": _LOAD_NS,
    }
    if not prompt_cached:
        # Ollama leaves the prompt's counts out (Go's omitempty on 0) when its KV cache held
        # the whole prompt and nothing had to be evaluated.
        metrics["prompt_eval_count"] = prompt_tokens
        metrics["prompt_eval_duration"] = prompt_ns
    metrics["eval_count"] = eval_count
    metrics["eval_duration"] = eval_ns
    return _Answer(model, text, thinking, tool_calls, done_reason, metrics)


def _created_at() -> str:
    # Go's RFC 3339 with nanoseconds; Python gives microseconds, so three zeros pad it.
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def _calls_json(calls: Iterable[tuple[str, dict[str, Any]]], start: int = 0) -> list[Any]:
    return [
        {"function": {"index": n, "name": name, "arguments": arguments}}
        for n, (name, arguments) in enumerate(calls, start)
    ]


def _final_json(answer: _Answer, *, with_content: bool) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": answer.text if with_content else "",
    }
    if with_content and answer.thinking:
        message["thinking"] = answer.thinking
    if with_content and answer.tool_calls:
        message["tool_calls"] = _calls_json(answer.tool_calls)
    out: dict[str, Any] = {
        "model": answer.model,
        "created_at": _created_at(),
        "message": message,
        "done_reason": answer.done_reason,
        "done": True,
    }
    out.update(answer.metrics)
    return out


def _lines(answer: _Answer) -> Iterator[dict[str, Any]]:
    """The objects of a streamed answer, one per NDJSON line, in Ollama's order."""

    def line(message: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": answer.model,
            "created_at": _created_at(),
            "message": {"role": "assistant", **message},
            "done": False,
        }

    for piece in PIECE_RE.split(answer.thinking):
        if piece:
            yield line({"content": "", "thinking": piece})
    for piece in PIECE_RE.split(answer.text):
        if piece:
            yield line({"content": piece})
    # Ollama parses a tool call out of the model's output and sends each one whole.
    for n, call in enumerate(answer.tool_calls):
        yield line({"content": "", "tool_calls": _calls_json([call], n)})
    yield _final_json(answer, with_content=False)
