"""The records every concern shares: messages, requests, responses, stream chunks, usage, cost.

All are frozen attrs classes with slots: cheap to build on the request path, hashable where their
fields are, and safe to hand to several stages at once. Money is ``Decimal``, never float.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal

import attrs

Role = Literal["system", "user", "assistant", "tool", "developer"]
ROLES: frozenset[str] = frozenset(("system", "user", "assistant", "tool", "developer"))

_ZERO = Decimal(0)


@attrs.frozen(slots=True)
class TextPart:
    """A piece of text inside a message with several parts."""

    text: str
    type: Literal["text"] = "text"


@attrs.frozen(slots=True)
class ImagePart:
    """An image given by URL (``https:`` or a ``data:`` URL)."""

    url: str
    detail: str | None = None
    type: Literal["image"] = "image"


ContentPart = TextPart | ImagePart


@attrs.frozen(slots=True)
class ToolCall:
    """A call the model asks the application to make. ``arguments`` is the JSON text as sent."""

    id: str
    name: str
    arguments: str = "{}"


@attrs.frozen(slots=True)
class Tool:
    """A function the model may call, described by a JSON Schema for its parameters."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = attrs.field(
        factory=lambda: {"type": "object", "properties": {}}
    )


def _check_role(_inst: object, _attr: attrs.Attribute[str], value: str) -> None:
    if value not in ROLES:
        raise ValueError(
            f"message role {value!r} is not one of {', '.join(sorted(ROLES))}; "
            "use 'user' for the person, 'assistant' for the model, 'system' for instructions"
        )


@attrs.frozen(slots=True)
class Message:
    """One turn of a conversation: plain text, or a tuple of content parts, plus tool calls."""

    role: str = attrs.field(validator=_check_role)
    content: str | tuple[ContentPart, ...] = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        """The message's text, with the text parts joined when it has several."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    @classmethod
    def user(cls, text: str) -> Message:
        return cls("user", text)

    @classmethod
    def system(cls, text: str) -> Message:
        return cls("system", text)

    @classmethod
    def assistant(cls, text: str, tool_calls: tuple[ToolCall, ...] = ()) -> Message:
        return cls("assistant", text, tool_calls)


@attrs.frozen(slots=True)
class Usage:
    """Token counts as the provider reported them.

    ``input_tokens`` counts every prompt token, cached ones included; ``cache_read_tokens`` and
    ``cache_write_tokens`` say how many of them were read from or written to the provider's
    prompt cache. ``reasoning_tokens`` are part of ``output_tokens``. Each class has its own
    price, so each is kept apart.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )


@attrs.frozen(slots=True)
class Cost:
    """What a call cost, per token class, in ``currency``. ``total`` is the sum of the parts."""

    input: Decimal = _ZERO
    output: Decimal = _ZERO
    cache_read: Decimal = _ZERO
    cache_write: Decimal = _ZERO
    reasoning: Decimal = _ZERO
    request: Decimal = _ZERO
    currency: str = "USD"

    @property
    def total(self) -> Decimal:
        return (
            self.input
            + self.output
            + self.cache_read
            + self.cache_write
            + self.reasoning
            + self.request
        )


@attrs.frozen(slots=True)
class Request:
    """One call as the pipeline sees it, provider-neutral.

    ``model`` is the full name (``openai/gpt-4o-mini``); ``provider`` and ``model_name`` are its
    two halves. ``user``, ``session``, ``team`` and ``tags`` attribute the call; ``extra`` carries
    provider-specific parameters through untouched.
    """

    model: str
    messages: tuple[Message, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: str | Mapping[str, Any] | None = None
    response_format: Mapping[str, Any] | None = None
    user: str | None = None
    session: str | None = None
    team: str | None = None
    api_key_id: str | None = None
    tags: Mapping[str, str] = attrs.field(factory=dict)
    extra: Mapping[str, Any] = attrs.field(factory=dict)
    timeout: float | None = None
    # Directives for tollway's own stages, never sent to the provider: "cache" ("no-cache"
    # reads nothing, "no-store" writes nothing, "off" both), "cache_ttl", "priority",
    # "fallbacks" (a list of models), "retry" (False for none).
    controls: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def provider(self) -> str:
        return self.model.partition("/")[0]

    @property
    def model_name(self) -> str:
        provider, sep, name = self.model.partition("/")
        return name if sep else provider


@attrs.frozen(slots=True)
class Response:
    """A finished answer: the assistant message, why it stopped, and what it used."""

    id: str
    model: str
    provider: str
    message: Message
    finish_reason: str | None = None
    usage: Usage = Usage()
    cost: Cost | None = None
    request_id: str | None = None
    latency_s: float | None = None
    # The provider's rate-limit headers (lowercase names), where it sends them: what the
    # rate-limit stage learns the provider's own limits from.
    rate_limit: Mapping[str, str] | None = None
    # True when the answer came from tollway's cache rather than the provider.
    cached: bool = False
    # What a cache hit saved: the price the provider would have charged (cost is then zero).
    saved: Decimal = _ZERO

    @property
    def text(self) -> str:
        return self.message.text

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return self.message.tool_calls


@attrs.frozen(slots=True)
class ToolCallDelta:
    """A piece of a tool call in a stream; pieces with the same ``index`` belong together."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@attrs.frozen(slots=True)
class StreamChunk:
    """One piece of a streamed answer. The last chunks carry ``finish_reason`` and ``usage``."""

    text: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None
    id: str | None = None
    model: str | None = None
    # Set on the chunk that carries usage, once the cost stage has priced it.
    cost: Cost | None = None
    # A chunk replayed from tollway's cache, and (on the usage chunk) what the hit saved.
    cached: bool = False
    saved: Decimal = _ZERO


@attrs.frozen(slots=True)
class ModelInfo:
    """What a provider says about one of its models."""

    id: str
    provider: str
    context_window: int | None = None
    max_output_tokens: int | None = None
    supports_tools: bool | None = None
    supports_streaming: bool = True
    owned_by: str | None = None
