"""`tollway budget`: being written."""

from __future__ import annotations
