"""The core's zero-dependency defaults, registered through the same hooks as any plugin."""

from __future__ import annotations
