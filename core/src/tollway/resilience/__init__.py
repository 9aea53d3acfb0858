"""Coalescing, retries, circuit breakers, fallbacks and rate limits."""
