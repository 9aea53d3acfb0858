"""tollway-ollama: registered through the tollway entry point (being written)."""
