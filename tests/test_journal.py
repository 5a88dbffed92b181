"""The drill journal: steps, rollbacks, events, redaction, JSON round trip and the HTML page."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from resilience.errors import DataError, VerificationError
from resilience.runs import Journal, render_html, write_html

SECRET = "tg-bot-token-8421:AAE"
DB_PASSWORD = "pg-pa$$word/42"
DSN = f"postgresql://svc:{DB_PASSWORD.replace('$', '%24').replace('/', '%2F')}@127.0.0.1:5432/app"


def ts(stamp: str) -> datetime:
    parsed = datetime.fromisoformat(stamp)
    assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0
    return parsed


def sample() -> Journal:
    journal = Journal("drill rollback: proxy disabled", run_id="run-1")
    journal.register_secret(SECRET)
    journal.register_secret(DB_PASSWORD)
    journal.start()
    journal.steady_state("before", {"mode": "postgres", "keys": 1313, "digest": "ab12"})
    journal.event("fault", "proxy postgres disabled", proxy="postgres")
    with journal.step("preflight") as step:
        step.details["dsn"] = DSN
    with journal.step("export") as step:
        step.details["keys"] = 1313
    with pytest.raises(VerificationError), journal.step("verify") as step:
        step.details["html"] = "<script>alert(1)</script>"
        raise VerificationError(f"digest differs; token {SECRET} seen")
    with journal.step("code") as step:
        step.skip("no tag configured")
    with journal.rollback("env") as rollback:
        rollback.details["restored"] = ["USE_REPOSITORY_PATTERN"]
    journal.steady_state("after", {"mode": "file", "keys": 1320, "digest": "cd34"})
    journal.finish("failed", deviated=True, measurements={"rto_s": 3.25, "loss_window": [1, 2]})
    return journal


def test_steps_record_status_error_and_details() -> None:
    data = sample().to_dict()
    steps = {step["name"]: step for step in data["steps"]}
    assert [s["name"] for s in data["steps"]] == ["preflight", "export", "verify", "code"]
    assert steps["export"]["status"] == "ok"
    assert steps["export"]["details"] == {"keys": 1313}
    assert steps["verify"]["status"] == "failed"
    assert steps["verify"]["error"].startswith("VerificationError: digest differs")
    assert steps["code"]["status"] == "skipped"
    assert steps["code"]["details"]["reason"] == "no tag configured"
    assert data["rollbacks"][0]["name"] == "env" and data["rollbacks"][0]["status"] == "ok"
    assert data["status"] == "failed" and data["deviated"] is True
    assert data["measurements"] == {"rto_s": 3.25, "loss_window": [1, 2]}
    assert data["steady_states"]["before"]["data"]["keys"] == 1313
    assert data["steady_states"]["after"]["data"]["mode"] == "file"
    assert data["events"][0]["kind"] == "fault"
    assert data["events"][0]["data"] == {"proxy": "postgres"}


def test_timestamps_are_utc_ordered_and_durations_non_negative() -> None:
    data = sample().to_dict()
    start, end = ts(data["started_at"]), ts(data["ended_at"])
    assert start <= end
    assert data["duration_s"] >= 0
    previous_end = start
    for record in [*data["steps"], *data["rollbacks"]]:
        began, ended = ts(record["started_at"]), ts(record["ended_at"])
        assert previous_end <= began <= ended <= end
        assert record["duration_s"] >= 0
        previous_end = ended
    for event in data["events"]:
        assert start <= ts(event["at"]) <= end


def test_failed_step_still_allows_finish_and_second_finish_is_refused() -> None:
    journal = Journal("t")
    with pytest.raises(RuntimeError), journal.step("boom"):
        raise RuntimeError("disk full")
    assert not journal.finished
    journal.finish("aborted", deviated=False, measurements={})
    assert journal.finished
    assert journal.to_dict()["steps"][0]["error"] == "RuntimeError: disk full"
    with pytest.raises(ValueError, match="already finished"):
        journal.finish("completed", deviated=False)


def test_fail_without_raising() -> None:
    journal = Journal("t")
    with journal.step("verify") as step:
        step.fail("health digest ab != manifest cd")
    record = journal.to_dict()["steps"][0]
    assert record["status"] == "failed"
    assert record["error"] == "health digest ab != manifest cd"


def test_json_round_trip(tmp_path: Path) -> None:
    journal = sample()
    path = journal.write_json(tmp_path / "reports" / "drill.json")
    loaded = json.loads(path.read_text())
    assert loaded == journal.to_dict()
    again = Journal.from_dict(loaded)
    assert again.to_dict() == loaded
    assert [p.name for p in path.parent.iterdir()] == ["drill.json"]  # no temp left


def test_from_dict_rejects_garbage() -> None:
    with pytest.raises(DataError, match="not a journal"):
        Journal.from_dict({"steps": []})


def test_secrets_and_dsn_passwords_never_leave(tmp_path: Path) -> None:
    journal = sample()
    journal.event("note", f"connect {DSN} failed; password={DB_PASSWORD}", token=SECRET)
    json_text = journal.write_json(tmp_path / "j.json").read_text()
    html_text = write_html(journal, tmp_path / "j.html").read_text()
    for text in (json_text, html_text):
        assert SECRET not in text
        assert DB_PASSWORD not in text
        assert "pg-pa%24%24word" not in text
        assert "127.0.0.1:5432/app" in text  # the rest of the DSN is kept
        assert "***" in text


def test_secret_registered_late_is_still_redacted() -> None:
    journal = Journal("t")
    journal.event("note", "api key sk-live-123456 used")
    journal.register_secret("sk-live-123456")
    assert "sk-live-123456" not in json.dumps(journal.to_dict())


def test_html_is_self_contained_escaped_and_complete(tmp_path: Path) -> None:
    page = render_html(sample().to_dict())
    for name in ("preflight", "export", "verify", "code", "env"):
        assert f"<td>{name}</td>" in page
    assert "drill rollback: proxy disabled" in page
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "rto_s" in page and "3.25" in page
    assert "deviated" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<link" not in page
    bars = re.findall(r'style="left:([\d.]+)%;width:([\d.]+)%"', page)
    assert len(bars) == 5
    for left, width in bars:
        assert 0 <= float(left) <= 100 and 0 < float(width) <= 100


def test_html_escapes_the_title_and_a_raw_dict_with_a_dsn() -> None:
    journal = Journal("<b>bold</b>")
    journal.event("note", "postgresql://u:hunter2@h/db")
    data = journal.to_dict()
    data["events"][0]["message"] = "postgresql://u:hunter2@h/db"  # as if redaction was bypassed
    page = render_html(data)
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "hunter2" not in page


def test_unfinished_journal_renders() -> None:
    journal = Journal("still running")
    with journal.step("export"):
        pass
    page = render_html(journal.to_dict())
    assert "running" in page
    assert "<td>export</td>" in page


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.0004, "0.40 ms"), (0.042, "42 ms"), (3.5, "3.50 s"), (125, "2 min 5.0 s"), (None, "-")],
)
def test_format_duration(seconds: float | None, shown: str) -> None:
    from resilience.runs.html import format_duration

    assert format_duration(seconds) == shown
