"""The drill report from synthetic journals (no stack): the page's SVG timeline, the targets
table with met and missed rows, no external asset, no secret; the history and the index's
trend; and the page in headless Chromium, rendered with nothing on its console."""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from resilience.drill import browser
from resilience.drill.report import DrillReport
from resilience.drill.reporting import console, history, targets, timeline
from resilience.errors import StackError
from resilience.runs.journal import Journal

SECRET = "s3cr3t-Pa55word"
DSN = f"postgresql://drill:{SECRET}@127.0.0.1:1/auth"  # port 1: nothing listens
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
EXTERNAL = re.compile(r"""\b(?:src|href|action)\s*=\s*["']?\s*(?:[a-z]+:)?//""", re.I)


def _at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def _step(name: str, start: float, duration: float, status: str = "ok", kind: str = "step"):
    return {
        "name": name,
        "kind": kind,
        "status": status,
        "started_at": _at(start),
        "ended_at": _at(start + duration),
        "duration_s": duration,
        "details": {"target": DSN},
    }


def _event(at: float, kind: str, message: str, **data: Any) -> dict[str, Any]:
    return {"at": _at(at), "kind": kind, "message": message, "data": data}


def fallback_journal(rto_s: float) -> dict[str, Any]:
    """A scenario as the rollback drill journals it: a fault, a switch, an alert, a removal."""
    return {
        "title": "a) proxy disabled: fallback from snapshot",
        "run_id": "run-a",
        "status": "completed",
        "deviated": False,
        "started_at": _at(0),
        "ended_at": _at(61),
        "duration_s": 61.0,
        "steady_states": {
            "before": {"at": _at(0.5), "data": {"mode": "postgres", "keys": 1313}},
            "after": {"at": _at(55), "data": {"mode": "file", "keys": 1313}},
        },
        "steps": [
            _step("take snapshot", 1, 2),
            _step("restore.to-files", 5, 40),
            _step("verify", 46, 8, status="failed"),
        ],
        "rollbacks": [_step("back to postgres", 55, 5, kind="rollback")],
        "events": [
            _event(4, "fault", "injected proxy-disabled"),
            _event(20, "alert", "Telegram page received"),
            _event(30, "health", "service healthy in file mode", dsn=DSN),
            _event(45, "fault", "removed"),
            _event(50, "evidence", "status page screenshot"),
            _event(52, "switch", f"restore.to-files via {DSN}"),
        ],
        "measurements": {
            "rto_s": rto_s,
            "rto_limit_s": 600.0,
            "loss_window_keys": 3,
            "loss_window_keys_max": 0,
            "snapshot_digest": "abc123",
            "targets": {
                "alerts received": targets.target(["fired", "resolved"], ["fired", "resolved"]),
            },
        },
    }


def build_report(reports: Path, rto_s: float = 42.5) -> DrillReport:
    report = DrillReport("synthetic", reports, backend="local")
    journal = Journal.from_dict(fallback_journal(rto_s))
    journal.register_secret(DSN)
    report.journals.append(journal)
    with pytest.raises(RuntimeError), report.scenario("b) a scenario that fails", DSN) as failing:
        with failing.step("inject"):
            failing.event("fault", f"latency toxic, password {SECRET}")
        raise RuntimeError("the service did not come back")
    return report


