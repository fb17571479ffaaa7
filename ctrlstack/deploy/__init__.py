"""Cluster lifecycle: supervisor processes, the per-user registry, and backends."""
