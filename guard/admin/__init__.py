"""The admin address: /healthz, /metrics and the REST API under /v1 (tokens, tenants)."""
