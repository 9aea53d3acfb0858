"""Analytics: spend over time, trends, forecasts, recommendations and reports."""
