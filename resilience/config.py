"""Settings: one validator for what the operator configures and what only drills use.

:class:`Settings` is everything the operator's library reads in production: the service's DSN,
PM2 app, paths, tag, alert channels, snapshots and run records; nothing about stacks.
:class:`DrillSettings` adds what only the drill rig reads (which stack, its ports, the admin DSN,
Toxiproxy). Both are validated here, by :func:`load_settings`.

Precedence (lowest first): defaults -> the settings file that `stack.up` wrote
(`<RESILIENCE_STACK_DIR or .stack>/resilience.env`, when it exists) -> `.env` in the working
directory -> environment (`RESILIENCE_*`) -> keyword overrides from task flags. Unknown
`RESILIENCE_*` names and wrong types are errors that name the field (never its value); secrets
are `SecretStr` and never appear in `repr`, logs or error messages.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from resilience.errors import ConfigError, InputError
from resilience.infra.redact import dsn_problems

ENV_PREFIX = "RESILIENCE_"
COMPANY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,50}$")
Backend = Literal["local", "docker", "external"]
#: How key rows are written (resilience.authstate.bufferform): the majority form of the
#: company's rows, or one form pinned
BufferFormSetting = Literal["auto", "array", "base64"]
DockerImages = Literal["auto", "official", "local"]
STACK_DIR_DEFAULT = ".stack"
STACK_SETTINGS_FILE = "resilience.env"
S = TypeVar("S", bound="Settings")


def validate_company_id(company_id: str) -> str:
    """Return the id if it is a valid company id (docs/domain.md §2), else raise InputError."""
    if not isinstance(company_id, str) or not COMPANY_ID_RE.fullmatch(company_id):
        shown = company_id[:60] if isinstance(company_id, str) else type(company_id).__name__
        raise InputError(
            f"invalid company id {shown!r}: use 1-50 characters of A-Z, a-z, 0-9, '_' or '-'"
        )
    return company_id


def _checked_dsn(value: SecretStr | None) -> SecretStr | None:
    """A DSN that means what it says: a typo in it must read as a typo, never as an outage.
    The message names the problem, never a character of the DSN."""
    if value is not None:
        problems = dsn_problems(value.get_secret_value())
        if problems:
            raise ValueError("the DSN is wrong: " + "; ".join(problems))
    return value


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

    # --- the database the service uses ---------------------------------------------------------
    service_dsn: SecretStr | None = None
    # a slow database is not a lost one: connection set-up alone is several round trips
    db_connect_timeout: float = Field(20.0, gt=0)

    # --- backups (S3, one bucket per region) -----------------------------------------------------
    s3_endpoint_moscow: str | None = None
    s3_endpoint_eu: str | None = None
    s3_bucket_moscow: str = "baileys-backups-moscow"
    s3_bucket_eu: str = "baileys-backups-eu"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    # every region's S3 calls are bounded (resilience.infra.s3): seconds to connect, seconds
    # without an answer, attempts per call (the first included), and seconds of S3 calls one
    # command may spend on one region; a region that does not answer is given up for the
    # rest of the command, the other region goes on
    s3_connect_timeout: float = Field(5.0, gt=0)
    s3_read_timeout: float = Field(30.0, gt=0)
    s3_max_attempts: int = Field(3, ge=1, le=10)
    s3_region_timeout: float = Field(900.0, gt=0)
    # a role that may create databases, where restores are verified in a scratch database
    restore_dsn: SecretStr | None = None
    backup_whole_database: bool = False  # dump the whole database, not only the auth tables
    backup_spool_dir: Path = Path("backups")  # dumps kept until every region has them
    backup_validation_log: Path = Path("backups/validation.jsonl")
    backup_size_alert_bytes: int = Field(1024**3, ge=1)
    backup_drop_alert_pct: float = Field(20.0, gt=0, le=100)
    backup_keep_hourly: int = Field(48, ge=0)
    backup_keep_daily: int = Field(30, ge=0)
    backup_keep_monthly: int = Field(12, ge=0)

    # --- point-in-time recovery (barman-cloud; docs/operations.md) -------------------------------
    # archive_command copies each WAL segment here (the server's user must write it); the pusher
    # sends it to every region and deletes it once every region has it
    wal_spool_dir: Path = Path("wal-spool")
    wal_spool_alert_segments: int = Field(64, ge=1)  # more files waiting than this alerts
    wal_spool_alert_age: float = Field(300.0, gt=0)  # seconds: an older waiting file alerts
    wal_push_interval: float = Field(10.0, gt=0)  # seconds between passes of backup.wal-daemon
    wal_push_timeout: float = Field(120.0, gt=0)  # seconds one segment's upload may take
    # uploads at once per region (pgBackRest's process-max), barman-cloud-wal-archive's code
    wal_push_processes: int = Field(4, ge=1, le=64)
    pitr_prefix: str = "pitr"  # barman-cloud's archive: s3://<bucket>/<prefix>/<server>/
    pitr_server: str = "baileys"
    # base backups (barman-cloud-backup): a role allowed to run backups (superuser or
    # pg_backup_start rights) on the server's own host; default: RESILIENCE_RESTORE_DSN
    pitr_dsn: SecretStr | None = None
    pitr_recovery_window_days: int = Field(30, ge=1)  # retention of base backups and WAL
    pitr_timeout: float = Field(1800.0, gt=0)  # seconds a restored cluster may take to promote
    barman_bin_dir: Path | None = None  # barman-cloud-*; unset: beside our Python, then PATH
    # barman-cloud-wal-restore that the server's user can run (restore_command); ./run makes it
    barman_server_bin_dir: Path = Path(".tools/barman/bin")
    pg_bindir: Path | None = None  # pg_ctl of restored clusters; unset: Debian's newest, PATH

    # --- alerts ------------------------------------------------------------------------------
    sentry_dsn: SecretStr | None = None
    telegram_bot_token: SecretStr | None = None
    telegram_chat_id: str | None = None
    telegram_api_url: str = "https://api.telegram.org"

    # --- the service -------------------------------------------------------------------------
    company_id: str = "default"
    pm2_app: str = "baileys-whatsapp-service"
    pm2_bin: Path | None = None  # the pm2 executable; unset: `pm2` on PATH
    pm2_home: Path | None = None  # PM2_HOME of the daemon running the service; unset: PM2's own
    service_dir: Path | None = None  # the service's git work tree (code step runs there)
    service_env: Path | None = None  # its .env (default: <service_dir>/.env)
    auth_dir: Path | None = None  # Baileys directory root (default: <service_dir>/auth_info)
    fallback_tag: str | None = None  # e.g. emergency-file-fallback-v1; unset: no code step
    health_url: str | None = None  # the service's health endpoint, if it has one
    service_company_var: str = "COMPANY_ID"  # the .env variable naming the company it serves
    # TOML, one [tenants.<company>] table per service: what `--company all` switches
    # (resilience.restore.tenants); unset: only the service above
    tenants_file: Path | None = None
    file_mode_pattern: str = r"\[auth\] using file auth state .* for company {company}\b"
    postgres_mode_pattern: str = r"\[auth\] using PostgreSQL auth state for company {company}\b"
    connected_pattern: str = r"connection open"
    # what the service's health may say as `mode` (comma-separated, any case), per mode
    health_file_mode_values: str = "file,files,filesystem"
    health_postgres_mode_values: str = "postgres,postgresql,database"
    verify_timeout: float = Field(120.0, gt=0)
    # the Buffer form of key rows this tool writes (import, backup.restore --company,
    # cleanup.legacy's moves, cleanup.buffer-form): auto = what most of the company's rows use
    db_buffer_form: BufferFormSetting = "auto"

    # --- snapshots (the fallback when PostgreSQL is already unreachable) ----------------------
    snapshot_dir: Path = Path("snapshots")
    snapshot_keep: int = Field(24, ge=1)
    snapshot_max_age: float = Field(3600.0, gt=0)  # seconds; older needs --force (RPO < 1 h)
    # where restore.export writes without --dir (never the service's live auth directory)
    export_dir: Path = Path("exports")
    # companies exported at the same time by restore.export and restore.snapshot (--workers)
    restore_workers: int = Field(4, ge=1, le=64)

    # --- records of operator runs ----------------------------------------------------------------
    runs_dir: Path = Path("runs")
    runs_keep_days: int = Field(90, ge=1)  # runs.prune: days a run record is kept
    runs_keep_days_minor: int = Field(7, ge=1)  # ... a dry run's or a refusal's

    # --- cleanup of keys (cleanup.keys) ----------------------------------------------------------
    # a key not updated for this many days is "stale" (resilience.maintenance.expiry)
    cleanup_retention_days: int = Field(30, ge=1)
    cleanup_batch_size: int = Field(5000, ge=1)  # rows per delete transaction
    cleanup_lock_timeout_ms: int = Field(1000, ge=1)  # SET LOCAL lock_timeout of each batch

    # --- monitoring (monitor.run, health; thresholds of docs/domain.md §7) ------------------------
    metrics_url: str | None = None  # the service's Prometheus endpoint (docs/monitoring.md)
    monitor_dsn: SecretStr | None = None  # database side and key figures; default: service_dsn
    monitor_host: str = "127.0.0.1"
    monitor_port: int = Field(9464, ge=0, le=65535)  # the monitor's /, /health.json, /metrics
    monitor_url: str | None = None  # where `health` finds the monitor (default: host and port)
    monitor_interval: float = Field(10.0, gt=0)  # seconds between cycles and pool samples
    monitor_page_refresh: float = Field(10.0, gt=0)  # seconds between status page refreshes
    monitor_state_file: Path = Path("monitor/state.json")  # alert states across restarts
    monitor_http_timeout: float = Field(5.0, gt=0)  # scrapes and alert channels
    monitor_statement_timeout_ms: int = Field(5000, ge=1)  # each of the monitor's queries
    monitor_app: str = "baileys-resilience-monitor"  # its PM2 app name
    probe_interval: float = Field(0.0, ge=0)  # synthetic probe: seconds; 0 = only without metrics
    probe_batch: int = Field(5, ge=1)  # keys read per probe
    service_application_name: str = "baileys-service"  # its connections in pg_stat_activity
    slow_query_ms: float = Field(500.0, gt=0)
    slow_query_count: int = Field(3, ge=1)  # slow queries inside the window that page
    slow_query_window: float = Field(300.0, gt=0)  # seconds, sliding
    alert_cooldown: float = Field(300.0, gt=0)  # seconds between two sends of one alert
    pool_samples: int = Field(360, ge=1)
    pool_usage_warn_pct: float = Field(80.0, gt=0, le=100)
    pool_waiting_critical: int = Field(5, ge=0)  # more than this many waiting is critical
    keys_expired_warn: int = Field(100, ge=1)
    keys_expired_critical: int = Field(500, ge=1)
    keys_alert_cooldown: float = Field(1800.0, gt=0)
    # integrity and completeness of the data (scenarios 2 and 3) in the monitor, seconds
    integrity_interval: float = Field(900.0, gt=0)

    # --- the live file mirror (mirror.run; resilience.mirror) -------------------------------------
    mirror_dir: Path = Path("mirror")  # one Baileys directory per company, position.json
    mirror_dsn: SecretStr | None = None  # the mirror's DSN (default: service_dsn)
    mirror_app: str = "baileys-resilience-mirror"  # its PM2 app name
    mirror_poll_interval: float = Field(0.5, gt=0)  # seconds between cycles without a NOTIFY
    mirror_batch: int = Field(10000, ge=1)  # changes read per apply cycle
    mirror_reconcile_interval: float = Field(300.0, gt=0)  # seconds between digest checks
    mirror_lag_alert: float = Field(10.0, gt=0)  # seconds of mirror lag that alert

    @field_validator("service_dsn", "restore_dsn", "monitor_dsn", "mirror_dsn", "pitr_dsn")
    @classmethod
    def _dsn(cls, value: SecretStr | None) -> SecretStr | None:
        return _checked_dsn(value)

    @field_validator("company_id")
    @classmethod
    def _company(cls, value: str) -> str:
        if not COMPANY_ID_RE.fullmatch(value):
            raise ValueError("must be 1-50 characters of A-Z, a-z, 0-9, '_' or '-'")
        return value

    @field_validator("pitr_prefix", "pitr_server")
    @classmethod
    def _archive_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
            raise ValueError("must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'")
        return value

    @field_validator(
        "s3_endpoint_moscow",
        "s3_endpoint_eu",
        "telegram_api_url",
        "health_url",
        "metrics_url",
        "monitor_url",
    )
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("health_file_mode_values", "health_postgres_mode_values")
    @classmethod
    def _mode_values(cls, value: str) -> str:
        values = _split_values(value)
        if not values:
            raise ValueError("must name at least one value (comma-separated)")
        bad = [v for v in values if not re.fullmatch(r"[a-z0-9_.-]{1,40}", v)]
        if bad:
            raise ValueError(
                f"{bad[0][:40]!r} is not a mode value: 1-40 characters of a-z, 0-9, '_', '.', '-'"
            )
        return ",".join(values)

    @field_validator("file_mode_pattern", "postgres_mode_pattern", "connected_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            re.compile(value.replace("{company}", "x"))
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _empty_is_unset(cls, data: Any) -> Any:
        """An empty value (``RESILIENCE_HEALTH_URL=``, from a file, the environment or a flag)
        unsets an optional setting: a settings file's value can be cleared from outside."""
        if not isinstance(data, dict):
            return data
        optional = _optional_fields(cls)
        return {
            key: None if key in optional and isinstance(value, str) and not value.strip() else value
            for key, value in data.items()
        }

    @model_validator(mode="after")
    def _thresholds(self) -> Settings:
        if self.keys_expired_critical < self.keys_expired_warn:
            raise ValueError(
                "RESILIENCE_KEYS_EXPIRED_CRITICAL must be at least RESILIENCE_KEYS_EXPIRED_WARN"
            )
        both = set(_split_values(self.health_file_mode_values)) & set(
            _split_values(self.health_postgres_mode_values)
        )
        if both:
            raise ValueError(
                f"mode value(s) {', '.join(sorted(both))} in both "
                "RESILIENCE_HEALTH_FILE_MODE_VALUES and RESILIENCE_HEALTH_POSTGRES_MODE_VALUES: "
                "a value must name one mode"
            )
        return self

    @property
    def health_mode_values(self) -> dict[str, tuple[str, ...]]:
        """``{"file": (...), "postgres": (...)}``: what the health may say for each mode
        (lower case; compare a health's value lower-cased and stripped)."""
        return {
            "file": _split_values(self.health_file_mode_values),
            "postgres": _split_values(self.health_postgres_mode_values),
        }

    def secret_values(self) -> list[str]:
        """Every secret these settings hold (for redactors: never to be shown)."""
        return [
            value.get_secret_value()
            for name in type(self).model_fields
            if isinstance(value := getattr(self, name), SecretStr)
        ]

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


