"""Prices: per-model rates from price sources, and the cost of every call."""
