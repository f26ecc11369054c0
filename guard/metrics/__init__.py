"""Prometheus metrics: plain-data snapshots of the data plane's own counters, merged across
workers and rendered by a prometheus-client collector at scrape time."""