class DrillSettings(Settings):
    """Settings of the drill rig on top of the operator's: which stack drills run on, how the
    local one is laid out, and, for staging, what only a drill may touch."""

    backend: Backend = "local"
    stack_dir: Path = Path(STACK_DIR_DEFAULT)
    tools_dir: Path = Path(".tools")
    # Fixed ports for the local stack; 0 picks a free port at start.
    pg_port: int = Field(0, ge=0, le=65535)
    toxiproxy_port: int = Field(0, ge=0, le=65535)
    s3_port: int = Field(0, ge=0, le=65535)
    receivers_port: int = Field(0, ge=0, le=65535)
    startup_timeout: float = Field(30.0, gt=0)
    # fsync on for the stack's PostgreSQL: drills that kill the server, point-in-time recovery
    pg_durable: bool = False
    # WAL archiving of the stack's PostgreSQL into a spool (point-in-time recovery drills)
    pg_archive: bool = False
    pg_archive_timeout: float = Field(60.0, gt=0)  # seconds: archive_timeout of the stack
    # docker backend: official images (pulled), local ones (built here from Debian packages and
    # cached in the engine) or auto (official when a pull works, else local)
    docker_images: DockerImages = "auto"
    # the service drills deploy on the local and docker stacks: our stand-in, or the drill
    # service on real Baileys code (tools/baileys-service)
    drill_service: Literal["standin", "baileys"] = "standin"

    # --- external (staging) stack ------------------------------------------------------------
    admin_dsn: SecretStr | None = None
    toxiproxy_url: str | None = None
    toxiproxy_proxy: str = "postgres"
    drill_target: bool = False

    @field_validator("admin_dsn")
    @classmethod
    def _admin_dsn(cls, value: SecretStr | None) -> SecretStr | None:
        return _checked_dsn(value)

    @field_validator("toxiproxy_url")
    @classmethod
    def _toxiproxy_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http(s) URL")
        return value


