"""Streams: one interface over every provider's stream, and turning chunks back into a Response."""

from tollway.streaming.assembler import StreamAssembler

__all__ = ["StreamAssembler"]
