"""What every benchmark measures the same way: timings summarised as median, minimum and runs,
ratios of medians (or minimums) against the raw limit, and the machine they ran on."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from resilience.authstate.pgconn import Conn, database_errors
from resilience.errors import InputError


def stats(runs: Sequence[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(runs), 6),
        "min": round(min(runs), 6),
        "runs": [round(r, 6) for r in runs],
    }


def ratio(
    ours: Sequence[float],
    raw: Sequence[float],
    pick: Callable[[Sequence[float]], float] = statistics.median,
) -> float | None:
    """`pick(ours) / pick(raw)`, or None when the raw limit took no measurable time."""
    base = pick(raw)
    return round(pick(ours) / base, 3) if base > 0 else None


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def machine(conn: Conn, **extra: Any) -> dict[str, Any]:
    """Cores, Python, platform and PostgreSQL version, plus what a benchmark adds."""
    with database_errors("reading the server version"):
        row = conn.execute("SHOW server_version").fetchone()
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "postgres": str(row[0]) if row else None,
        **extra,
    }


def checked_sizes(sizes: Sequence[int], repeat: int) -> list[int]:
    """Distinct positive key counts and a repeat of at least 1, or InputError saying which."""
    found = list(sizes)
    if not found or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in found):
        raise InputError(f"bench sizes must be positive key counts (got {found!r})")
    if len(set(found)) != len(found):
        raise InputError(f"bench sizes must differ (got {found!r})")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise InputError(f"bench repeat must be at least 1 (got {repeat!r})")
    return found
