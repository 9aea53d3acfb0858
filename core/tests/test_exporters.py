"""The core's jsonl exporter, found through the exporters hook."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest

from tollway.errors import ConfigError
from tollway.plugins import build_plugin_manager


@attrs.frozen
class Event:
    kind: str
    amount: int


class WithDict:
    def to_dict(self) -> dict[str, str]:
        return {"kind": "alert", "budget": "team:research"}


async def test_jsonl_appends_one_object_a_line(tmp_path: Path) -> None:
    registration = build_plugin_manager(load_entrypoints=False).registrations("exporters")["jsonl"]
    path = tmp_path / "sub" / "events.jsonl"
    exporter = registration.factory({"path": str(path)})
    await exporter.export([Event("a", 1), WithDict()])
    await exporter.export([Event("b", 2)])
    await exporter.export([])
    await exporter.aclose()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [
        {"kind": "a", "amount": 1},
        {"kind": "alert", "budget": "team:research"},
        {"kind": "b", "amount": 2},
    ]


def test_jsonl_refuses_unknown_options() -> None:
    registration = build_plugin_manager(load_entrypoints=False).registrations("exporters")["jsonl"]
    with pytest.raises(ConfigError, match="it takes: path"):
        registration.factory({"pth": "x"})
