"""tollway-bedrock: registered through the tollway entry point (being written)."""
