"""Canonical request keys: equal requests give equal keys, different requests different keys."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollway.cache.keys import KEY_VERSION, request_key
from tollway.types import ImagePart, Message, Request, TextPart, Tool, ToolCall

# -- strategies ------------------------------------------------------------------------------

_text = st.text(max_size=12)
_names = st.text(alphabet="abcdefgh_", min_size=1, max_size=6)
# Integral floats on purpose: 2 and 2.0 must give one key.
_numbers = st.one_of(
    st.integers(-1000, 1000),
    st.integers(-1000, 1000).map(float),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
)
_json = st.recursive(
    st.one_of(st.none(), st.booleans(), _numbers, _text),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(_names, inner, max_size=3)
    ),
    max_leaves=8,
)
_json_object = st.dictionaries(_names, _json, max_size=4)

_parts = st.lists(
    st.one_of(
        st.builds(TextPart, _text),
        st.builds(ImagePart, _text, st.sampled_from([None, "low", "high"])),
    ),
    min_size=1,
    max_size=2,
).map(tuple)
_tool_calls = st.lists(st.builds(ToolCall, _names, _names, _text), max_size=2).map(tuple)
_messages = st.lists(
    st.builds(
        Message,
        st.sampled_from(["system", "user", "assistant", "tool", "developer"]),
        st.one_of(_text, _parts),
        _tool_calls,
        st.one_of(st.none(), _names),
        st.one_of(st.none(), _names),
    ),
    min_size=1,
    max_size=3,
).map(tuple)
_tools = st.lists(st.builds(Tool, _names, _text, _json_object), max_size=2).map(tuple)

requests = st.builds(
    Request,
    model=st.sampled_from(["openai/gpt-4o-mini", "openai/gpt-4o", "ollama/llama3:8b"]),
    messages=_messages,
    max_tokens=st.one_of(st.none(), st.integers(1, 4096)),
    temperature=st.one_of(st.none(), _numbers),
    top_p=st.one_of(st.none(), _numbers),
    stop=st.lists(_names, max_size=3, unique=True).map(tuple),
    seed=st.one_of(st.none(), st.integers(0, 2**31)),
    tools=_tools,
    tool_choice=st.one_of(st.none(), st.sampled_from(["auto", "none"]), _json_object),
    response_format=st.one_of(st.none(), _json_object),
    extra=_json_object,
)


# -- an independent oracle: what a provider would see, as a comparable value -----------------


def _meaning(value: Any) -> Any:
    """Bools, numbers and strings kept apart; 2 == 2.0; mappings unordered, None entries gone."""
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", value)  # 2 == 2.0 in Python, and hash equal
    if isinstance(value, str):
        return ("str", value)
    if isinstance(value, Mapping):
        return ("map", frozenset((k, _meaning(v)) for k, v in value.items() if v is not None))
    if isinstance(value, (list, tuple)):
        return ("list", tuple(_meaning(v) for v in value))
    raise TypeError(type(value))


def _part_meaning(part: TextPart | ImagePart) -> Any:
    if isinstance(part, TextPart):
        return ("text", part.text)
    return ("image", part.url, part.detail)


def _answer_meaning(request: Request) -> Any:
    return (
        request.model,
        tuple(
            (
                m.role,
                m.content if isinstance(m.content, str) else tuple(map(_part_meaning, m.content)),
                m.tool_calls,
                m.tool_call_id,
                m.name,
            )
            for m in request.messages
        ),
        _meaning(request.max_tokens),
        _meaning(request.temperature),
        _meaning(request.top_p),
        frozenset(request.stop),
        _meaning(request.seed),
        tuple((t.name, t.description, _meaning(t.parameters)) for t in request.tools),
        _meaning(request.tool_choice),
        _meaning(request.response_format),
        _meaning(dict(request.extra)),
    )


# -- variants that mean the same ---------------------------------------------------------------


def _reshuffle(value: Any, rng: random.Random) -> Any:
    """The same JSON meaning written differently: keys reordered, 2 <-> 2.0, None entries added."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return float(value) if abs(value) < 2**53 and rng.random() < 0.5 else value
    if isinstance(value, float):
        return int(value) if value.is_integer() and rng.random() < 0.5 else value
    if isinstance(value, Mapping):
        items = [(k, _reshuffle(v, rng)) for k, v in value.items()]
        rng.shuffle(items)
        if rng.random() < 0.5:
            items.append(("zz_absent", None))
        return dict(items)
    if isinstance(value, (list, tuple)):
        return type(value)(_reshuffle(v, rng) for v in value)
    return value


