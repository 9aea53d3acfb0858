"""tollway's own converter: its hooks, and structuring errors that name the key path."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import attrs
import cattrs
import pytest

from tollway.converter import converter, make_converter, structure_errors
from tollway.providers.base import ProviderSettings, Secret
from tollway.types import Cost, Message, Request, TextPart


@attrs.define
class Inner:
    size: int
    ratio: float = 1.0


@attrs.define
class Outer:
    name: str
    inner: Inner
    items: list[Inner] = attrs.field(factory=list)
    table: dict[str, Inner] = attrs.field(factory=dict)


def errors_of(data: Any, cls: type) -> list[tuple[str, str]]:
    with pytest.raises(Exception) as info:
        converter.structure(data, cls)
    return structure_errors(info.value)


def test_it_is_not_cattrs_global_converter() -> None:
    assert converter is not cattrs.global_converter
    assert make_converter() is not make_converter()
    # The global one knows none of tollway's hooks.
    assert converter.unstructure(Secret("s")) == "***"
    assert cattrs.global_converter.unstructure(Decimal("0.1")) == Decimal("0.1")


def test_wrong_types_are_named_by_path() -> None:
    errors = dict(
        errors_of(
            {
                "name": "n",
                "inner": {"size": "big"},
                "items": [{"size": 1}, {"size": 2, "ratio": "wide"}],
                "table": {"a": {"size": "x"}},
            },
            Outer,
        )
    )
    assert errors == {
        "inner.size": "expected int",
        "items[1].ratio": "expected float",
        "table.a.size": "expected int",
    }


def test_missing_key() -> None:
    assert errors_of({"name": "n"}, Outer) == [("inner", "required key is missing")]


def test_unknown_keys_are_named_at_their_own_path_with_a_suggestion() -> None:
    errors = errors_of({"name": "n", "inner": {"size": 1, "ratoi": 2.0, "zzz": 1}}, Outer)
    assert [path for path, _ in errors] == ["inner.ratoi", "inner.zzz"]
    assert "did you mean 'ratio'?" in errors[0][1]
    assert "did you mean" not in errors[1][1]
    assert "ratio, size" in errors[1][1]


def test_unknown_key_at_the_top() -> None:
    [(path, message)] = errors_of({"nmae": "n", "inner": {"size": 1}, "name": "n"}, Outer)
    assert path == "nmae"
    assert "did you mean 'name'?" in message


def test_a_string_where_a_table_belongs() -> None:
    [(path, message)] = errors_of({"name": "n", "inner": {"size": 1}, "table": "x"}, Outer)
    assert path == "table"
    assert message.startswith("expected dict")


def test_secret_hooks() -> None:
    settings = converter.structure({"api_key": "sk-1", "type": "x"}, ProviderSettings)
    assert settings.api_key == Secret("sk-1")
    assert converter.unstructure(settings)["api_key"] == "***"
    assert converter.structure(Secret("a"), Secret) == Secret("a")
    [(path, message)] = errors_of({"api_key": 5}, ProviderSettings)
    assert path == "api_key"
    assert "expected a string" in message


def test_decimal_hooks() -> None:
    assert converter.unstructure(Decimal("1.10")) == "1.10"
    assert converter.structure("1.10", Decimal) == Decimal("1.10")
    assert converter.structure(3, Decimal) == Decimal(3)
    assert converter.structure(0.1, Decimal) == Decimal("0.1")
    [(path, _message)] = errors_of({"input": "lots"}, Cost)
    assert path == "input"


def test_content_accepts_parts_as_records_or_tables_and_rejects_other_types() -> None:
    parts = (TextPart("a"),)
    assert converter.structure({"role": "user", "content": list(parts)}, Message).content == parts
    [(path, message)] = errors_of({"role": "user", "content": 5}, Message)
    assert path == "content"
    assert "string or a list of content parts" in message


def test_role_validation_error_surfaces_through_the_converter() -> None:
    [(path, message)] = errors_of({"role": "robot"}, Message)
    assert "'robot'" in message
    assert path == ""  # raised by the class itself, after its fields were read


def test_tool_choice_union() -> None:
    base: dict[str, Any] = {"model": "p/m", "messages": []}
    assert converter.structure({**base, "tool_choice": "auto"}, Request).tool_choice == "auto"
    table = {"type": "function", "function": {"name": "f"}}
    assert converter.structure({**base, "tool_choice": table}, Request).tool_choice == table
    [(path, _message)] = errors_of({**base, "tool_choice": 3}, Request)
    assert path == "tool_choice"


def test_a_bad_decimal_says_what_a_number_looks_like() -> None:
    from decimal import Decimal

    import pytest

    from tollway.converter import converter

    with pytest.raises(ValueError, match=r'expected a number such as "0.15", got \'cheap\''):
        converter.structure("cheap", Decimal)
    assert converter.structure("0.15", Decimal) == Decimal("0.15")
    assert converter.structure(0.1, Decimal) == Decimal("0.1")


def test_a_string_is_not_a_bool() -> None:
    import pytest

    from tollway.converter import converter

    assert converter.structure(True, bool) is True
    assert converter.structure(0, bool) is False
    with pytest.raises(TypeError, match="expected true or false, got 'yes please'"):
        converter.structure("yes please", bool)
