"""The service contract's health, as the switch verifies it (docs/service-contract.md): mode
values mapped by the settings, company and digest when the health says them, and every bad
answer a clear one-line failure. A real HTTP server stands in for the service's health."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from resilience.config import Settings, load_settings
from resilience.errors import ConfigError, VerificationError
from resilience.restore.verify import LogWatch, verify_service, wait_for_health
from resilience.service.health import mode_of_value, read_health

COMPANY = "acme"


@dataclass
class _Health:
    """A health endpoint answering whatever the test sets."""

    status: int = 200
    body: Any = field(default_factory=lambda: {"mode": "files", "company": COMPANY})
    raw: bytes | None = None  # sent as is instead of the JSON of body

    def __call__(self, environ: Any, start_response: Any) -> Any:
        Request(environ)
        data = self.raw if self.raw is not None else json.dumps(self.body).encode()
        response = Response(data, status=self.status, content_type="application/json")
        return response(environ, start_response)


@pytest.fixture
def health() -> Iterator[tuple[_Health, str]]:
    app = _Health()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield app, f"http://127.0.0.1:{server.port}/health"
    server.shutdown()


def _settings(url: str, **overrides: Any) -> Settings:
    return load_settings(env_file=None, health_url=url, **{"verify_timeout": 0.3, **overrides})


def _wait(url: str, mode: Any, digest: str | None = None, **overrides: Any) -> dict[str, Any]:
    settings = _settings(url, **overrides)
    return wait_for_health(settings, url, mode, COMPANY, digest, settings.verify_timeout)


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        ("file", "file"),
        ("files", "file"),
        ("FileSystem", "file"),
        (" postgres ", "postgres"),
        ("postgresql", "postgres"),
        ("DATABASE", "postgres"),
        ("sqlite", None),
        (1, None),
        (None, None),
    ],
)
def test_the_default_mode_values(value: Any, mode: str | None) -> None:
    assert mode_of_value(load_settings(env_file=None), value) == mode


def test_mode_values_are_settings_validated_and_never_in_both() -> None:
    settings = load_settings(env_file=None, health_file_mode_values="Disk, files,,disk")
    assert settings.health_mode_values["file"] == ("disk", "files")
    assert mode_of_value(settings, "DISK") == "file" and mode_of_value(settings, "file") is None
    with pytest.raises(ConfigError, match="RESILIENCE_HEALTH_FILE_MODE_VALUES") as info:
        load_settings(env_file=None, health_file_mode_values=" , ")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="database in both") as info:
        load_settings(env_file=None, health_file_mode_values="files,database")
    assert "RESILIENCE_HEALTH_POSTGRES_MODE_VALUES" in str(info.value)


def test_a_health_without_digest_verifies_mode_and_company(health: tuple[_Health, str]) -> None:
    app, url = health
    app.body = {"mode": "files", "company": COMPANY}
    got = _wait(url, "file", digest="d" * 64)
    assert got["mode"] == "files" and got["company"] == COMPANY
    assert got["digest_check"] == "not available" and got["loaded_digest"] is None
    app.body = {"mode": "postgres"}  # no company either: the log lines name it
    assert _wait(url, "postgres", digest="d" * 64)["digest_check"] == "not available"
    assert _wait(url, "postgres")["digest_check"] == "not expected"


def test_a_health_with_digest_must_match_it(health: tuple[_Health, str]) -> None:
    app, url = health
    app.body = {"mode": "file", "company": COMPANY, "loaded_digest": "a" * 64}
    assert _wait(url, "file", digest="a" * 64)["digest_check"] == "equal"
    with pytest.raises(VerificationError, match="did not reach mode=file digest=bbbb") as info:
        _wait(url, "file", digest="b" * 64)
    assert "loaded digest aaaaaaaaaaaa" in str(info.value)
    app.body = {"mode": "file", "company": COMPANY, "loaded_digest": None}  # not loaded yet
    with pytest.raises(VerificationError, match="did not reach"):
        _wait(url, "file", digest="a" * 64)


def test_the_other_mode_is_waited_out_then_named(health: tuple[_Health, str]) -> None:
    app, url = health
    app.body = {"mode": "postgresql", "company": COMPANY}
    with pytest.raises(VerificationError) as info:
        _wait(url, "file")
    assert str(info.value).endswith("did not reach mode=file in 0 s: mode 'postgresql'")


@pytest.mark.parametrize(
    ("status", "raw", "body", "problem"),
    [
        (500, None, {"error": "boom"}, "HTTP 500"),
        (200, b"<html>ok</html>", None, "the body is not JSON"),
        (200, None, ["file"], "the body is JSON but not an object (list)"),
        (200, None, {"status": "ok"}, "no 'mode' in the body"),
    ],
)
def test_bad_answers_fail_in_one_line_naming_what_came(
    health: tuple[_Health, str], status: int, raw: bytes | None, body: Any, problem: str
) -> None:
    app, url = health
    app.status, app.raw, app.body = status, raw, body
    with pytest.raises(VerificationError) as info:
        _wait(url, "file")
    message = str(info.value)
    assert message == f"health at {url} did not reach mode=file in 0 s: {problem}"


def test_no_answer_is_named(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/health"  # the discard port: nothing answers HTTP there
    assert read_health(url, timeout=0.2).problem is not None
    with pytest.raises(VerificationError, match="no answer"):
        _wait(url, "file")


def test_an_unknown_mode_value_is_refused_at_once_naming_value_and_settings(
    health: tuple[_Health, str],
) -> None:
    app, url = health
    app.body = {"mode": "sqlite", "company": COMPANY}
    with pytest.raises(VerificationError) as info:
        _wait(url, "file", verify_timeout=600)  # refused, not waited out
    message = str(info.value)
    assert "'sqlite'" in message and "\n" not in message
    assert "RESILIENCE_HEALTH_FILE_MODE_VALUES (file, files, filesystem)" in message
    assert "RESILIENCE_HEALTH_POSTGRES_MODE_VALUES (postgres, postgresql, database)" in message
    # the same value, listed by the operator, is a mode
    assert _wait(url, "file", health_file_mode_values="sqlite")["mode"] == "sqlite"


def test_another_company_is_refused_at_once(health: tuple[_Health, str]) -> None:
    app, url = health
    app.body = {"mode": "files", "company": "globex"}
    with pytest.raises(VerificationError) as info:
        _wait(url, "file", verify_timeout=600)
    assert str(info.value) == (
        f"health at {url} says the service serves company 'globex', not {COMPANY}"
    )


def test_verify_service_with_a_health_without_digest(
    health: tuple[_Health, str], tmp_path: Path
) -> None:
    """What the switch's verify step records for a real service: log lines, then the health's
    mode and company, the digest reported as not available (the switch passes)."""
    _app, url = health  # its default answer: {"mode": "files", "company": COMPANY}
    log = tmp_path / "out.log"
    log.write_text("old lines\n")
    watch = LogWatch(log)
    with log.open("a") as f:
        f.write(f"[auth] using file auth state /srv/a for company {COMPANY}\nconnection open\n")
    details = verify_service(_settings(url), COMPANY, "file", watch, "e" * 64)
    assert len(details["log_lines"]) == 2
    assert details["health"]["mode"] == "files"
    assert details["health"]["digest_check"] == "not available"


# --- empty values --------------------------------------------------------------------------------


def test_an_empty_value_unsets_every_optional_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resilience.config import DrillSettings, load_drill_settings

    optional = [name for name, info in DrillSettings.model_fields.items() if info.default is None]
    assert {"health_url", "metrics_url", "service_dsn", "fallback_tag", "admin_dsn"} <= set(
        optional
    )
    env = tmp_path / "settings.env"
    env.write_text("".join(f"RESILIENCE_{name.upper()}=\n" for name in optional))
    settings = load_drill_settings(env_file=env)
    assert all(getattr(settings, name) is None for name in optional)
    # the case of the issue: the stack's file sets a health URL, an empty variable clears it
    env.write_text("RESILIENCE_HEALTH_URL=http://127.0.0.1:1/health\n")
    assert load_settings(env_file=env).health_url == "http://127.0.0.1:1/health"
    monkeypatch.setenv("RESILIENCE_HEALTH_URL", "")
    assert load_settings(env_file=env).health_url is None
    monkeypatch.setenv("RESILIENCE_HEALTH_URL", "  ")
    assert load_settings(env_file=env).health_url is None
    assert load_settings(env_file=None, sentry_dsn="").sentry_dsn is None  # a flag too


def test_an_empty_value_of_a_setting_with_a_value_is_still_refused() -> None:
    with pytest.raises(ConfigError, match="RESILIENCE_COMPANY_ID"):
        load_settings(env_file=None, company_id="")
    with pytest.raises(ConfigError, match="RESILIENCE_DB_BUFFER_FORM"):
        load_settings(env_file=None, db_buffer_form="")


def test_a_buffer_form_it_does_not_know_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RESILIENCE_DB_BUFFER_FORM", "hex")
    with pytest.raises(ConfigError, match="RESILIENCE_DB_BUFFER_FORM") as info:
        load_settings(env_file=None)
    assert info.value.exit_code == 2
    monkeypatch.setenv("RESILIENCE_DB_BUFFER_FORM", "base64")
    assert load_settings(env_file=None).db_buffer_form == "base64"


def test_the_switch_output_names_a_missing_digest_and_the_form_written() -> None:
    import io

    from rich.console import Console

    from tasks.restore import _render_step_notes

    text = io.StringIO()
    console = Console(file=text, width=200)
    _render_step_notes(console, {"health": {"mode": "files", "digest_check": "not available"}})
    _render_step_notes(console, {"health": {"mode": "file", "digest_check": "equal"}})
    _render_step_notes(
        console,
        {"buffer_form": {"setting": "auto", "form": "base64", "minority": {"array": 363}}},
    )
    assert text.getvalue().splitlines() == [
        "health: mode and company verified; loaded digest not available",
        "import wrote base64 Buffers (RESILIENCE_DB_BUFFER_FORM=auto); rows in another form, "
        "left as they were: 363 array",
    ]