def _split_values(text: str) -> tuple[str, ...]:
    """Comma-separated values, stripped and lower-cased, empty items and repeats dropped."""
    items = (item.strip().lower() for item in text.split(","))
    return tuple(dict.fromkeys(item for item in items if item))


def _optional_fields(cls: type[BaseSettings]) -> frozenset[str]:
    """Fields an empty value unsets: those whose default is None (unset)."""
    return frozenset(
        name
        for name, info in cls.model_fields.items()
        if info.default is None and not info.is_required()
    )


def stack_settings_file() -> Path:
    """Where `stack.up` writes the settings of the embedded stack (and where they are read)."""
    stack_dir = os.environ.get(ENV_PREFIX + "STACK_DIR") or STACK_DIR_DEFAULT
    return Path(stack_dir) / STACK_SETTINGS_FILE


def _unknown_names(env_files: tuple[Path, ...]) -> list[str]:
    """`RESILIENCE_*` names in the environment or the env files that are no setting (of the
    operator's or the rig's: both read the same files).

    Other names in the files are left alone: a file may be shared with other tools.
    """
    known = {ENV_PREFIX + name.upper() for name in DrillSettings.model_fields}
    names = set(os.environ)
    for env_file in env_files:
        names |= set(dotenv_values(env_file))
    return sorted(k for k in names if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)


