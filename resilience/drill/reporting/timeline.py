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

The steps of a switch the drill ran (:mod:`resilience.drill.switches`: records whose details
carry ``switch`` and ``switch_run``) are drawn together under a row of their own named after
the command, which marks the switch's RTO (its ``switch`` event's ``rto_s`` from the switch's
start) as a bracket; its undo steps are bars in their own colour. That ``switch`` event is not
drawn again in a lane of its own. A ``fault-removed`` event ends a fault's window like
``fault_removed``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
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
REMOVED_KINDS = (REMOVED, "fault-removed")
#: Step details naming the switch a step belongs to (resilience.drill.switches).
GROUP, GROUP_RUN, SWITCH_EVENT = "switch", "switch_run", "switch"
RTO_COLOR = "#1d2330"


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
    "rollback": ("undo step", "#d99a3c"),
}


@dataclass(frozen=True)
class Lane:
    y: float
    label: str
    title: str
    group: bool = False  # the header row of a switch's steps


@dataclass(frozen=True)
class Span:
    """A switch's RTO: a bracket from its start, with its text after it."""

    x: float
    y: float
    width: float
    title: str
    text: str
    text_x: float


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
    spans: list[Span] = field(default_factory=list)
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
    return kind in REMOVED_KINDS or (kind == "fault" and message.startswith("removed"))