class Tags(HTMLParser):
    """Every start tag with its attributes, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def having(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        return [
            a
            for t, a in self.tags
            if t == tag and all(v in a.get(k.rstrip("_"), "").split() for k, v in attrs.items())
        ]


def _tags(page: str) -> Tags:
    parser = Tags()
    parser.feed(page)
    return parser


@pytest.fixture
def written(tmp_path: Path) -> tuple[DrillReport, Path, Path]:
    report = build_report(tmp_path / "reports")
    json_path, html_path = report.write()
    return report, json_path, html_path


# --- the page -----------------------------------------------------------------------------------
def test_the_page_has_an_svg_timeline_with_marks_by_kind_and_a_legend(
    written: tuple[DrillReport, Path, Path],
) -> None:
    _, _, html_path = written
    page = html_path.read_text()
    tags = _tags(page)
    assert len(tags.having("svg", class_="timeline")) == 2  # one per scenario
    for kind in ("fault", "fault_removed", "alert", "health", "evidence", "steady", "switch"):
        assert tags.having("path", class_=f"mark-{kind}"), kind
    assert len(tags.having("g", class_="bar")) == 4 + 1  # 3 steps and a rollback; 1 step in b
    assert len(tags.having("rect", class_="fault-window")) == 1  # injected at 4 s, removed at 45
    for label in ("fault injected", "fault removed", "alert received", "health check",
                  "evidence", "other (switch)", "undo step", "fault window"):  # fmt: skip
        assert f"</svg>{label}</span>" in page, label


def test_the_targets_table_shows_met_and_missed(written: tuple[DrillReport, Path, Path]) -> None:
    _, json_path, html_path = written
    tags = _tags(html_path.read_text())
    assert len(tags.having("table", class_="targets")) == 1  # scenario b states none
    assert len(tags.having("tr", class_="met")) == 2  # RTO, alerts
    assert len(tags.having("tr", class_="missed")) == 1  # loss window
    page = html_path.read_text()
    assert re.search(r"<td>rto_s</td><td class=\"num\">≤ 600 s</td>"
                     r"<td class=\"num\">42.5 s</td>", page)  # fmt: skip
    data = json.loads(json_path.read_text())
    rows = {r["name"]: r for r in data["targets"]["a) proxy disabled: fallback from snapshot"]}
    assert rows["rto_s"]["met"] is True and rows["loss_window_keys"]["met"] is False
    assert data["status"] == "failed"
    assert [s["status"] for s in data["scenarios"]] == ["completed", "failed"]


def test_the_page_is_self_contained_and_holds_no_secret(
    written: tuple[DrillReport, Path, Path],
) -> None:
    report, json_path, html_path = written
    outputs = [p for p in report.reports_dir.rglob("*") if p.is_file()]
    assert {p.name for p in outputs} >= {"drill-synthetic.html", "index.html", "history.jsonl"}
    for path in outputs:
        text = path.read_text()
        assert SECRET not in text, path.name
        if path.suffix == ".html":
            assert not EXTERNAL.search(text), path.name
            assert "@import" not in text and "url(" not in text and "<script" not in text
            assert "default-src 'none'" in html.unescape(text)  # the browser refuses the rest
    page = html_path.read_text()
    assert "restore.to-files via ***" in page  # a registered DSN is hidden whole
    assert "latency toxic, password ***" in page  # and its password wherever it appears
    env = json.loads(json_path.read_text())["environment"]
    assert set(env) == {"python", "os", "backend", "postgresql", "git commit"}
    assert env["backend"] == "local" and env["postgresql"] == "unknown"  # nothing on port 1
    assert env["python"].split()[-1].count(".") == 2
    assert not list(report.reports_dir.rglob("*.tmp*"))  # atomic writes left nothing behind


# --- history and index --------------------------------------------------------------------------
def test_every_write_appends_the_history_and_the_index_draws_the_rto_trend(
    tmp_path: Path,
) -> None:
    reports = tmp_path / "reports"
    for rto in (42.5, 35.0, 51.25):
        build_report(reports, rto).write()
    lines = (reports / "history.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["drill"] for e in entries] == ["synthetic"] * 3
    assert [e["scenarios"][0]["rto_s"] for e in entries] == [42.5, 35.0, 51.25]
    assert all(e["status"] == "failed" and (reports / e["report"]).is_file() for e in entries)
    assert entries[0]["report"] != entries[1]["report"]  # each run keeps its own page

    index = (reports / "index.html").read_text()
    tags = _tags(index)
    [chart] = tags.having("svg", class_="trend")
    assert "RTO" in chart["aria-label"]
    [line] = tags.having("polyline")
    assert len(line["points"].split()) == 3
    assert len(tags.having("circle")) == 3
    assert "target ≤ 600 s (above the chart)" in index  # 600 s would flatten 35-51 s
    runs = [a["href"] for a in tags.having("a") if a["href"].startswith("archive/")]
    assert runs == [e["report"] for e in reversed(entries)]  # newest first
    assert not EXTERNAL.search(index) and SECRET not in index


def test_a_drill_without_rto_trends_its_duration_and_links_its_junit(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    report = DrillReport("quiet", reports)
    with report.scenario("d) quiet window") as journal:
        journal.finish("completed", deviated=False, measurements={"quiet_s": 16.0})
    report.write()
    (reports / "junit-quiet.xml").write_text("<testsuites/>")
    report.write()
    index = (reports / "index.html").read_text()
    assert 'aria-label="duration trend of quiet"' in index
    assert 'href="junit-quiet.xml"' in index and 'href="drill-quiet.html"' in index


def test_a_damaged_history_line_is_skipped(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "history.jsonl").write_text('{"drill": "old", "at": "x"}\n{torn')
    build_report(reports).write()
    assert [e["drill"] for e in history.read(reports)] == ["old", "synthetic"]


# --- targets and timeline rules -----------------------------------------------------------------
def test_target_conventions() -> None:
    rows, used = targets.evaluate(
        {
            "rto_s": 12.0,
            "rto_limit_s": 600,
            "restore_s": 2000.0,
            "restore_target_s": 1800,
            "waiting": 7,
            "waiting_min": 6,
            "keys": 1312,
            "keys_expected": 1313,
            "max_lag_s": 3.0,
            "max_lag_limit_s": 5,  # the last target word wins: limit of max_lag_s
            "lock_wait_limit_ms": 500,  # no lock_wait_ms measured: a plain measurement
            "targets": {
                "pages": {"target": 1, "measured": 2, "op": "=="},
                "told": {"target": "< 10 min", "measured": "4 min", "met": True},
                "rpo": {"target": 3600, "measured": None},
            },
        }
    )
    verdicts = {r.name: r.verdict for r in rows}
    assert verdicts == {
        "rto_s": "met",
        "restore_s": "missed",
        "waiting": "met",
        "keys": "missed",
        "max_lag_s": "met",
        "pages": "missed",
        "told": "met",
        "rpo": "unknown",
    }
    assert "lock_wait_limit_ms" not in used and "targets" in used
    shown = {r.name: (r.target_shown, r.measured_shown) for r in rows}
    assert shown["rto_s"] == ("≤ 600 s", "12 s")
    assert shown["waiting"] == ("≥ 6", "7")
    assert shown["keys"] == ("= 1,313", "1,312")
    assert shown["told"] == ("< 10 min", "4 min")
    with pytest.raises(ValueError):
        targets.target(1, 2, op="~")


def test_the_timeline_shades_each_fault_until_its_removal() -> None:
    journal = fallback_journal(40.0)
    journal["events"] += [
        _event(47, "fault_removed", "nothing open: ignored"),
        _event(56, "fault", "second fault, never removed"),
    ]
    t = timeline.build(journal)
    [band] = t.bands
    scale = (t.plot_x1 - t.plot_x0) / t.total_s
    assert band.x == pytest.approx(t.plot_x0 + 4 * scale)
    assert band.width == pytest.approx(41 * scale)
    assert [m.kind for m in t.marks].count("fault") == 2
    assert [tick.label for tick in t.ticks][:3] == ["0 s", "10 s", "20 s"]
    assert timeline.build({"title": "empty"}).empty


def test_console_lines_are_parsed_from_chromium_stderr() -> None:
    stderr = (
        "[1:1:0101/000000.1:ERROR:dbus/bus.cc:405] Failed to connect to the bus\n"
        '[1:1:0101/000000.2:INFO:CONSOLE:3] "Uncaught TypeError: x", source: file:///a.html (3)\n'
        '[1:1:0101/000000.3:INFO:CONSOLE(7)] "two\nlines", source: http://h/p (7)'
        "/usr/bin/chromium: 9: [: unexpected operator\n"
    )
    found = console.console_messages(stderr)
    assert [(m.message, m.source, m.line) for m in found] == [
        ("Uncaught TypeError: x", "file:///a.html", 3),
        ("two\nlines", "http://h/p", 7),
    ]


# --- in a real browser --------------------------------------------------------------------------
def _have_chromium() -> bool:
    try:
        browser.find_chromium()
    except StackError:
        return False
    return True


chromium = pytest.mark.skipif(not _have_chromium(), reason="needs Chromium (./run)")


@chromium
def test_the_report_renders_in_chromium_with_nothing_on_the_console(
    written: tuple[DrillReport, Path, Path],
) -> None:
    report, _, html_path = written
    shown = console.render_with_console(console.file_url(html_path))
    assert shown.console == []
    dom = _tags(shown.dom)
    assert len(dom.having("svg", class_="timeline")) == 2
    assert dom.having("g", class_="bar") and dom.having("path", class_="mark-fault")
    assert len(dom.having("table", class_="targets")) == 1
    assert dom.having("tr", class_="missed")
    index = console.render_with_console(console.file_url(report.reports_dir / "index.html"))
    assert index.console == []
    assert _tags(index.dom).having("svg", class_="trend")


@chromium
def test_the_console_check_sees_what_the_policy_blocks(tmp_path: Path) -> None:
    """The control: the reports' policy turns an external asset into a console message."""
    page = tmp_path / "leaky.html"
    page.write_text(
        "<!doctype html><html><head><meta http-equiv='Content-Security-Policy' "
        "content=\"default-src 'none'\"></head><body><svg></svg>"
        "<img src='http://example.invalid/x.png'></body></html>"
    )
    shown = console.render_with_console(console.file_url(page))
    assert "<svg>" in shown.dom
    assert any("example.invalid" in m.message for m in shown.console)


