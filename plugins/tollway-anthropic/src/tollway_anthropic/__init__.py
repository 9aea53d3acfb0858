"""tollway-anthropic: registered through the tollway entry point (being written)."""
