"""One scenario's timeline as inline SVG geometry: steps as bars, events as marks, fault windows.

The SVG is hand-written (a template fed by this geometry): no charting library draws a
script-free, self-contained SVG from a journal.

Rows, top to bottom: one lane per kind of event present (faults, alerts, health checks, the
steady state probes, evidence, any other kind under its own name, failures), then one row per
step and per rollback with its bar from start to end. Time runs left to right from the
scenario's start. Event kinds with a mark of their own (:data:`MARKS`):

``fault``
    a fault injected; a ``fault`` event whose message starts with ``removed`` (or a
    ``fault_removed`` event) is its removal, and the window between the two is shaded;
``alert``, ``health``, ``evidence``, ``failure``
    an alert received, a health check, a piece of evidence (a screenshot), the failure that
    ended a scenario;
``steady``
    the steady state measured before and after (from the journal's steady states).

Any other kind gets a grey circle in a lane named after it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from resilience.runs.html import format_duration, parse_stamp

WIDTH = 1000
LABEL_W = 250
RIGHT_W = 76  # room for the duration after a bar that ends at the right edge
AXIS_H = 26
ROW_H = 22
MARK_R = 6
LABEL_CHARS = 38
REMOVED = "fault_removed"


@dataclass(frozen=True)
class Mark:
    label: str
    shape: str
    color: str


MARKS: dict[str, Mark] = {
    "fault": Mark("fault injected", "down", "#c62828"),
    REMOVED: Mark("fault removed", "up", "#2e7d32"),
    "alert": Mark("alert received", "circle", "#ef6c00"),
    "health": Mark("health check", "square", "#1565c0"),
    "steady": Mark("steady state probe", "square", "#00838f"),
    "evidence": Mark("evidence", "diamond", "#6a1b9a"),
    "failure": Mark("failure", "cross", "#8a1c1c"),
}
OTHER = Mark("other event", "circle", "#8a90a0")
#: Lanes in this order; any other kind comes after "evidence", before "failure".
LANE_ORDER = ("fault", "alert", "health", "steady", "evidence")
LANE_NAMES = {"fault": "faults", "alert": "alerts", "health": "health checks",
              "steady": "steady state", "evidence": "evidence", "failure": "failure"}  # fmt: skip
BARS = {
    "ok": ("step ok", "#4c7bd9"),
    "failed": ("step failed", "#d04848"),
    "skipped": ("step skipped", "#b9b29a"),
    "running": ("step unfinished", "#9aa3b5"),
    "rollback": ("rollback", "#d99a3c"),
}


@dataclass(frozen=True)
class Lane:
    y: float
    label: str
    title: str


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    color: str
    title: str
    text: str
    text_x: float


@dataclass(frozen=True)
class MarkPoint:
    path: str
    color: str
    kind: str
    title: str


@dataclass(frozen=True)
class Band:
    x: float
    width: float
    title: str


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class LegendItem:
    label: str
    path: str
    color: str
    bar: bool = False
    opacity: float = 1.0


@dataclass
class Timeline:
    width: int = WIDTH
    height: float = AXIS_H
    plot_x0: float = LABEL_W + 10
    plot_x1: float = WIDTH - RIGHT_W
    total_s: float = 0.0
    ticks: list[Tick] = field(default_factory=list)
    lanes: list[Lane] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    marks: list[MarkPoint] = field(default_factory=list)
    bands: list[Band] = field(default_factory=list)
    legend: list[LegendItem] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.bars or self.marks)


parse = parse_stamp  # one reading of a journal's times (resilience.runs.html)


def shape(kind: str, x: float, y: float, r: float = MARK_R) -> str:
    """The SVG path of a mark of ``kind`` (down, up, circle, square, diamond, cross) at x, y."""
    d = {
        "down": f"M{x - r:.1f},{y - r:.1f}L{x + r:.1f},{y - r:.1f}L{x:.1f},{y + r:.1f}Z",
        "up": f"M{x - r:.1f},{y + r:.1f}L{x + r:.1f},{y + r:.1f}L{x:.1f},{y - r:.1f}Z",
        "square": f"M{x - r * 0.8:.1f},{y - r * 0.8:.1f}h{r * 1.6:.1f}v{r * 1.6:.1f}"
        f"h{-r * 1.6:.1f}Z",
        "diamond": f"M{x:.1f},{y - r:.1f}L{x + r:.1f},{y:.1f}L{x:.1f},{y + r:.1f}"
        f"L{x - r:.1f},{y:.1f}Z",
        "cross": f"M{x - r:.1f},{y - r:.1f}L{x + r:.1f},{y + r:.1f}"
        f"M{x + r:.1f},{y - r:.1f}L{x - r:.1f},{y + r:.1f}",
    }
    return d.get(kind, f"M{x - r:.1f},{y:.1f}a{r},{r} 0 1,0 {2 * r},0a{r},{r} 0 1,0 {-2 * r},0Z")


def nice_step(total: float, ticks: int = 8) -> float:
    """A round tick interval (1, 2 or 5 times a power of ten) giving about ``ticks`` ticks."""
    raw = max(total, 1e-3) / ticks
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return float(next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw))


def tick_label(seconds: float, step: float) -> str:
    if step < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds >= 120 and step >= 10:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _is_removal(event: Mapping[str, Any]) -> bool:
    kind = str(event.get("kind", ""))
    message = str(event.get("message", "")).strip().lower()
    return kind == REMOVED or (kind == "fault" and message.startswith("removed"))


def _short(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def build(journal: Mapping[str, Any]) -> Timeline:
    """The timeline of one journal dict (as :meth:`Journal.to_dict` returns it)."""
    steps = [*journal.get("steps", []), *journal.get("rollbacks", [])]
    events = [dict(e) for e in journal.get("events", [])]
    states = journal.get("steady_states") or {}
    for phase in ("before", "after"):
        at = (states.get(phase) or {}).get("at")
        if at:
            events.append({"at": at, "kind": "steady", "message": f"steady state {phase}"})
    for event in events:
        if _is_removal(event):
            event["kind"] = REMOVED
    stamps = [parse(journal.get("started_at")), parse(journal.get("ended_at"))]
    stamps += [parse(s.get("started_at")) for s in steps] + [
        parse(s.get("ended_at")) for s in steps
    ]
    stamps += [parse(e.get("at")) for e in events]
    known = [s for s in stamps if s is not None]
    t = Timeline()
    if not known:
        return t
    start = parse(journal.get("started_at")) or min(known)
    t.total_s = max(1e-3, (max(known) - start).total_seconds())
    scale = (t.plot_x1 - t.plot_x0) / t.total_s

    def x_of(stamp: Any) -> float | None:
        at = parse(stamp)
        if at is None:
            return None
        return t.plot_x0 + max(0.0, (at - start).total_seconds()) * scale

    # lanes: one per kind of event present
    kinds = {("fault" if e["kind"] == REMOVED else str(e["kind"])) for e in events}
    others = sorted(k for k in kinds if k not in LANE_ORDER and k != "failure")
    order = (
        [k for k in LANE_ORDER if k in kinds] + others + (["failure"] if "failure" in kinds else [])
    )
    lane_y: dict[str, float] = {}
    y = AXIS_H
    for kind in order:
        name = LANE_NAMES.get(kind, kind)
        lane_y[kind] = y + ROW_H / 2
        t.lanes.append(Lane(y + ROW_H / 2, _short(name), name))
        y += ROW_H
    for event in events:
        kind = str(event["kind"])
        x = x_of(event.get("at"))
        if x is None:
            continue
        mark = MARKS.get(kind, OTHER)
        offset = (parse(event["at"]) - start).total_seconds()  # type: ignore[operator]
        title = f"+{offset:.3f} s {kind}: {event.get('message', '')}"
        lane = lane_y["fault" if kind == REMOVED else kind]
        t.marks.append(MarkPoint(shape(mark.shape, x, lane), mark.color, kind, title))
    # steps and rollbacks
    for record in steps:
        x = x_of(record.get("started_at"))
        status = str(record.get("status", ""))
        kind = str(record.get("kind", "step"))
        name = str(record.get("name", ""))
        label = ("↺ " if kind == "rollback" else "") + name
        t.lanes.append(Lane(y + ROW_H / 2, _short(label), label))
        if x is not None:
            end = x_of(record.get("ended_at"))
            duration = record.get("duration_s")
            if isinstance(duration, int | float):
                width = float(duration) * scale
            elif end is not None:
                width = end - x
            else:  # still running when the journal was written
                width = t.plot_x1 - x
            width = max(2.0, min(width, t.plot_x1 - x + 2))
            key = "rollback" if kind == "rollback" and status != "failed" else status
            color = BARS.get(key, BARS["running"])[1]
            shown = format_duration(duration)
            offset = (x - t.plot_x0) / scale
            t.bars.append(
                Bar(x, y + 4, width, color, f"{label}: {status}, +{offset:.3f} s, {shown}",
                    shown, x + width + 4)
            )  # fmt: skip
        y += ROW_H
    # fault windows: each removal closes the earliest open fault
    open_faults: list[tuple[float, str]] = []
    for event in sorted(events, key=lambda e: str(e.get("at", ""))):
        x = x_of(event.get("at"))
        if x is None:
            continue
        if event["kind"] == "fault":
            open_faults.append((x, str(event.get("message", ""))))
        elif event["kind"] == REMOVED and open_faults:
            began, message = open_faults.pop(0)
            seconds = (x - began) / scale
            t.bands.append(
                Band(began, max(1.0, x - began), f"fault window {seconds:.3f} s: {message}")
            )
    t.height = y + 6
    step = nice_step(t.total_s)
    count = int(t.total_s / step + 1e-9)
    t.ticks = [
        Tick(t.plot_x0 + i * step * scale, tick_label(i * step, step)) for i in range(count + 1)
    ]
    # legend: what this timeline shows
    present = {m.kind for m in t.marks}
    for kind, mark in MARKS.items():
        if kind in present:
            t.legend.append(LegendItem(mark.label, shape(mark.shape, 8, 8), mark.color))
    if present - set(MARKS):
        names = ", ".join(sorted(present - set(MARKS)))
        t.legend.append(LegendItem(f"other ({names})", shape(OTHER.shape, 8, 8), OTHER.color))
    used = {b.color for b in t.bars}
    for label, color in BARS.values():
        if color in used:
            t.legend.append(LegendItem(label, "M1,4h14v8h-14Z", color, bar=True))
    if t.bands:
        t.legend.append(LegendItem("fault window", "M1,1h14v14h-14Z", "#c62828", True, 0.15))
    return t
