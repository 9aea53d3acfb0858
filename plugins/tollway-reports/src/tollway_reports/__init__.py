"""tollway-reports (being written)."""
