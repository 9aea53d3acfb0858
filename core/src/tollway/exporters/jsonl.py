"""The ``jsonl`` exporter: events appended to a file, one JSON object a line.

Budget alerts, and any event with a ``to_dict()`` (or an attrs record), are written as they
come, off the event loop. The file is opened for each batch and appended to, so rotating it
from outside (logrotate's ``copytruncate`` or a rename) is safe.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs


def _default_path() -> Path:
    base = os.environ.get("TOLLWAY_DATA_DIR")
    root = Path(base) if base else Path.home() / ".local" / "share" / "tollway"
    return root / "events.jsonl"


def _as_dict(event: Any) -> Any:
    if hasattr(event, "to_dict"):
        return event.to_dict()
    if attrs.has(type(event)):
        from tollway.converter import unstructure

        return unstructure(event)
    return event


class JsonlExporter:
    """Appends each event as one line of JSON to ``path``."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else _default_path()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> JsonlExporter:
        unknown = set(options) - {"path"}
        if unknown:
            from tollway.errors import ConfigError

            raise ConfigError(
                f"unknown key(s) {', '.join(sorted(unknown))} for the jsonl exporter; "
                "it takes: path"
            )
        return cls(options.get("path"))

    async def export(self, events: Sequence[Any]) -> None:
        if not events:
            return
        lines = "".join(
            json.dumps(_as_dict(e), default=str, ensure_ascii=False) + "\n" for e in events
        )
        await asyncio.to_thread(self._append, lines)

    def _append(self, lines: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as file:
            file.write(lines)

    async def aclose(self) -> None:
        return None
