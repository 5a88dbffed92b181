"""The monitor's recent history as charts: inline-SVG geometry for the status page, sparklines
(text) for `health`'s live view.

The monitor keeps one :func:`sample` per cycle in a ring (``RESILIENCE_POOL_SAMPLES``, 360: an
hour at the default 10 s interval), saved with its state so a restart keeps it. Each chart
covers the ring's span up to now; a figure the cycle could not read is a gap, never a zero.
The SVG is hand-written (a template fed by this geometry): no script, no external asset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

WIDTH, HEIGHT = 460, 130
PAD_L, PAD_R, PAD_T, PAD_B = 46, 10, 10, 20
BLOCKS = "▁▂▃▄▅▆▇█"
#: (field, label, colour) of each chart's series; the chart's title, unit and threshold.
CHARTS: tuple[tuple[str, str, tuple[tuple[str, str, str], ...], str], ...] = (
    ("latency", "auth query latency", (("p50", "p50", "#4c7bd9"), ("p95", "p95", "#ef6c00"),
                                        ("p99", "p99", "#c62828")), "ms"),
    ("pool", "pool in use", (("pool_pct", "usage", "#2e7d32"),), "%"),
    ("waiting", "requests waiting for a connection", (("waiting", "waiting", "#6a1b9a"),), ""),
    ("expired", "keys past expiry", (("expired", "past expiry", "#8d6e63"),), ""),
    ("lag", "file mirror lag", (("lag", "lag", "#00838f"),), "s"),
)  # fmt: skip


def sample(now: float, doc: Mapping[str, Any]) -> dict[str, Any]:
    """One history sample of a cycle's health document (short keys: the ring is saved)."""
    latency = doc.get("latency") or {}
    pool = doc.get("pool") or {}
    keys = doc.get("keys") or {}
    mirror = doc.get("mirror") or {}
    return {
        "t": round(now, 3),
        "p50": latency.get("p50_ms"),
        "p95": latency.get("p95_ms"),
        "p99": latency.get("p99_ms"),
        "pool_pct": pool.get("usage_pct"),
        "waiting": pool.get("waiting"),
        "expired": keys.get("past_expiry"),
        "lag": mirror.get("lag_s"),
    }


@dataclass(frozen=True)
class Series:
    name: str
    color: str
    segments: list[str]  # SVG polyline points, one per run of samples without a gap
    last: str


@dataclass
class Chart:
    key: str
    title: str
    unit: str
    width: int = WIDTH
    height: int = HEIGHT
    x0: float = PAD_L
    x1: float = WIDTH - PAD_R
    y0: float = HEIGHT - PAD_B
    series: list[Series] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    limit: tuple[float, str] | None = None
    samples: int = 0

    @property
    def empty(self) -> bool:
        return not any(s.segments for s in self.series)


def _show(value: float, unit: str) -> str:
    text = f"{value:.0f}" if abs(value) >= 10 or value == int(value) else f"{value:.1f}"
    return f"{text} {unit}".strip()


def _nice_top(peak: float) -> float:
    if peak <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(peak))
    return float(next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= peak))


def charts(
    history: Sequence[Mapping[str, Any]],
    now: float,
    span_s: float,
    limits: Mapping[str, float | None] | None = None,
) -> list[Chart]:
    """The charts of the samples in ``[now - span_s, now]``; ``limits`` per chart key (the
    alert thresholds) draw a dashed line when they fit under twice the highest value. The mirror
    lag chart only when a sample has a lag."""
    limits = limits or {}
    since = now - span_s
    x0, x1, y0 = float(PAD_L), float(WIDTH - PAD_R), float(HEIGHT - PAD_B)

    def x_of(t: float) -> float:
        return x0 + (x1 - x0) * (t - since) / max(span_s, 1e-9)

    def y_of(v: float, top: float) -> float:
        return y0 - (y0 - PAD_T) * min(v, top) / top

    recent = [s for s in history if isinstance(s.get("t"), int | float) and s["t"] >= since]
    out = []
    for key, title, fields, unit in CHARTS:
        values = [s.get(f) for s in recent for f, _, _ in fields]
        numbers = [float(v) for v in values if isinstance(v, int | float)]
        if key == "lag" and not numbers:
            continue
        chart = Chart(key, title, unit, samples=len(recent))
        limit = limits.get(key)
        peak = max(numbers, default=0.0)
        drawn = limit is not None and limit <= 2 * max(peak, 1e-9)
        top = _nice_top(max(peak, limit if drawn and limit is not None else 0.0) * 1.1)
        if key == "pool":
            top = 100.0

        for name_key, name, colour in fields:
            segments: list[str] = []
            run: list[str] = []
            last = "n/a"
            for s in recent:
                v = s.get(name_key)
                if isinstance(v, int | float):
                    run.append(f"{x_of(float(s['t'])):.1f},{y_of(float(v), top):.1f}")
                    last = _show(float(v), unit)
                elif run:
                    segments.append(" ".join(run))
                    run = []
            if run:
                segments.append(" ".join(run))
            chart.series.append(Series(name, colour, segments, last))
        chart.y_ticks = [(y_of(top * f, top), _show(top * f, unit)) for f in (0, 0.5, 1)]
        minutes = span_s / 60
        chart.x_ticks = [
            (x_of(since + span_s * f), "now" if f == 1 else f"-{minutes * (1 - f):g} min")
            for f in (0, 0.5, 1)
        ]
        if drawn and limit is not None:
            chart.limit = (y_of(limit, top), f"alert {_show(limit, unit)}")
        out.append(chart)
    return out


def spark(values: Sequence[Any], width: int = 40, top: float | None = None) -> str:
    """The last ``width`` values as a sparkline of block characters (a gap as a space)."""
    shown = list(values)[-width:]
    numbers = [float(v) for v in shown if isinstance(v, int | float)]
    high = top if top is not None else max(numbers, default=0.0)
    out = []
    for v in shown:
        if not isinstance(v, int | float):
            out.append(" ")
        elif high <= 0:
            out.append(BLOCKS[0])
        else:
            out.append(BLOCKS[min(len(BLOCKS) - 1, int(len(BLOCKS) * float(v) / high))])
    return "".join(out)
