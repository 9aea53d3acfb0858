"""`tollway usage`: being written."""

from __future__ import annotations
