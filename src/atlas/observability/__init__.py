"""Observability: Prometheus metrics, traces and structured logs (issue #18)."""
