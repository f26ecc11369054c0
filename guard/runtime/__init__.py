"""Processes: the supervisor (control plane) and data-plane workers."""