def _env_files(env_file: str | Path | None) -> tuple[Path, ...]:
    if env_file is None:
        return ()
    candidates = [stack_settings_file(), Path(env_file)]
    return tuple(dict.fromkeys(p for p in candidates if p.is_file()))


def _load(cls: type[S], env_file: str | Path | None, overrides: dict[str, Any]) -> S:
    env_files = _env_files(env_file)
    unknown = _unknown_names(env_files)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        return cls(_env_file=env_files or None, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            name = (ENV_PREFIX + field if field in cls.model_fields else field).upper()
            message = str(err["msg"]).removeprefix("Value error, ")
            # a check of several settings (no location) names them in its message
            problems.append(f"{name}: {message}" if field else message)
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """The operator's settings, validated; ConfigError naming every bad field, never its value.

    ``env_file=None`` reads no file at all (neither `.env` nor the stack's settings file)."""
    return _load(Settings, env_file, overrides)


def load_drill_settings(env_file: str | Path | None = ".env", **overrides: Any) -> DrillSettings:
    """The rig's settings (the operator's plus the stack's), validated the same way."""
    return _load(DrillSettings, env_file, overrides)


def settings_as_env(settings: Settings, names: Iterable[str] | None = None) -> dict[str, str]:
    """`RESILIENCE_*` variables that load back into ``settings`` (secrets included: for a file
    of mode 0600 or a child's environment, never for output). Unset fields are left out;
    ``names`` picks fields by name (default: every field that differs from its default)."""
    fields = type(settings).model_fields
    chosen = list(names) if names is not None else list(fields)
    out: dict[str, str] = {}
    for name in chosen:
        value = getattr(settings, name)
        if value is None or (names is None and value == fields[name].default):
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        text = str(value).lower() if isinstance(value, bool) else str(value)
        out[ENV_PREFIX + name.upper()] = text
    return out


def service_dsn(settings: Settings) -> str:
    """The DSN the service uses (a secret: redact before showing); ConfigError when unset."""
    if settings.service_dsn is None:
        raise ConfigError("set RESILIENCE_SERVICE_DSN (the DSN the service uses)")
    return settings.service_dsn.get_secret_value()
