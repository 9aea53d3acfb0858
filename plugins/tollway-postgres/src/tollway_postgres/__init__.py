"""tollway-postgres (being written)."""
