"""The shared records: frozen and slotted, their helpers, a lossless trip through the converter."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollway.converter import converter
from tollway.types import (
    Cost,
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

ALL_RECORDS = [
    TextPart,
    ImagePart,
    ToolCall,
    Tool,
    Message,
    Usage,
    Cost,
    Request,
    Response,
    ToolCallDelta,
    StreamChunk,
    ModelInfo,
]


@pytest.mark.parametrize("cls", ALL_RECORDS, ids=lambda c: c.__name__)
def test_records_are_frozen_and_slotted(cls: type) -> None:
    assert "__slots__" in cls.__dict__
    instance = {
        TextPart: lambda: TextPart("t"),
        ImagePart: lambda: ImagePart("https://x/y.png"),
        ToolCall: lambda: ToolCall("c1", "f"),
        Tool: lambda: Tool("f"),
        Message: lambda: Message.user("hi"),
        Usage: Usage,
        Cost: Cost,
        Request: lambda: Request("openai/gpt-4o-mini", (Message.user("hi"),)),
        Response: lambda: Response("r1", "gpt", "openai", Message.assistant("yo")),
        ToolCallDelta: lambda: ToolCallDelta(0),
        StreamChunk: StreamChunk,
        ModelInfo: lambda: ModelInfo("gpt", "openai"),
    }[cls]()
    first = attrs.fields(cls)[0].name
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        setattr(instance, first, getattr(instance, first))
    # Slotted: no per-instance dict, so a stray attribute cannot be set either.
    assert not hasattr(instance, "__dict__")
    with pytest.raises((AttributeError, attrs.exceptions.FrozenInstanceError)):
        instance.not_a_field = 1  # type: ignore[attr-defined]


def test_message_role_is_validated_with_a_clear_error() -> None:
    with pytest.raises(ValueError) as info:
        Message("bot", "hi")
    text = str(info.value)
    assert "'bot'" in text
    for role in ("assistant", "system", "user", "tool"):
        assert role in text
    for role in ("system", "user", "assistant", "tool", "developer"):
        assert Message(role, "x").role == role


def test_message_text_joins_text_parts_and_skips_images() -> None:
    message = Message(
        "user",
        (TextPart("Describe "), ImagePart("data:image/png;base64,AAAA"), TextPart("this.")),
    )
    assert message.text == "Describe this."
    assert Message.user("plain").text == "plain"
    assert Message("user", ()).text == ""


def test_message_constructors() -> None:
    call = ToolCall("c1", "lookup", '{"q": 1}')
    reply = Message.assistant("", (call,))
    assert reply.role == "assistant"
    assert reply.tool_calls == (call,)
    assert Message.system("be brief") == Message("system", "be brief")


def test_usage_add_and_total() -> None:
    a = Usage(10, 5, cache_read_tokens=4, cache_write_tokens=1, reasoning_tokens=2)
    b = Usage(1, 2, cache_read_tokens=3, cache_write_tokens=4, reasoning_tokens=5)
    assert a + b == Usage(11, 7, 7, 5, 7)
    assert a.total_tokens == 15
    assert (a + b).total_tokens == 18
    assert Usage() + a == a


@given(st.lists(st.tuples(*[st.integers(0, 10**9)] * 5), max_size=8))
def test_usage_sum_is_fieldwise(counts: list[tuple[int, int, int, int, int]]) -> None:
    total = Usage()
    expected = [0] * 5
    for c in counts:
        total = total + Usage(*c)
        expected = [e + n for e, n in zip(expected, c, strict=True)]
    assert attrs.astuple(total) == tuple(expected)


def test_cost_total_is_exact_decimal() -> None:
    cost = Cost(
        input=Decimal("0.1"),
        output=Decimal("0.2"),
        cache_read=Decimal("0.000000001"),
        cache_write=Decimal("0.3"),
        reasoning=Decimal("0.4"),
        request=Decimal("0.005"),
    )
    assert cost.total == Decimal("1.005000001")
    assert isinstance(cost.total, Decimal)
    assert Cost().total == 0


@given(st.lists(st.decimals(min_value=0, max_value=10**6, places=9), min_size=6, max_size=6))
def test_cost_total_sums_every_part(parts: list[Decimal]) -> None:
    cost = Cost(*parts)
    expected = Decimal(0)
    for part in parts:
        expected += part
    assert cost.total == expected


def test_request_provider_and_model_name() -> None:
    request = Request("openai/gpt-4o-mini", (Message.user("hi"),))
    assert request.provider == "openai"
    assert request.model_name == "gpt-4o-mini"
    # Only the first slash splits: model names may contain slashes of their own.
    nested = Request("ollama/library/llama3:8b", ())
    assert nested.provider == "ollama"
    assert nested.model_name == "library/llama3:8b"
    assert Request("gpt-4o", ()).model_name == "gpt-4o"


def test_response_text_and_tool_calls_come_from_the_message() -> None:
    call = ToolCall("c1", "f")
    response = Response(
        "r", "m", "p", Message("assistant", (TextPart("a"), TextPart("b")), (call,))
    )
    assert response.text == "ab"
    assert response.tool_calls == (call,)


# -- round trip through tollway's converter ----------------------------------------------------

texts = st.text(max_size=12)
maybe_text = st.none() | texts
json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | texts
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(texts, json_values, max_size=4)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
money = st.decimals(
    allow_nan=False, allow_infinity=False, places=12, min_value=-(10**9), max_value=10**9
)

text_parts = st.builds(TextPart, texts)
image_parts = st.builds(ImagePart, texts, maybe_text)
content = texts | st.lists(text_parts | image_parts, max_size=4).map(tuple)
tool_calls = st.builds(ToolCall, texts, texts, texts)
roles = st.sampled_from(["system", "user", "assistant", "tool", "developer"])
messages = st.builds(
    Message,
    roles,
    content,
    st.lists(tool_calls, max_size=3).map(tuple),
    maybe_text,
    maybe_text,
)
tools = st.builds(Tool, texts, texts, json_objects)
usages = st.builds(Usage, *[st.integers(0, 2**40)] * 5)
costs = st.builds(Cost, money, money, money, money, money, money, st.sampled_from(["USD", "EUR"]))
requests = st.builds(
    Request,
    texts,
    st.lists(messages, max_size=3).map(tuple),
    max_tokens=st.none() | st.integers(1, 10**6),
    temperature=st.none() | finite_floats,
    top_p=st.none() | finite_floats,
    stop=st.lists(texts, max_size=3).map(tuple),
    seed=st.none() | st.integers(-(2**31), 2**31),
    tools=st.lists(tools, max_size=2).map(tuple),
    tool_choice=st.none() | texts | json_objects,
    response_format=st.none() | json_objects,
    user=maybe_text,
    session=maybe_text,
    team=maybe_text,
    api_key_id=maybe_text,
    tags=st.dictionaries(texts, texts, max_size=3),
    extra=json_objects,
    timeout=st.none() | finite_floats,
)
responses = st.builds(
    Response,
    texts,
    texts,
    texts,
    messages,
    finish_reason=maybe_text,
    usage=usages,
    cost=st.none() | costs,
    request_id=maybe_text,
    latency_s=st.none() | finite_floats,
)
deltas = st.builds(ToolCallDelta, st.integers(0, 64), maybe_text, maybe_text, texts)
chunks = st.builds(
    StreamChunk,
    texts,
    st.lists(deltas, max_size=3).map(tuple),
    maybe_text,
    st.none() | usages,
    maybe_text,
    maybe_text,
)
model_infos = st.builds(
    ModelInfo,
    texts,
    texts,
    st.none() | st.integers(0, 10**7),
    st.none() | st.integers(0, 10**7),
    st.none() | st.booleans(),
    st.booleans(),
    maybe_text,
)

any_record = st.one_of(
    messages, requests, responses, chunks, usages, costs, model_infos, tools, deltas
)


@settings(max_examples=300, deadline=None)
@given(any_record)
def test_every_record_round_trips_through_the_converter(record: Any) -> None:
    data = converter.unstructure(record)
    assert converter.structure(data, type(record)) == record


@settings(max_examples=100, deadline=None)
@given(st.one_of(messages, requests, responses, chunks, costs))
def test_unstructured_records_are_json_ready(record: Any) -> None:
    import json

    data = converter.unstructure(record)
    # Through JSON text and back: what a store or the gateway does with it.
    again = converter.structure(json.loads(json.dumps(data)), type(record))
    assert again == record


def test_decimal_survives_as_text_not_float() -> None:
    cost = Cost(input=Decimal("0.1"), output=Decimal("0.000000000123"))
    data = converter.unstructure(cost)
    assert data["input"] == "0.1"
    assert converter.structure(data, Cost) == cost
    # A float from a hand-written file is read through its repr, not its binary value.
    assert converter.structure({"input": 0.1}, Cost).input == Decimal("0.1")


def test_content_parts_structure_from_plain_dicts() -> None:
    data = {
        "role": "user",
        "content": [
            {"type": "text", "text": "look"},
            {"type": "image", "url": "https://x/y.png", "detail": "high"},
        ],
    }
    message = converter.structure(data, Message)
    assert message.content == (TextPart("look"), ImagePart("https://x/y.png", "high"))
    assert converter.structure({"role": "user", "content": "hi"}, Message).content == "hi"
