"""Benchmarks for remote_samsing: run all with ``python -m benchmarks [--quick]``."""
