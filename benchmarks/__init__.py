"""Benchmarks of threadjobs against its peers; run ``python -m benchmarks.run``."""
