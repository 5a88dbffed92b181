"""The monitor's history: one sample per cycle in a bounded ring kept across restarts, drawn as
inline-SVG charts on the status page (in headless Chromium, nothing on its console) and as
sparklines in `health`'s view. No stack: a monitor with no source still cycles."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from resilience.config import Settings
from resilience.drill import browser
from resilience.drill.reporting import console
from resilience.errors import StackError
from resilience.monitoring import charts
from resilience.monitoring.monitor import Monitor
from resilience.monitoring.server import serve

NOW = 1_700_000_000.0


def _samples(n: int = 360, step: float = 10.0, gap_at: int = 100) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        t = NOW - (n - 1 - i) * step
        up = i != gap_at  # one cycle could not read anything
        out.append(
            {
                "t": t,
                "p50": 4.0 + i % 5 if up else None,
                "p95": 30.0 + i % 7 if up else None,
                "p99": 120.0 + (700 if 200 <= i < 220 else 0) if up else None,
                "pool_pct": 20.0 + (80 if 200 <= i < 220 else 0) if up else None,
                "waiting": 6.0 if 205 <= i < 215 else 0.0,
                "expired": 600 if i >= 300 else 0,
                "lag": None,
            }
        )
    return out


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    values: dict[str, Any] = {"company_id": "demo", "monitor_state_file": tmp_path / "state.json"}
    return Settings.model_validate(values | kw)


def test_charts_cover_the_last_hour_with_gaps_and_thresholds() -> None:
    limits = {"latency": 500.0, "pool": 80.0, "waiting": 5.0, "expired": 100.0, "lag": 5.0}
    drawn = {c.key: c for c in charts.charts(_samples(), NOW, 3600, limits)}
    assert list(drawn) == ["latency", "pool", "waiting", "expired"]  # no mirror: no lag chart
    latency = drawn["latency"]
    assert [s.name for s in latency.series] == ["p50", "p95", "p99"]
    assert all(len(s.segments) == 2 for s in latency.series)  # the unread cycle is a gap
    points = [p for seg in latency.series[2].segments for p in seg.split()]
    assert len(points) == 359
    xs = [float(p.split(",")[0]) for p in points]
    assert xs == sorted(xs) and xs[-1] == pytest.approx(latency.x1)
    assert latency.limit is not None and latency.limit[1] == "alert 500 ms"
    assert drawn["pool"].y_ticks[-1][1] == "100 %"
    assert drawn["expired"].series[0].last == "600"
    old = charts.charts(_samples(), NOW + 7200, 3600, limits)  # nothing in the last hour
    assert all(c.empty for c in old)


def test_sparklines_scale_to_the_highest_value_and_show_gaps() -> None:
    assert charts.spark([0, 4, 8, None, 8], width=5) == "▁▅█ █"
    assert charts.spark([50, 100], top=100) == "▅█"
    assert charts.spark([], width=5) == ""


def test_the_ring_is_bounded_and_kept_across_a_restart(tmp_path: Path) -> None:
    settings = _settings(tmp_path, pool_samples=3)
    monitor = Monitor(settings)
    try:
        for _ in range(5):
            monitor.cycle()
        assert len(monitor.history) == 3
        first = list(monitor.history)
    finally:
        monitor.close()
    again = Monitor(settings)
    try:
        assert list(again.history) == first  # read back from the state file
        again.cycle()
        assert list(again.history)[:2] == first[1:]
    finally:
        again.close()


def test_health_view_shows_the_history_as_sparklines() -> None:
    from rich.console import Console

    from tasks.health import history_view

    out = Console(width=120, record=True, color_system=None)
    out.print(history_view(_samples(60)))
    text = out.export_text()
    assert re.search(r"latency p99\s+│ [▁-█ ]{20,} │ 120 ms", text), text
    assert "keys past expiry" in text and "mirror lag" not in text
    out = Console(width=120, record=True, color_system=None)
    out.print(history_view([]))
    assert "no samples" in out.export_text()


def _have_chromium() -> bool:
    try:
        browser.find_chromium()
    except StackError:
        return False
    return True


@pytest.mark.skipif(not _have_chromium(), reason="needs Chromium (./run)")
def test_the_status_page_draws_its_charts_with_nothing_on_the_console(tmp_path: Path) -> None:
    settings = _settings(tmp_path, monitor_page_refresh=0.5)
    monitor = Monitor(settings, alerting=False, keep_state=False, clock=lambda: NOW)
    monitor.history.extend(_samples())
    server = serve(monitor, "127.0.0.1", 0)
    try:
        monitor.cycle()
        assert (
            len(httpx.get(f"http://127.0.0.1:{server.port}/history.json").json()["samples"]) == 360
        )
        shown = console.render_with_console(f"http://127.0.0.1:{server.port}/", wait_ms=1500)
    finally:
        server.shutdown()
        monitor.close()
    assert shown.console == []
    assert re.search(r'id="refreshes">[1-9]', shown.dom)  # the charts came back with a refresh
    charts_drawn = re.findall(r'<figure class="chart" data-chart="(\w+)"', shown.dom)
    assert charts_drawn == ["latency", "pool", "waiting", "expired"]
    assert len(re.findall(r'<polyline class="series"', shown.dom)) >= 6
    assert shown.dom.count('class="limit"') >= 3