def _same_meaning(request: Request, rng: random.Random) -> Request:
    stop = list(request.stop)
    rng.shuffle(stop)
    return attrs.evolve(
        request,
        temperature=_reshuffle(request.temperature, rng),
        top_p=_reshuffle(request.top_p, rng),
        stop=tuple(stop),
        tools=tuple(
            Tool(t.name, t.description, _reshuffle(t.parameters, rng)) for t in request.tools
        ),
        tool_choice=_reshuffle(request.tool_choice, rng),
        response_format=_reshuffle(request.response_format, rng),
        extra=_reshuffle(request.extra, rng),
        # Who asked, when it times out and tollway's own directives do not change the answer.
        user=rng.choice([None, "u-1", "u-2"]),
        session=rng.choice([None, "s-1"]),
        team=rng.choice([None, "research"]),
        api_key_id=rng.choice([None, "key-9"]),
        tags=rng.choice([{}, {"team": "research"}, {"env": "prod", "app": "x"}]),
        timeout=rng.choice([None, 1.0, 30.0]),
        controls=rng.choice([{}, {"cache": "no-store"}, {"cache_ttl": 5, "priority": 2}]),
    )


@settings(max_examples=150, deadline=None)
@given(requests, st.randoms(use_true_random=False))
def test_requests_that_mean_the_same_have_one_key(request: Request, rng: random.Random) -> None:
    variant = _same_meaning(request, rng)
    assert _answer_meaning(variant) == _answer_meaning(request)
    assert request_key(variant, "ns") == request_key(request, "ns")


@settings(max_examples=150, deadline=None)
@given(requests, requests)
def test_requests_that_differ_in_meaning_have_different_keys(a: Request, b: Request) -> None:
    same = _answer_meaning(a) == _answer_meaning(b)
    assert (request_key(a, "ns") == request_key(b, "ns")) is same


# Each change alters what the provider is asked, so it must alter the key.
_CHANGES: dict[str, dict[str, Any]] = {
    "model": {"model": "openai/gpt-4o"},
    "message text": {"messages": (Message("user", "hello!"),)},
    "role": {"messages": (Message("system", "hello"),)},
    "extra turn": {"messages": (Message("user", "hello"), Message("user", "hello"))},
    "content parts": {"messages": (Message("user", (TextPart("hello"),)),)},
    "max_tokens": {"max_tokens": 11},
    "temperature": {"temperature": 0.5},
    "temperature 0": {"temperature": 0},
    "top_p": {"top_p": 0.9},
    "stop": {"stop": ("END",)},
    "seed": {"seed": 7},
    "tools": {"tools": (Tool("lookup"),)},
    "tool_choice": {"tool_choice": "required"},
    "response_format": {"response_format": {"type": "json_object"}},
    "extra": {"extra": {"logprobs": True}},
    "extra false vs 0": {"extra": {"n": False}},
}


@pytest.mark.parametrize("change", sorted(_CHANGES))
def test_each_change_that_alters_the_answer_alters_the_key(change: str) -> None:
    base = Request("openai/gpt-4o-mini", (Message("user", "hello"),), extra={"n": 0})
    changed = attrs.evolve(base, **_CHANGES[change])
    assert request_key(changed) != request_key(base)


def test_numbers_and_bools_are_not_confused() -> None:
    base = Request("openai/gpt-4o-mini", (Message("user", "hi"),))
    assert request_key(attrs.evolve(base, extra={"x": 1})) != request_key(
        attrs.evolve(base, extra={"x": True})
    )
    assert request_key(attrs.evolve(base, temperature=0)) == request_key(
        attrs.evolve(base, temperature=0.0)
    )
    assert request_key(attrs.evolve(base, temperature=0)) != request_key(base)


def test_the_key_names_namespace_version_and_model_so_backends_can_match_prefixes() -> None:
    request = Request("ollama/llama3:8b", (Message("user", "hi"),))
    key = request_key(request, "team-a")
    assert key.startswith(f"team-a:{KEY_VERSION}:ollama/llama3:8b:")
    assert len(key.rpartition(":")[2]) == 64
    assert request_key(request, "team-b") != key


def test_a_value_with_no_json_form_is_refused_by_name() -> None:
    request = Request("openai/gpt-4o-mini", (Message("user", "hi"),), extra={"x": object()})
    with pytest.raises(TypeError, match="cannot make a cache key from a object"):
        request_key(request)
