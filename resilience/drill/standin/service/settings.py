"""The stand-in's settings: what it reads from ``.env`` in its working directory.

``.env`` gives the three mode flags (file mode iff ``USE_REPOSITORY_PATTERN``,
``USE_DATABASE_AUTH_STATE`` and ``USE_LEGACY_SUPABASE`` are all ``false``, else PostgreSQL mode;
:mod:`resilience.service.modes`), ``DATABASE_URL``, ``COMPANY_ID``, ``AUTH_DIR`` (default
``auth_info``, relative to the working directory) and ``PORT`` (``0``: any free port, logged in
:data:`~resilience.drill.standin.service.lines.HTTP_LINE`; absent: no HTTP server).

Traffic settings ``WRITE_INTERVAL_MS`` (default 200; ``0`` disables traffic), ``WRITE_SEED``
(default ``standin``), ``STANDIN_WRITES`` (``0`` disables traffic) and ``SHUTDOWN_GRACE_MS``
(default 10000) are read from ``.env`` and may be overridden by the process environment. Every
other setting is read from ``.env`` only: ``DB_CONNECT_TIMEOUT_MS`` (default 10000, at least
1000; a 2 s latency toxic makes one connection take several seconds), the pool's and readers'
(:mod:`~resilience.drill.standin.service.backends.postgres`), the creds cache's and creds saves'
(:mod:`~resilience.drill.standin.service.cachemode`, :mod:`~resilience.drill.standin.service.creds`)
and ``DB_BUFFER_FORM``: the Buffer form PostgreSQL mode writes key rows and creds in, ``array``
(the default: ``{"type": "Buffer", "data": [0, 1, ...]}``) or ``base64`` (what Baileys'
``BufferJSON`` writes); either is read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

from resilience.authstate.codec import Style
from resilience.authstate.credscache import DEFAULT_TTL_S
from resilience.config import validate_company_id
from resilience.drill.standin.writelog import WRITELOG_FILE
from resilience.errors import ConfigError
from resilience.service.modes import Mode, mode_of

ENV_FILE = ".env"
DEFAULT_AUTH_DIR = "auth_info"
DEFAULT_INTERVAL_MS = 200
DEFAULT_SEED = "standin"
DEFAULT_GRACE_MS = 10000
DEFAULT_CONNECT_TIMEOUT_MS = 10000
DEFAULT_POOL_SIZE = 4
DEFAULT_APPLICATION_NAME = "baileys-service"
MAX_APPLICATION_NAME = 63  # PostgreSQL keeps NAMEDATALEN - 1 bytes of it
DEFAULT_READ_INTERVAL_MS = 200
DEFAULT_SLOW_QUERY_MS = 500
DEFAULT_BUFFER_FORM: Style = "array"
BUFFER_FORMS: tuple[Style, ...] = ("array", "base64")
DEFAULT_RELOAD_INTERVAL_MS = 3000  # cache mode: one load attempt every this many ms
MIN_RELOAD_INTERVAL_MS = 200
HOST = "127.0.0.1"  # the HTTP server listens here only


def mode_from_flags(values: Mapping[str, str | None]) -> Mode:
    """The mode the three flags choose (:func:`resilience.service.modes.mode_of`)."""
    return mode_of(values)


@dataclass(frozen=True)
class StandinConfig:
    """What the stand-in read from ``.env`` (and, for traffic, the environment)."""

    mode: Mode
    company: str
    database_url: str | None
    auth_dir: Path
    port: int | None
    write_interval_ms: int
    write_seed: str
    writes_enabled: bool
    shutdown_grace_ms: int
    journal: Path
    connect_timeout_ms: int = DEFAULT_CONNECT_TIMEOUT_MS
    creds_cache_dir: Path | None = None  # the on-disk copy; None: memory only
    creds_cache_ttl_s: float = DEFAULT_TTL_S  # 0: no creds cache
    sentry_dsn: str | None = None
    creds_save_interval_ms: int = 0  # 0: no periodic creds saves
    pre_key_creds_save: bool = True  # creds saved after each pre-key upload, as Baileys does
    buffer_form: Style = DEFAULT_BUFFER_FORM  # PostgreSQL mode writes Buffers in this form
    cache_reload_interval_ms: int = DEFAULT_RELOAD_INTERVAL_MS
    pool_size: int = DEFAULT_POOL_SIZE
    application_name: str = DEFAULT_APPLICATION_NAME
    readers: int = 0  # reader threads (PostgreSQL mode)
    read_interval_ms: int = DEFAULT_READ_INTERVAL_MS
    slow_query_ms: int = DEFAULT_SLOW_QUERY_MS

    def __repr__(self) -> str:  # never show the DSNs (the database's password, Sentry's key)
        return (
            f"StandinConfig(mode={self.mode!r}, company={self.company!r}, "
            f"auth_dir={str(self.auth_dir)!r}, port={self.port!r})"
        )

    @property
    def traffic(self) -> bool:
        return self.writes_enabled and self.write_interval_ms > 0

    @property
    def creds_cache(self) -> bool:
        """Creds are cached (PostgreSQL mode with a positive TTL)."""
        return self.mode == "postgres" and self.creds_cache_ttl_s > 0


def _int_setting(values: Mapping[str, str | None], name: str, default: int | None) -> int | None:
    raw = (values.get(name) or "").strip()
    if not raw:
        return default
    try:
        number = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw[:30]!r}") from None
    if number < 0:
        raise ConfigError(f"{name} must not be negative (got {number})")
    return number


def _seconds_setting(values: Mapping[str, str | None], name: str, default: float) -> float:
    raw = (values.get(name) or "").strip()
    if not raw:
        return default
    try:
        number = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {raw[:30]!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"{name} must be a finite number of seconds, at least 0 (got {raw[:30]})")
    return number


def _bool_setting(values: Mapping[str, str | None], name: str, default: bool) -> bool:
    raw = (values.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, not {raw[:30]!r}")


def _buffer_form(values: Mapping[str, str | None]) -> Style:
    raw = (values.get("DB_BUFFER_FORM") or "").strip().lower()
    if not raw:
        return DEFAULT_BUFFER_FORM
    for form in BUFFER_FORMS:
        if raw == form:
            return form
    raise ConfigError(f"DB_BUFFER_FORM must be array or base64, not {raw[:30]!r}")


def _application_name(values: Mapping[str, str | None]) -> str:
    name = (values.get("DB_APPLICATION_NAME") or "").strip() or DEFAULT_APPLICATION_NAME
    if len(name) > MAX_APPLICATION_NAME or not all(" " <= c <= "~" for c in name):
        raise ConfigError(
            f"DB_APPLICATION_NAME must be at most {MAX_APPLICATION_NAME} printable ASCII "
            f"characters (got {name[:30]!r})"
        )
    return name


def read_config(cwd: Path, environ: Mapping[str, str] | None = None) -> StandinConfig:
    """Read ``cwd/.env`` (and traffic overrides from ``environ``); :class:`ConfigError` names the
    bad or missing setting."""
    env_path = cwd / ENV_FILE
    if not env_path.is_file():
        raise ConfigError(f"no {ENV_FILE} in {cwd}: the service reads its settings from it")
    values: dict[str, str | None] = dict(dotenv_values(env_path))
    overrides = os.environ if environ is None else environ
    for name in ("WRITE_INTERVAL_MS", "WRITE_SEED", "STANDIN_WRITES", "SHUTDOWN_GRACE_MS"):
        if name in overrides:
            values[name] = overrides[name]
    company = (values.get("COMPANY_ID") or "").strip()
    if not company:
        raise ConfigError(f"COMPANY_ID is missing in {env_path}")
    validate_company_id(company)
    mode = mode_from_flags(values)
    dsn = (values.get("DATABASE_URL") or "").strip() or None
    if mode == "postgres" and dsn is None:
        raise ConfigError(f"DATABASE_URL is missing in {env_path} (needed in PostgreSQL mode)")
    auth_dir = Path((values.get("AUTH_DIR") or "").strip() or DEFAULT_AUTH_DIR)
    port = _int_setting(values, "PORT", None)
    if port is not None and port > 65535:
        raise ConfigError(f"PORT must be at most 65535 (got {port})")
    interval = _int_setting(values, "WRITE_INTERVAL_MS", DEFAULT_INTERVAL_MS)
    grace = _int_setting(values, "SHUTDOWN_GRACE_MS", DEFAULT_GRACE_MS)
    connect_timeout = _int_setting(values, "DB_CONNECT_TIMEOUT_MS", DEFAULT_CONNECT_TIMEOUT_MS)
    writes = (values.get("STANDIN_WRITES") or "").strip().lower()
    cache_dir_text = (values.get("CREDS_CACHE_DIR") or "").strip()
    cache_dir = Path(cache_dir_text) if cache_dir_text else None
    if cache_dir is not None and not cache_dir.is_absolute():
        cache_dir = cwd / cache_dir
    reload_ms = _int_setting(values, "CACHE_RELOAD_INTERVAL_MS", DEFAULT_RELOAD_INTERVAL_MS)
    pool_size = _int_setting(values, "DB_POOL_SIZE", DEFAULT_POOL_SIZE)
    read_ms = _int_setting(values, "READ_INTERVAL_MS", DEFAULT_READ_INTERVAL_MS)
    slow_ms = _int_setting(values, "SLOW_QUERY_MS", DEFAULT_SLOW_QUERY_MS)
    return StandinConfig(
        mode=mode,
        company=company,
        database_url=dsn,
        auth_dir=auth_dir if auth_dir.is_absolute() else cwd / auth_dir,
        port=port,
        write_interval_ms=DEFAULT_INTERVAL_MS if interval is None else interval,
        write_seed=(values.get("WRITE_SEED") or "").strip() or DEFAULT_SEED,
        writes_enabled=writes not in ("0", "false", "no", "off"),
        shutdown_grace_ms=DEFAULT_GRACE_MS if grace is None else grace,
        journal=cwd / WRITELOG_FILE,
        connect_timeout_ms=max(1000, connect_timeout or DEFAULT_CONNECT_TIMEOUT_MS),
        creds_cache_dir=cache_dir,
        creds_cache_ttl_s=_seconds_setting(values, "CREDS_CACHE_TTL_S", DEFAULT_TTL_S),
        sentry_dsn=(values.get("SENTRY_DSN") or "").strip() or None,
        creds_save_interval_ms=_int_setting(values, "CREDS_SAVE_INTERVAL_MS", 0) or 0,
        pre_key_creds_save=_bool_setting(values, "PRE_KEY_CREDS_SAVE", True),
        buffer_form=_buffer_form(values),
        cache_reload_interval_ms=max(
            MIN_RELOAD_INTERVAL_MS, DEFAULT_RELOAD_INTERVAL_MS if reload_ms is None else reload_ms
        ),
        pool_size=max(1, DEFAULT_POOL_SIZE if pool_size is None else pool_size),
        application_name=_application_name(values),
        readers=_int_setting(values, "STANDIN_READERS", 0) or 0,
        read_interval_ms=max(1, DEFAULT_READ_INTERVAL_MS if read_ms is None else read_ms),
        slow_query_ms=DEFAULT_SLOW_QUERY_MS if slow_ms is None else slow_ms,
    )
