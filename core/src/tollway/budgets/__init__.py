"""Budgets: limits on spend, reserved before a call and settled after it."""
