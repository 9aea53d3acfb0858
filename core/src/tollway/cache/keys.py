"""Canonical request keys: equal requests give equal keys, different requests different keys.

A key covers only what changes the answer: the model, the messages, the sampling parameters,
tools and the provider pass-through (``extra``). Who asked (user, session, team, tags), the
timeout and tollway's own directives do not change the answer and are left out. The JSON is
canonical: sorted keys, no spaces, absent and ``None`` fields dropped, and numbers normalised
(``1.0`` and ``1`` are the same temperature), so dict order or ``0`` vs ``0.0`` never split a
key, unlike LiteLLM's.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

from tollway.types import ImagePart, Message, Request, TextPart, Tool

KEY_VERSION = "v1"


def _number(value: float) -> int | float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value.is_integer():
        return int(value)
    return value


def canonical(value: Any) -> Any:
    """A JSON-ready value in one canonical form: mappings sorted, numbers normalised."""
    if type(value) is str or type(value) is int or value is None:  # the usual: at once
        return value
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return _number(float(value)) if isinstance(value, float) else value
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    raise TypeError(f"cannot make a cache key from a {type(value).__name__}")


def _message(message: Message) -> dict[str, Any]:
    # Built in canonical form directly (strings and lists only, no None): the messages are most
    # of a request, and canonical() would walk them again for nothing.
    out: dict[str, Any] = {"role": message.role}
    if isinstance(message.content, str):
        out["content"] = message.content
    else:
        out["content"] = [_part(part) for part in message.content]
    if message.tool_calls:
        out["tool_calls"] = [[c.id, c.name, c.arguments] for c in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def _part(part: TextPart | ImagePart) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if part.detail is None:
        return {"type": "image", "url": part.url}
    return {"type": "image", "url": part.url, "detail": part.detail}


def _tool(tool: Tool) -> dict[str, Any]:
    return {
        "name": tool.name,
        "description": tool.description,
        "parameters": canonical(tool.parameters),
    }


def request_fields(request: Request) -> dict[str, Any]:
    """The fields of a request that change its answer, in canonical form."""
    fields: dict[str, Any] = {
        "model": request.model,
        "messages": [_message(m) for m in request.messages],
    }
    if request.max_tokens is not None:
        fields["max_tokens"] = canonical(request.max_tokens)
    if request.temperature is not None:
        fields["temperature"] = canonical(request.temperature)
    if request.top_p is not None:
        fields["top_p"] = canonical(request.top_p)
    if request.seed is not None:
        fields["seed"] = canonical(request.seed)
    if request.tool_choice is not None:
        fields["tool_choice"] = canonical(request.tool_choice)
    if request.response_format is not None:
        fields["response_format"] = canonical(request.response_format)
    if request.stop:
        # Stop sequences are a set to the provider: their order and repeats change nothing.
        fields["stop"] = sorted(set(request.stop))
    if request.tools:
        fields["tools"] = [_tool(t) for t in request.tools]
    if request.extra:
        extra = canonical(request.extra)
        if extra:  # {"x": None} passes nothing, the same as no extra at all
            fields["extra"] = extra
    return fields


def _make_encode() -> Callable[[Any], str]:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``.

    The C encoder is built once rather than per call (what ``json.dumps`` does each time),
    without the circular-reference check: canonical values are built fresh, so they are trees.
    """
    options = {"sort_keys": True, "separators": (",", ":"), "ensure_ascii": False}
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator: the same output, the slower way
        return json.JSONEncoder(**options).encode  # type: ignore[arg-type]
    fallback = json.JSONEncoder(**options)  # type: ignore[arg-type]
    encoder = make(
        None,  # markers: no circular check
        fallback.default,
        json.encoder.encode_basestring,
        None,  # indent
        ":",
        ",",
        True,  # sort_keys
        False,  # skipkeys
        True,  # allow_nan
    )

    def encode(value: Any) -> str:
        return "".join(encoder(value, 0))

    return encode


_encode = _make_encode()


def request_digest(request: Request) -> str:
    """The SHA-256 (hex) of the canonical request: the last part of its key."""
    return hashlib.sha256(_encode(request_fields(request)).encode()).hexdigest()


def key_of(namespace: str, request: Request, digest: str) -> str:
    """The key of ``request`` in ``namespace``, given its :func:`request_digest`."""
    return f"{namespace}:{KEY_VERSION}:{request.model}:{digest}"


def request_key(request: Request, namespace: str = "tollway") -> str:
    """``namespace:version:model:sha256`` of the canonical request.

    The model stays readable in the key so that a backend can invalidate one model's entries
    by prefix; the namespace comes first so that a whole namespace goes the same way.
    """
    return f"{namespace}:{KEY_VERSION}:{request.model}:{request_digest(request)}"


# -- handing a digest to the next stage --------------------------------------------------------
#
# The cache stage and the single-flight stage just inside it key the same request. The cache
# stage hands its digest on right before it calls the next stage, and the single-flight stage
# takes it (leaving the slot empty) as the first thing it does, so the canonical JSON and the
# hash are made once per call. The slot is a context variable, so each task and thread has its
# own, and the taker also checks that the digest is for the very Request object it was given:
# when the slot holds anything else (or nothing) the taker computes the digest itself, as it
# would without the hand-over.

_handed: ContextVar[tuple[Request, str] | None] = ContextVar("tollway_handed_digest", default=None)


def hand_on(request: Request, digest: str) -> None:
    """Offer ``request``'s digest to the stage called next."""
    _handed.set((request, digest))


def clear_handed() -> None:
    """Offer nothing to the stage called next (it keys the request itself)."""
    _handed.set(None)


def take_handed(request: Request) -> str | None:
    """The digest the previous stage handed on for ``request``, or ``None`` when it handed
    on none for it. Empties the slot either way."""
    handed = _handed.get()
    if handed is None:
        return None
    _handed.set(None)
    return handed[1] if handed[0] is request else None
