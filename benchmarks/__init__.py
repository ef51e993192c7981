"""Benchmarks for lightning_al, run as ``python -m benchmarks.<name>``."""