# --- a switch's steps, the loss window, the steady state, the run records -------------------------
def switch_run(start: float, command: str = "restore.to-files", failed: bool = False):
    """A switch's own journal (its run record): a preflight, steps, and on failure undo steps."""
    names = ["stop-service", "export", "code", "env", "start-service", "verify"]
    steps = [_step(n, start + 0.3 + i, 0.8) for i, n in enumerate(names)]
    for s in steps:
        s["details"] = {"key_count": 1313, "merge": {"written": {"count": 3, "first": ["a"]}},
                        "log_lines": ["x", "y"]}  # fmt: skip
    rollbacks = []
    if failed:
        steps[-1]["status"] = "failed"
        rollbacks = [_step(f"undo {n}", start + 7 + i, 0.5, kind="rollback") for i, n in
                     enumerate(reversed(names[:-1]))]  # fmt: skip
    return {
        "title": f"{command} demo",
        "run_id": f"run-{command}-{start}",
        "status": "failed" if failed else "completed",
        "started_at": _at(start),
        "ended_at": _at(start + 10),
        "duration_s": 10.0,
        "steps": steps,
        "rollbacks": rollbacks,
        "events": [_event(start + 0.25, "preflight", "to-files preflight")],
        "measurements": {} if failed else {"rto_s": 6.1, "duration_s": 6.2},
    }


