"""Latency and throughput measurement."""
