"""Guard: an edge load balancer and proxy that wakes containers on demand."""

__version__ = "0.1.0"
