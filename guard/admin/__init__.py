"""The admin address: /healthz and /metrics (the REST API is issue 6)."""
