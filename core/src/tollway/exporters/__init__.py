"""Exporters that ship with the core."""
