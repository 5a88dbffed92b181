"""Recent queries: a bounded ring, nearest-rank percentiles, and a real sliding window.

Hand-written because they are a few lines each and must be exact: prometheus-client's summary
has no quantiles and a histogram only estimates them.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

RING_SIZE = 1000
SQL_HEAD = 100  # characters of the statement kept; parameters are never kept


class QueryRecord(NamedTuple):  # a tuple: built once per query, a dataclass costs 5x more
    at: float  # wall-clock end of the query, seconds since the epoch
    duration_s: float
    ok: bool
    rows: int  # rows returned or affected; -1 when unknown
    statement: object  # the statement as executed (its text; parameters are never kept)

    @property
    def sql(self) -> str:
        """The first SQL_HEAD characters of the statement (cut when read, not per query)."""
        return sql_head(self.statement)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "duration_s": self.duration_s,
            "ok": self.ok,
            "rows": self.rows,
            "sql": self.sql,
        }


def sql_head(statement: object) -> str:
    """The first characters of a statement's text, whitespace folded; never its parameters."""
    if isinstance(statement, bytes):
        text = statement[: SQL_HEAD * 4].decode("utf-8", "replace")
    elif isinstance(statement, str):
        text = statement[: SQL_HEAD * 4]
    else:  # psycopg.sql.Composed and friends: their type, not a rendering that costs
        text = f"<{type(statement).__name__}>"
    return " ".join(text.split())[:SQL_HEAD]


def nearest_rank(values: Sequence[float], percentile: float) -> float | None:
    """The nearest-rank percentile of already sorted ``values`` (None when empty)."""
    if not values:
        return None
    if not 0 < percentile <= 100:
        raise ValueError("percentile must be in (0, 100]")
    rank = max(1, math.ceil(percentile / 100 * len(values)))
    return values[rank - 1]


@dataclass(frozen=True)
class LatencySummary:
    count: int  # queries in the ring
    ok: int
    failed: int
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    max_s: float | None

    @property
    def success_rate(self) -> float | None:
        return self.ok / self.count if self.count else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["success_rate"] = self.success_rate
        return out


def summarize(records: Iterable[QueryRecord]) -> LatencySummary:
    """Percentiles over the successful queries; the success rate over all of them."""
    items = list(records)
    durations = sorted(r.duration_s for r in items if r.ok)
    return LatencySummary(
        count=len(items),
        ok=len(durations),
        failed=len(items) - len(durations),
        p50_s=nearest_rank(durations, 50),
        p95_s=nearest_rank(durations, 95),
        p99_s=nearest_rank(durations, 99),
        max_s=durations[-1] if durations else None,
    )


class QueryRing:
    """The last ``size`` queries; safe to add to from several threads."""

    def __init__(self, size: int = RING_SIZE) -> None:
        self._ring: deque[QueryRecord] = deque(maxlen=size)

    def add(self, record: QueryRecord) -> None:
        self._ring.append(record)  # atomic on a deque: no lock on the query's path

    def records(self) -> list[QueryRecord]:
        while True:  # a copy taken while another thread appends is simply taken again
            try:
                return list(self._ring)
            except RuntimeError:
                continue

    def summary(self) -> LatencySummary:
        return summarize(self.records())

    def __len__(self) -> int:
        return len(self._ring)


class SlidingWindow:
    """Event times inside the last ``seconds``: an event leaves the window exactly when it is
    older than that (never a counter that only grows, never buckets that jump)."""

    def __init__(self, seconds: float, events: Iterable[float] = ()) -> None:
        if seconds <= 0:
            raise ValueError("the window must be positive")
        self.seconds = seconds
        self._events: deque[float] = deque(sorted(events))

    def add(self, at: float, count: int = 1) -> None:
        for _ in range(count):
            self._events.append(at)
        if len(self._events) > 1 and self._events[-2] > at:  # keep them ordered
            self._events = deque(sorted(self._events))

    def count(self, now: float) -> int:
        self._prune(now)
        return len(self._events)

    def events(self, now: float) -> list[float]:
        self._prune(now)
        return list(self._events)

    def _prune(self, now: float) -> None:
        while self._events and self._events[0] <= now - self.seconds:
            self._events.popleft()