def switch_scenario(tmp_path: Path) -> Journal:
    from resilience.drill.switches import record_switch

    journal = Journal("a) proxy disabled: fallback from snapshot")
    journal.start()
    journal.started_at = _at(0)
    journal.steady_states["before"] = {
        "at": _at(0.1),
        "data": {
            "mode": "postgres",
            "company": "demo",
            "key_count": 1313,
            "digest": "aa",
            "writes_ok": 3,
        },
    }
    journal.events.append(Journal.from_dict({"title": "x", "run_id": "x", "events": [
        _event(0.5, "snapshot", "snapshot taken", taken_at=_at(0.4))]}).events[0])  # fmt: skip
    journal.events.append(Journal.from_dict({"title": "x", "run_id": "x", "events": [
        _event(1, "fault", "injected proxy-disabled")]}).events[0])  # fmt: skip
    record = tmp_path / "tmp-runs" / "20250301T120001Z-restore-to-files-demo-abc123"
    record.mkdir(parents=True)
    run = switch_run(1.5)
    (record / "journal.json").write_text(json.dumps(run))
    (record / "journal.html").write_text("<!doctype html><title>run</title>")
    record_switch(journal, run, record=record, rto_s=6.1)
    journal.events[-1].at = _at(8)
    journal.events.append(Journal.from_dict({"title": "x", "run_id": "x", "events": [
        _event(9, "fault-removed", "proxy enabled")]}).events[0])  # fmt: skip
    record_switch(journal, switch_run(12, "restore.to-postgres", failed=True))
    journal.events[-1].at = _at(22)
    journal.steady_state("after", {"mode": "file", "company": "demo", "key_count": 1315,
                                   "digest": "bb", "writes_ok": 9})  # fmt: skip
    journal.steady_states["after"]["at"] = _at(23)
    journal.finish("completed", deviated=False, measurements={
        "rto_s": 6.1, "rto_limit_s": 600, "exit_codes": [0, 7],
        "undone": [["start-service", "ok"], ["env", "ok"]],
        "loss_window_keys": 3, "loss_window": ["session/1.0", "session/2.0", "pre-key/7"],
        "keys_lost_after_way_back": 0, "keys_lost_after_way_back_max": 0})  # fmt: skip
    journal.ended_at = _at(24)
    return journal


RAW_ARRAY = re.compile(r"""\[\s*(?:\[|"|'|-?\d)""")


def test_a_switch_is_drawn_step_by_step_with_its_rto_and_undo_steps(tmp_path: Path) -> None:
    journal = switch_scenario(tmp_path)
    data = journal.to_dict()
    assert len(data["steps"]) == 7 + 7 and len(data["rollbacks"]) == 5  # preflight + 6, twice
    t = timeline.build(data)
    groups = [lane.title for lane in t.lanes if lane.group]
    assert groups == ["restore.to-files", "restore.to-postgres"]
    [span] = t.spans  # the failed switch has no RTO
    scale = (t.plot_x1 - t.plot_x0) / t.total_s
    assert span.x == pytest.approx(t.plot_x0 + 1.5 * scale)
    assert span.width == pytest.approx(6.1 * scale) and span.text == "RTO 6.10 s"
    colours = [b.color for b in t.bars]
    assert colours.count(timeline.BARS["rollback"][1]) == 5
    assert colours.count(timeline.BARS["failed"][1]) == 1
    [band] = t.bands  # a fault-removed event closes the window
    assert band.width == pytest.approx(8 * scale)
    assert "switch" not in {m.kind for m in t.marks}  # drawn as its group, not as a dot
    lanes = [lane.title for lane in t.lanes]
    assert lanes.index("restore.to-postgres") > lanes.index("verify") > lanes.index("preflight")


