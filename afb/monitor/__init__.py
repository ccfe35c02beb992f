"""Observability: the stats model, /metrics, usage reports and alerts (issue 11)."""
