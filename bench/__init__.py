"""Benchmarks: ``make bench`` (``python -m bench.run``) and the single-figure scripts."""