def test_the_page_reads_without_raw_json_and_links_run_records_copied_beside_it(
    tmp_path: Path,
) -> None:
    reports = tmp_path / "reports"
    report = DrillReport("rollback", reports)
    report.journals.append(switch_scenario(tmp_path))
    json_path, html_path = report.write()
    page = html_path.read_text()
    tags = _tags(page)
    assert len(tags.having("g", class_="bar")) == 7 + 7 + 5
    assert len(tags.having("g", class_="rto")) == 1
    assert "Steps and rollbacks (14 + 5)" in page
    text = re.sub(r"<[^>]+>", " ", page.split("<body>", 1)[1])
    assert not RAW_ARRAY.search(html.unescape(text)), RAW_ARRAY.search(html.unescape(text))
    # the run record: copied beside the report, linked relatively, also from the archive
    copied = reports / "runs" / "20250301T120001Z-restore-to-files-demo-abc123"
    assert (copied / "journal.json").is_file() and (copied / "journal.html").is_file()
    links = {a["href"] for a in tags.having("a", class_="record")}
    assert links == {f"runs/{copied.name}/journal.html"}
    assert str(tmp_path) not in page
    data = json.loads(json_path.read_text())
    switch = next(e for e in data["scenarios"][0]["events"] if e["kind"] == "switch")
    assert switch["data"]["record"] == f"runs/{copied.name}"
    [archived] = (reports / "archive").glob("*.html")
    assert f'href="../runs/{copied.name}/journal.html"' in archived.read_text()
    # the loss window: counted by type, its span, the ids folded
    assert "<b>3 keys</b> at risk" in page and "(12:00:00.400 UTC)" in page
    assert '<td>session</td><td class="num">2</td>' in page
    assert "<details><summary>the 3 key ids</summary>" in page


def test_the_steady_state_tells_expected_changes_from_deviations(tmp_path: Path) -> None:
    from resilience.drill.reporting import steady

    data = switch_scenario(tmp_path).to_dict()
    judged = steady.judge(data)
    verdicts = {p.key: p.verdict for p in judged.probes}
    # the last switch (to-postgres) was undone: the mode should have stayed where to-files put it
    assert verdicts == {"mode": "expected", "company": "unchanged", "key_count": "expected",
                        "digest": "expected", "writes_ok": "expected"}  # fmt: skip
    assert judged.verdict == "held" and judged.label == "steady state held"
    data["steady_states"]["after"]["data"]["mode"] = "postgres"
    data["steady_states"]["after"]["data"]["writes_ok"] = 0
    data["steady_states"]["before"]["data"]["writes_ok"] = 0
    judged = steady.judge(data)
    verdicts = {p.key: p.verdict for p in judged.probes}
    assert verdicts["mode"] == "deviated" and verdicts["key_count"] == "deviated"
    assert judged.verdict == "deviated"
    data["steady_states"]["after"]["data"] = {"mode": "file", "alerts": 2}
    data["steady_states"]["before"]["data"] = {"mode": "postgres", "alerts": 0}
    assert steady.judge(data).label == "steady state: 1 change not judged"


@chromium
def test_the_rollback_report_in_chromium_has_step_bars_in_each_scenario_and_no_raw_json(
    tmp_path: Path,
) -> None:
    reports = tmp_path / "reports"
    report = DrillReport("rollback", reports)
    report.journals.append(switch_scenario(tmp_path))
    second = switch_scenario(tmp_path / "b").to_dict()
    second["title"] = "d) round trip: files and back to PostgreSQL"
    report.journals.append(Journal.from_dict(second))
    _, html_path = report.write()
    shown = console.render_with_console(console.file_url(html_path))
    assert shown.console == []
    sections = shown.dom.split('class="scenario"')[1:]
    assert len(sections) == 2
    for section in sections:
        assert len(_tags(section).having("g", class_="bar")) == 19
        assert _tags(section).having("g", class_="rto")
    body = html.unescape(re.sub(r"<[^>]+>", " ", shown.dom.split("<body>", 1)[1]))
    assert not RAW_ARRAY.search(body)
