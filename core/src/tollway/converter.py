"""tollway's own cattrs converter (never cattrs' global one), and readable structuring errors.

Used for configuration and for turning records into JSON-ready data and back (stores, caches,
the gateway). The request path builds records directly and does not come through here.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from tollway.providers.base import Secret
from tollway.types import ContentPart, ImagePart, TextPart

T = TypeVar("T")


def _structure_content(value: Any, _type: Any) -> str | tuple[ContentPart, ...]:
    if isinstance(value, str):
        return value
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"expected a string or a list of content parts, got {type(value).__name__}")
    parts: list[ContentPart] = []
    for item in value:
        if isinstance(item, (TextPart, ImagePart)):
            parts.append(item)
        elif item.get("type", "text") == "text":
            parts.append(TextPart(item["text"]))
        else:
            parts.append(ImagePart(item["url"], item.get("detail")))
    return tuple(parts)


def _structure_tool_choice(value: Any, _type: Any) -> str | Mapping[str, Any] | None:
    if value is None or isinstance(value, (str, Mapping)):
        return value
    raise TypeError(f"expected a string or a table, got {type(value).__name__}")


def _structure_secret(value: Any, _type: Any) -> Secret:
    if isinstance(value, Secret):
        return value
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return Secret(value)


def _structure_decimal(value: Any, _type: Any) -> Decimal:
    if isinstance(value, bool):
        raise ValueError(f'expected a number such as "0.15", got {value!r}')
    if isinstance(value, float):
        # Through str, so 0.1 stays 0.1 rather than becoming its binary neighbour.
        return Decimal(repr(value))
    try:
        return Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise ValueError(f'expected a number such as "0.15", got {value!r}') from None


def _structure_str_list(value: Any, _type: Any) -> list[str]:
    # cattrs would iterate a string into its characters; a list was meant.
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError(f"expected a list of strings, got {type(value).__name__} {value!r}")
    out = []
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"expected a list of strings, found {type(item).__name__} {item!r}")
        out.append(item)
    return out


def _structure_bool(value: Any, _type: Any) -> bool:
    # cattrs would call bool() on anything: "no" and "yes please" would both be True.
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    raise TypeError(f"expected true or false, got {value!r}")


def make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(bool, _structure_bool)
    converter.register_structure_hook_func(lambda t: t == list[str], _structure_str_list)
    converter.register_structure_hook(str | tuple[ContentPart, ...], _structure_content)
    converter.register_structure_hook(str | Mapping[str, Any] | None, _structure_tool_choice)
    converter.register_structure_hook(Secret, _structure_secret)
    converter.register_unstructure_hook(Secret, lambda _s: "***")
    converter.register_structure_hook(Decimal, _structure_decimal)
    converter.register_unstructure_hook(Decimal, str)
    return converter


converter = make_converter()


def _unknown_key(exc: ForbiddenExtraKeysError, key: str) -> str:
    allowed = sorted(a.name for a in attrs.fields(exc.cl)) if attrs.has(exc.cl) else []
    guess = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
    return f"unknown key {key!r}{hint}; the keys it takes are: {', '.join(allowed)}"


def _describe(exc: BaseException, cls: type | None) -> str:
    if isinstance(exc, KeyError):
        return "required key is missing"
    if isinstance(exc, (ValueError, TypeError, AttributeError)):
        expected = (getattr(cls, "__name__", None) or str(cls)) if cls is not None else None
        detail = str(exc)
        if expected is None:
            return detail or type(exc).__name__
        # Messages from float("soon") or {}.items() on a string say nothing a user can act on.
        if (
            isinstance(exc, AttributeError)
            or "invalid literal" in detail
            or "could not convert" in detail
            or not detail
        ):
            return f"expected {expected}"
        return f"{detail} (expected {expected})"
    return str(exc)


def _clean(path: str) -> str:
    return path.removeprefix("$.").removeprefix("$")


def structure_errors(exc: BaseException, path: str = "$") -> list[tuple[str, str]]:
    """Flatten a cattrs error into ``(key path, message)`` pairs, ``key path`` in dotted form.

    An unknown key is reported at its own path (``providers.openai.timeoutt``), with the
    closest known key as a suggestion.
    """
    if isinstance(exc, ForbiddenExtraKeysError):
        return [
            (_clean(f"{path}.{key}"), _unknown_key(exc, key)) for key in sorted(exc.extra_fields)
        ]
    if not isinstance(exc, (ClassValidationError, IterableValidationError)):
        return [(_clean(path), _describe(exc, None))]
    out: list[tuple[str, str]] = []
    with_notes, without = exc.group_exceptions()
    for inner, note in with_notes:
        name = getattr(note, "name", None)
        index = getattr(note, "index", None)
        if name is not None:
            sub = f"{path}.{name}"
        elif index is not None:
            sub = f"{path}[{index!r}]" if not isinstance(index, str) else f"{path}.{index}"
        else:
            sub = path
        if isinstance(
            inner, (ClassValidationError, IterableValidationError, ForbiddenExtraKeysError)
        ):
            out.extend(structure_errors(inner, sub))
        else:
            out.append((_clean(sub), _describe(inner, getattr(note, "type", None))))
    for inner in without:
        out.extend(structure_errors(inner, path))
    return out


def structure(data: Any, cls: type[T]) -> T:
    return converter.structure(data, cls)


def unstructure(obj: Any) -> Any:
    return converter.unstructure(obj)
