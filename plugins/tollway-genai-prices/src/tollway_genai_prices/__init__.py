"""tollway-genai-prices (being written)."""
