"""Benchmarks: each measures our code beside the raw limit of the same work, in one run, and
returns a JSON-ready dict (the ``invoke bench`` task prints it)."""

from resilience.drill.bench.restore import DEFAULT_SIZES, EXPORT_RATIO_TARGET, bench_restore

__all__ = ["DEFAULT_SIZES", "EXPORT_RATIO_TARGET", "bench_restore"]