def _short(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def group_of(record: Mapping[str, Any]) -> tuple[str, str] | None:
    """(command, run id) of the switch a step belongs to, else None."""
    details = record.get("details") or {}
    if isinstance(details, Mapping) and details.get(GROUP_RUN) and details.get(GROUP):
        return str(details[GROUP]), str(details[GROUP_RUN])
    return None


def ordered(records: list[Mapping[str, Any]]) -> list[tuple[str, Any]]:
    """Rows in order: a switch's header (``("group", (command, run id))``) before its steps and
    undo steps (``("record", record)``, by start); any other record where it was journaled."""
    rows: list[tuple[str, Any]] = []
    members: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        group = group_of(record)
        if group is None:
            rows.append(("record", record))
        elif group[1] not in members:
            members[group[1]] = [record]
            rows.append(("group", group))
        else:
            members[group[1]].append(record)
    out: list[tuple[str, Any]] = []
    for kind, item in rows:
        out.append((kind, item))
        if kind == "group":
            chosen = sorted(members[item[1]], key=lambda r: str(r.get("started_at") or ""))
            out += [("record", r) for r in chosen]
    return out


def build(journal: Mapping[str, Any]) -> Timeline:
    """The timeline of one journal dict (as :meth:`Journal.to_dict` returns it)."""
    steps = [*journal.get("steps", []), *journal.get("rollbacks", [])]
    switches = _switch_events(journal, steps)
    events = _events(journal, switches)
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
    clock = _Clock(start, t.plot_x0, (t.plot_x1 - t.plot_x0) / t.total_s)
    y = _event_lanes(t, events, clock)
    y = _step_rows(t, steps, switches, clock, y)
    _fault_windows(t, events, clock)
    t.height = y + 6
    step = nice_step(t.total_s)
    count = int(t.total_s / step + 1e-9)
    t.ticks = [
        Tick(t.plot_x0 + i * step * clock.scale, tick_label(i * step, step))
        for i in range(count + 1)
    ]
    _legend(t)
    return t


@dataclass(frozen=True)
class _Clock:
    """Where a moment falls on the plot: ``x0`` at ``start``, ``scale`` pixels a second."""

    start: datetime
    x0: float
    scale: float

    def x_of(self, stamp: Any) -> float | None:
        at = parse(stamp)
        if at is None:
            return None
        return self.x0 + max(0.0, (at - self.start).total_seconds()) * self.scale


def _switch_events(
    journal: Mapping[str, Any], steps: list[Mapping[str, Any]]
) -> dict[str, Mapping[str, Any]]:
    """The ``switch`` event of each switch whose steps are drawn, by its run id."""
    runs = {g[1] for g in map(group_of, steps) if g is not None}
    return {
        str((e.get("data") or {}).get("run_id")): e
        for e in journal.get("events", [])
        if e.get("kind") == SWITCH_EVENT and str((e.get("data") or {}).get("run_id")) in runs
    }


def _events(
    journal: Mapping[str, Any], switches: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The events drawn as marks: the journal's (a drawn switch's own left out), the steady
    state probes, every removal of a fault under one kind."""
    events = [
        dict(e)
        for e in journal.get("events", [])
        if not any(e is switch for switch in switches.values())
    ]
    states = journal.get("steady_states") or {}
    for phase in ("before", "after"):
        at = (states.get(phase) or {}).get("at")
        if at:
            events.append({"at": at, "kind": "steady", "message": f"steady state {phase}"})
    for event in events:
        if _is_removal(event):
            event["kind"] = REMOVED
    return events


def _event_lanes(t: Timeline, events: list[dict[str, Any]], clock: _Clock) -> float:
    """One lane per kind of event present, each event a mark in its lane; returns the y below
    the lanes."""
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
        x = clock.x_of(event.get("at"))
        if x is None:
            continue
        mark = MARKS.get(kind, OTHER)
        offset = (parse(event["at"]) - clock.start).total_seconds()  # type: ignore[operator]
        title = f"+{offset:.3f} s {kind}: {event.get('message', '')}"
        lane = lane_y["fault" if kind == REMOVED else kind]
        t.marks.append(MarkPoint(shape(mark.shape, x, lane), mark.color, kind, title))
    return y


def _step_rows(
    t: Timeline,
    steps: list[Mapping[str, Any]],
    switches: Mapping[str, Mapping[str, Any]],
    clock: _Clock,
    y: float,
) -> float:
    """Steps and rollbacks, a switch's under a header row with its RTO; returns the y below."""
    starts: dict[str, list[Any]] = {}
    for record in steps:
        group = group_of(record)
        if group is not None:
            starts.setdefault(group[1], []).append(record.get("started_at"))
    for row, item in ordered(steps):
        if row == "group":
            command, run_id = item
            _switch_header(t, command, switches.get(run_id), starts[run_id], clock, y)
        else:
            _step_bar(t, item, clock, y)
        y += ROW_H
    return y


def _switch_header(
    t: Timeline,
    command: str,
    switch_event: Mapping[str, Any] | None,
    starts: list[Any],
    clock: _Clock,
    y: float,
) -> None:
    """A switch's header row, with its RTO as a bracket from the switch's start."""
    scale = clock.scale
    t.lanes.append(Lane(y + ROW_H / 2, _short(command), command, group=True))
    switch = (switch_event or {}).get("data") or {}
    origins = [x for x in map(clock.x_of, [switch.get("started_at"), *starts]) if x]
    rto = switch.get("rto_s")
    if origins and isinstance(rto, int | float):
        x0 = min(origins)
        width = max(2.0, min(float(rto) * scale, t.plot_x1 - x0 + 2))
        text = f"RTO {format_duration(rto)}"
        t.spans.append(
            Span(x0, y + ROW_H / 2, width, f"{command}: {text} from the switch's start"
                 f" (+{(x0 - t.plot_x0) / scale:.3f} s)", text, x0 + width + 4)
        )  # fmt: skip


def _step_bar(t: Timeline, record: Mapping[str, Any], clock: _Clock, y: float) -> None:
    """A step's (or undo step's) row, with its bar from start to end."""
    scale = clock.scale
    x = clock.x_of(record.get("started_at"))
    status = str(record.get("status", ""))
    kind = str(record.get("kind", "step"))
    name = str(record.get("name", ""))
    label = ("↺ " if kind == "rollback" else "") + name
    if group_of(record) is not None:
        label = "  " + label
    t.lanes.append(Lane(y + ROW_H / 2, _short(label), label.strip()))
    if x is None:
        return
    end = clock.x_of(record.get("ended_at"))
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


def _fault_windows(t: Timeline, events: list[dict[str, Any]], clock: _Clock) -> None:
    """Fault windows: each removal closes the earliest open fault."""
    open_faults: list[tuple[float, str]] = []
    for event in sorted(events, key=lambda e: str(e.get("at", ""))):
        x = clock.x_of(event.get("at"))
        if x is None:
            continue
        if event["kind"] == "fault":
            open_faults.append((x, str(event.get("message", ""))))
        elif event["kind"] == REMOVED and open_faults:
            began, message = open_faults.pop(0)
            seconds = (x - began) / clock.scale
            t.bands.append(
                Band(began, max(1.0, x - began), f"fault window {seconds:.3f} s: {message}")
            )


def _legend(t: Timeline) -> None:
    """The legend: what this timeline shows."""
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
    if t.spans:
        t.legend.append(LegendItem("RTO of a switch", "M1,4v8M1,8h14M15,4v8", RTO_COLOR, False))
