"""Every drill run, remembered: ``reports/history.jsonl``, a copy of each report, the index.

On every report write (:func:`record`), under an exclusive lock on ``reports/.history.lock``
(drills may run in parallel):

* the run's page and JSON are copied to ``reports/archive/drill-<name>-<UTC stamp>.{html,json}``
  (the newest :data:`KEEP_PER_DRILL` of each drill are kept);
* one line is appended to ``reports/history.jsonl``: drill, time, status, the archived page,
  and per scenario its status, duration, RTO, targets and numeric measurements (the file is
  rewritten whole and atomically, so a reader never sees half a line);
* ``reports/index.html`` is rewritten (atomically): every run, newest first, with a link to its
  report, and per drill the trend of its RTO over the last :data:`TREND_RUNS` runs as an inline
  SVG line per scenario (hand-written SVG, like the timeline); a drill that measures no RTO
  shows its duration instead, labelled so.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from resilience.drill.reporting.targets import evaluate
from resilience.drill.reporting.timeline import parse
from resilience.runs.journal import atomic_write_text

HISTORY = "history.jsonl"
INDEX = "index.html"
ARCHIVE = "archive"
LOCK = ".history.lock"
KEEP_PER_DRILL = 30
TREND_RUNS = 30
#: The measurement holding a scenario's RTO, and the targets' names that may carry it.
RTO_KEY = "rto_s"
PALETTE = ("#4c7bd9", "#d04848", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#8d6e63")

TREND_W, TREND_H = 460, 140
#: The RTO target is drawn when it is at most this many times the highest value.
LIMIT_DRAWN_UP_TO = 2.5
TREND_PAD_L, TREND_PAD_R, TREND_PAD_T, TREND_PAD_B = 48, 12, 10, 22


@contextlib.contextmanager
def locked(reports_dir: Path) -> Iterator[None]:
    """An exclusive lock over the history of ``reports_dir`` (held until the block ends)."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    with (reports_dir / LOCK).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def entry(data: Mapping[str, Any], report: str) -> dict[str, Any]:
    """The history line of a drill report's data (as written to ``drill-<name>.json``)."""
    scenarios = []
    for s in data.get("scenarios", []):
        measurements = s.get("measurements") or {}
        rows, _ = evaluate(measurements)
        scenarios.append(
            {
                "title": s.get("title"),
                "status": s.get("status"),
                "deviated": s.get("deviated"),
                "duration_s": s.get("duration_s"),
                "rto_s": rto_of(measurements),
                "targets": [r.to_dict() for r in rows],
                "measurements": {
                    k: v
                    for k, v in measurements.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)
                },
            }
        )
    durations = [s["duration_s"] for s in scenarios if isinstance(s["duration_s"], int | float)]
    return {
        "drill": data.get("drill"),
        "at": data.get("generated_at"),
        "status": data.get("status"),
        "report": report,
        "duration_s": round(sum(durations), 3) if durations else None,
        "scenarios": scenarios,
    }


def rto_of(measurements: Mapping[str, Any]) -> float | None:
    value = measurements.get(RTO_KEY)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    rows, _ = evaluate(measurements)
    for row in rows:
        if row.name.lower() in ("rto", "rto_s") and isinstance(row.measured, int | float):
            return float(row.measured)
    return None


def read(reports_dir: Path) -> list[dict[str, Any]]:
    """Every history line that parses, oldest first (a damaged line is skipped)."""
    path = reports_dir / HISTORY
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            item = json.loads(line)
            if isinstance(item, dict) and item.get("drill"):
                out.append(item)
    return out


IndexPage = Callable[[list[dict[str, Any]], Path], str]


def record(
    reports_dir: Path, data: Mapping[str, Any], page: str, json_text: str, index_page: IndexPage
) -> Path:
    """Archive this run, append its line, rewrite the index; returns the index's path.

    ``index_page(entries, reports_dir)`` renders the index (kept apart from the bookkeeping).
    """
    name = str(data["drill"])
    at = parse(data.get("generated_at"))
    stamp = at.strftime("%Y%m%dT%H%M%S%fZ") if at else "unknown"
    with locked(reports_dir):
        archive = reports_dir / ARCHIVE
        archive.mkdir(exist_ok=True)
        page_path = atomic_write_text(archive / f"drill-{name}-{stamp}.html", page)
        atomic_write_text(archive / f"drill-{name}-{stamp}.json", json_text)
        line = json.dumps(entry(data, f"{ARCHIVE}/{page_path.name}"), default=str)
        path = reports_dir / HISTORY
        before = path.read_text(encoding="utf-8") if path.is_file() else ""
        if before and not before.endswith("\n"):
            before += "\n"
        atomic_write_text(path, before + line + "\n")
        _prune(archive, name)
        entries = read(reports_dir)
        return atomic_write_text(reports_dir / INDEX, index_page(entries, reports_dir))


