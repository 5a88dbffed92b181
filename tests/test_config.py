from __future__ import annotations

from pathlib import Path

import pytest

from resilience.config import load_drill_settings, load_settings, validate_company_id
from resilience.errors import ConfigError, InputError
from resilience.infra.redact import redact_dsn


def test_defaults_load_without_env_file(tmp_path: Path) -> None:
    settings = load_drill_settings(env_file=tmp_path / "missing.env")
    assert settings.backend == "local"
    assert not hasattr(load_settings(env_file=None), "backend")  # a drill setting only
    assert settings.pg_port == 0


def test_precedence_file_then_environment_then_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = tmp_path / ".env"
    env.write_text("RESILIENCE_PM2_APP=from-file\nRESILIENCE_COMPANY_ID=file_co\n")
    assert load_settings(env_file=env).pm2_app == "from-file"
    monkeypatch.setenv("RESILIENCE_PM2_APP", "from-env")
    assert load_settings(env_file=env).pm2_app == "from-env"
    assert load_settings(env_file=env, pm2_app="from-flag").pm2_app == "from-flag"
    assert load_settings(env_file=env).company_id == "file_co"


def test_unknown_field_in_env_file_is_named(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("RESILIENCE_PG_PROT=5432\n")
    with pytest.raises(ConfigError, match="RESILIENCE_PG_PROT") as info:
        load_settings(env_file=env)
    assert "\n" not in str(info.value)


def test_unknown_field_in_environment_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESILIENCE_BAKEND", "local")
    with pytest.raises(ConfigError, match="RESILIENCE_BAKEND"):
        load_settings(env_file=None)


def test_wrong_type_names_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESILIENCE_PG_PORT", "fifty")
    with pytest.raises(ConfigError, match="RESILIENCE_PG_PORT"):
        load_drill_settings(env_file=None)
    monkeypatch.setenv("RESILIENCE_PG_PORT", "70000")
    with pytest.raises(ConfigError, match="RESILIENCE_PG_PORT"):
        load_drill_settings(env_file=None)
    load_settings(env_file=None)  # a rig setting is no business of the operator's commands
    monkeypatch.setenv("RESILIENCE_DB_CONNECT_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="RESILIENCE_DB_CONNECT_TIMEOUT"):
        load_settings(env_file=None)


def test_bad_backend_and_company(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="RESILIENCE_BACKEND"):
        load_drill_settings(env_file=None, backend="kubernetes")
    with pytest.raises(ConfigError, match="RESILIENCE_COMPANY_ID"):
        load_settings(env_file=None, company_id="../etc")


def test_secrets_are_redacted_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-Passw0rd"
    monkeypatch.setenv("RESILIENCE_ADMIN_DSN", f"postgresql://admin:{secret}@db:5432/x")
    monkeypatch.setenv("RESILIENCE_TELEGRAM_BOT_TOKEN", f"123:{secret}")
    settings = load_drill_settings(env_file=None)
    assert secret not in repr(settings)
    assert secret not in str(settings.model_dump())
    # a validation error elsewhere must not echo secret values either
    monkeypatch.setenv("RESILIENCE_DRILL_TARGET", secret)
    with pytest.raises(ConfigError) as info:
        load_drill_settings(env_file=None)
    assert secret not in str(info.value)
    assert "RESILIENCE_DRILL_TARGET" in str(info.value)


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("host=h user=u password=pw dbname=x", "host=h user=u password=*** dbname=x"),
    ],
)
def test_redact_dsn(dsn: str, expected: str) -> None:
    assert redact_dsn(dsn) == expected


@pytest.mark.parametrize("bad", ["", "a" * 51, "../x", "a b", "a/b", "é", "a\x00"])
def test_invalid_company_ids(bad: str) -> None:
    with pytest.raises(InputError, match="invalid company id"):
        validate_company_id(bad)


@pytest.mark.parametrize("good", ["a", "A-z_09", "x" * 50])
def test_valid_company_ids(good: str) -> None:
    assert validate_company_id(good) == good


def test_the_stack_settings_file_is_read_below_env_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".stack").mkdir()
    (tmp_path / ".stack" / "resilience.env").write_text(
        "RESILIENCE_PM2_APP=from-stack\nRESILIENCE_COMPANY_ID=stack_co\nRESILIENCE_HEALTH_URL=http://h:1/\n"
    )
    (tmp_path / ".env").write_text("RESILIENCE_COMPANY_ID=env_co\n")
    monkeypatch.setenv("RESILIENCE_HEALTH_URL", "http://from-env:2/health")
    settings = load_settings()
    assert settings.pm2_app == "from-stack"
    assert settings.company_id == "env_co"
    assert settings.health_url == "http://from-env:2/health"
    (tmp_path / ".stack" / "resilience.env").write_text("RESILIENCE_NO_SUCH=1\n")
    with pytest.raises(ConfigError, match="RESILIENCE_NO_SUCH"):
        load_settings()


def test_settings_as_env_loads_back(tmp_path: Path) -> None:
    from resilience.config import settings_as_env

    original = load_settings(
        env_file=None,
        service_dsn="postgresql://u:p%40ss@h:5/d",
        pm2_home=tmp_path,
        verify_timeout=7.5,
        company_id="acme",
    )
    env_file = tmp_path / "settings.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings_as_env(original).items()))
    again = load_settings(env_file=env_file)
    assert again.model_dump() == original.model_dump()
    assert again.service_dsn is not None and original.service_dsn is not None
    assert again.service_dsn.get_secret_value() == original.service_dsn.get_secret_value()


def test_a_keyword_password_with_an_escaped_quote_is_hidden_whole() -> None:
    """libpq's keyword syntax escapes a quote inside a quoted value (`'00\\'0;00A'`); the
    redaction must not stop at that quote (a CI run showed `0;00A` left behind)."""
    from resilience.infra.redact import Redactor, redact_dsn

    dsn = "host=127.0.0.1 port=5 user=u password='00\\'0;00A' dbname=b"
    assert redact_dsn(dsn) == "host=127.0.0.1 port=5 user=u password=*** dbname=b"
    redactor = Redactor([dsn])
    assert redactor.text("as written 00\\'0;00A, decoded 00'0;00A") == (
        "as written ***, decoded ***"
    )
