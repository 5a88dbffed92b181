"""Settings: one validated object read from `.env`, then the environment, then explicit overrides.

Precedence (lowest first): defaults -> `.env` file -> environment (`RESILIENCE_*`) -> keyword
overrides from task flags. Unknown `RESILIENCE_*` names and wrong types are errors that name the
field; secrets are `SecretStr` and never appear in `repr`, logs or error messages.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from resilience.errors import ConfigError, InputError

ENV_PREFIX = "RESILIENCE_"
COMPANY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,50}$")
Backend = Literal["local", "docker", "external"]


def validate_company_id(company_id: str) -> str:
    """Return the id if it is a valid company id (brief §2), else raise InputError."""
    if not isinstance(company_id, str) or not COMPANY_ID_RE.fullmatch(company_id):
        shown = company_id[:60] if isinstance(company_id, str) else type(company_id).__name__
        raise InputError(
            f"invalid company id {shown!r}: use 1-50 characters of A-Z, a-z, 0-9, '_' or '-'"
        )
    return company_id


class Settings(BaseSettings):
    """Everything an operator can configure. Field `foo` is read from `RESILIENCE_FOO`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",  # unknown RESILIENCE_* names are caught by load_settings
        validate_default=True,
        hide_input_in_errors=True,
    )

    # --- which stack --------------------------------------------------------------------------
    backend: Backend = "local"
    stack_dir: Path = Path(".stack")
    tools_dir: Path = Path(".tools")
    # Fixed ports for the local stack; 0 picks a free port at start.
    pg_port: int = Field(0, ge=0, le=65535)
    toxiproxy_port: int = Field(0, ge=0, le=65535)
    s3_port: int = Field(0, ge=0, le=65535)
    receivers_port: int = Field(0, ge=0, le=65535)
    startup_timeout: float = Field(30.0, gt=0)

    # --- external (staging) stack ------------------------------------------------------------
    admin_dsn: SecretStr | None = None
    service_dsn: SecretStr | None = None
    toxiproxy_url: str | None = None
    toxiproxy_proxy: str = "postgres"
    s3_endpoint_moscow: str | None = None
    s3_endpoint_eu: str | None = None
    s3_bucket_moscow: str = "baileys-backups-moscow"
    s3_bucket_eu: str = "baileys-backups-eu"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    drill_target: bool = False

    # --- alerts ------------------------------------------------------------------------------
    sentry_dsn: SecretStr | None = None
    telegram_bot_token: SecretStr | None = None
    telegram_chat_id: str | None = None
    telegram_api_url: str = "https://api.telegram.org"

    # --- the service -------------------------------------------------------------------------
    company_id: str = "default"
    pm2_app: str = "baileys-whatsapp-service"
    service_dir: Path | None = None  # the service's git work tree (code step runs there)
    service_env: Path | None = None  # its .env (default: <service_dir>/.env)
    auth_dir: Path | None = None  # Baileys directory root (default: <service_dir>/auth_info)
    fallback_tag: str | None = None  # e.g. emergency-file-fallback-v1; unset: no code step
    health_url: str | None = None  # the service's health endpoint, if it has one
    file_mode_pattern: str = r"\[auth\] using file auth state .* for company {company}\b"
    postgres_mode_pattern: str = r"\[auth\] using PostgreSQL auth state for company {company}\b"
    connected_pattern: str = r"connection open"
    verify_timeout: float = Field(120.0, gt=0)
    # a slow database is not a lost one: connection set-up alone is several round trips
    db_connect_timeout: float = Field(20.0, gt=0)

    # --- snapshots (the fallback when PostgreSQL is already unreachable) ----------------------
    snapshot_dir: Path = Path("snapshots")
    snapshot_keep: int = Field(24, ge=1)
    snapshot_max_age: float = Field(3600.0, gt=0)  # seconds; older needs --force (RPO < 1 h)

    @field_validator("company_id")
    @classmethod
    def _company(cls, value: str) -> str:
        if not COMPANY_ID_RE.fullmatch(value):
            raise ValueError("must be 1-50 characters of A-Z, a-z, 0-9, '_' or '-'")
        return value

    @field_validator(
        "toxiproxy_url", "s3_endpoint_moscow", "s3_endpoint_eu", "telegram_api_url", "health_url"
    )
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("file_mode_pattern", "postgres_mode_pattern", "connected_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            re.compile(value.replace("{company}", "x"))
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @property
    def env_path(self) -> Path | None:
        if self.service_env is not None:
            return self.service_env
        return self.service_dir / ".env" if self.service_dir else None

    @property
    def auth_root(self) -> Path | None:
        if self.auth_dir is not None:
            return self.auth_dir
        return self.service_dir / "auth_info" if self.service_dir else None


def _unknown_names(env_file: str | Path | None) -> list[str]:
    """`RESILIENCE_*` names in the environment or the env file that are no setting.

    Other names in the file are left alone: the file may be shared with other tools.
    """
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    names = set(os.environ)
    if env_file is not None and Path(env_file).is_file():
        names |= set(dotenv_values(env_file))
    return sorted(k for k in names if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """Read and validate settings; raise ConfigError naming every bad field, never its value."""
    unknown = _unknown_names(env_file)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "?"
            name = (ENV_PREFIX + field if field in Settings.model_fields else field).upper()
            problems.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