def _prune(archive: Path, name: str) -> None:
    pages = sorted(archive.glob(f"drill-{name}-*.html"))
    for old in pages[:-KEEP_PER_DRILL]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)


# --- the trend --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    x: float
    y: float
    title: str


@dataclass
class Series:
    name: str
    color: str
    points: list[Point] = field(default_factory=list)

    @property
    def polyline(self) -> str:
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.points)


@dataclass
class Trend:
    drill: str
    metric: str  # "RTO" or "duration"
    runs: int
    width: int = TREND_W
    height: int = TREND_H
    series: list[Series] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    limit: tuple[float, str] | None = None
    limit_note: str = ""
    x0: float = TREND_PAD_L
    x1: float = TREND_W - TREND_PAD_R
    y0: float = TREND_H - TREND_PAD_B
    first: str = ""
    last: str = ""


def trend(drill: str, entries: list[dict[str, Any]]) -> Trend:
    """RTO per scenario over the last runs of ``drill`` (its duration if it measures no RTO)."""
    runs = [e for e in entries if e.get("drill") == drill][-TREND_RUNS:]
    has_rto = any(s.get("rto_s") is not None for e in runs for s in e.get("scenarios", []))
    t = Trend(drill, "RTO" if has_rto else "duration", len(runs))
    values: dict[str, list[tuple[int, float, str]]] = {}
    limits: list[float] = []
    for index, run in enumerate(runs):
        if has_rto:
            for s in run.get("scenarios", []):
                if isinstance(s.get("rto_s"), int | float):
                    values.setdefault(str(s.get("title")), []).append(
                        (index, float(s["rto_s"]), str(run.get("at", "")))
                    )
                limits += [
                    float(r["target"])
                    for r in s.get("targets", [])
                    if str(r.get("name", "")).lower() in ("rto", "rto_s")
                    and r.get("op") in ("<=", "<")
                    and isinstance(r.get("target"), int | float)
                ]
        elif isinstance(run.get("duration_s"), int | float):
            values.setdefault("whole drill", []).append(
                (index, float(run["duration_s"]), str(run.get("at", "")))
            )
    if runs:
        t.first, t.last = when(runs[0].get("at"), minutes=True), when(runs[-1].get("at"), True)
    peak = max([v for points in values.values() for _, v, _ in points] + [1e-3])
    limit = limits[-1] if limits else None
    # a limit far above every value would flatten the line: it is then named, not drawn
    drawn = limit is not None and limit <= LIMIT_DRAWN_UP_TO * peak
    top = max(peak, limit if drawn and limit is not None else 0.0) * 1.15
    span = max(1, len(runs) - 1)

    def x_of(i: int) -> float:
        return t.x0 + (t.x1 - t.x0) * (i / span if len(runs) > 1 else 0.5)

    def y_of(v: float) -> float:
        return t.y0 - (t.y0 - TREND_PAD_T) * v / top

    for n, (name, points) in enumerate(values.items()):
        series = Series(name, PALETTE[n % len(PALETTE)])
        series.points = [
            Point(x_of(i), y_of(v), f"{at[:19]} {name}: {v:.3f} s") for i, v, at in points
        ]
        t.series.append(series)
    t.y_ticks = [(y_of(top * f / 1.15), f"{top * f / 1.15:.3g} s") for f in (0, 0.5, 1)]
    if limit is not None and drawn:
        t.limit = (y_of(limit), f"target ≤ {limit:g} s")
    elif limit is not None:
        t.limit_note = f"target ≤ {limit:g} s (above the chart)"
    return t


def drills(entries: list[dict[str, Any]]) -> list[str]:
    """Drill names, the one run most recently first."""
    last: dict[str, str] = {}
    for e in entries:
        last[str(e["drill"])] = str(e.get("at", ""))
    return sorted(last, key=lambda name: last[name], reverse=True)


def when(stamp: Any, minutes: bool = False) -> str:
    """``2025-01-01 12:00:00 UTC`` (without seconds if ``minutes``), or the stamp as it is."""
    at = parse(stamp)
    if not isinstance(at, datetime):
        return str(stamp or "-")
    return at.strftime("%Y-%m-%d %H:%M" if minutes else "%Y-%m-%d %H:%M:%S UTC")
