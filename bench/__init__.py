"""Benchmarks for stagesync; run ``python -m bench`` (see bench/README.md)."""
