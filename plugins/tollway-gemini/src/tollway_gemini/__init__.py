"""tollway-gemini: registered through the tollway entry point (being written)."""
