"""Every tenant's service, for switching every company at once (``--company all``).

The settings describe one service: its PM2 app, work tree, ``.env``, Baileys directory and
health URL. An operator who runs one service per company lists them in a tenants file
(``RESILIENCE_TENANTS_FILE``, TOML), one table per company naming what differs from the main
settings::

    [tenants.acme]
    pm2_app = "wa-acme"
    service_dir = "/srv/wa/acme"
    health_url = "http://127.0.0.1:8101/health"

Only the service's own settings may differ (:data:`TENANT_FIELDS`); the database, snapshots,
alerts and the rest are the main settings'. Every table is validated like the settings
themselves (one validator), and two tenants naming the same PM2 app or the same ``.env`` are
refused: they would switch one service twice. The file is read from disk, not the database:
``--company all`` must work while PostgreSQL is unreachable.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from resilience.config import ENV_PREFIX, Settings, validate_company_id
from resilience.errors import ConfigError, InputError

#: what a tenant's table may set: the settings that describe its service
TENANT_FIELDS = frozenset(
    {
        "pm2_app",
        "pm2_home",
        "service_dir",
        "service_env",
        "auth_dir",
        "health_url",
        "fallback_tag",
        "service_company_var",
    }
)
_SETTING = ENV_PREFIX + "TENANTS_FILE"


def tenant_settings(settings: Settings) -> dict[str, Settings]:
    """The settings of each tenant's service, by company id, in the file's order."""
    path = settings.tenants_file
    if path is None:
        raise ConfigError(
            f"--company all needs {_SETTING}: a TOML file with one [tenants.<company>] table "
            "per service (docs/emergency-rollback.md)"
        )
    data = _read(Path(path))
    extra = sorted(set(data) - {"tenants"})
    if extra:
        raise ConfigError(f"{_SETTING} {path}: unknown table(s) {', '.join(extra)}")
    tenants = data.get("tenants")
    if not isinstance(tenants, dict) or not tenants:
        raise ConfigError(f"{_SETTING} {path}: no [tenants.<company>] table")
    found: dict[str, Settings] = {}
    for company, table in tenants.items():
        checked = _company(path, company)  # before its table: the id is named in messages
        found[checked] = _one(settings, path, checked, table)
    _refuse_shared_services(path, found)
    return found


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{_SETTING}: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{_SETTING} {path} is not valid TOML: {exc}") from None


def _company(path: Path, company: str) -> str:
    try:
        return validate_company_id(company)
    except InputError as exc:
        raise ConfigError(f"{_SETTING} {path}: {exc}") from None


def _one(settings: Settings, path: Path, company: str, table: Any) -> Settings:
    where = f"{_SETTING} {path}: [tenants.{company}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table of settings")
    unknown = sorted(set(table) - TENANT_FIELDS)
    if unknown:
        raise ConfigError(
            f"{where}: {', '.join(unknown)} cannot differ per tenant (only "
            f"{', '.join(sorted(TENANT_FIELDS))})"
        )
    values = {name: getattr(settings, name) for name in type(settings).model_fields}
    values.update(table, company_id=company)
    try:
        return type(settings).model_validate(values)
    except ValidationError as exc:
        problems = [
            ".".join(str(p) for p in err["loc"])
            + ": "
            + str(err["msg"]).removeprefix("Value error, ")
            for err in exc.errors()
        ]
        raise ConfigError(f"{where}: " + "; ".join(problems)) from None


def _refuse_shared_services(path: Path, found: dict[str, Settings]) -> None:
    apps: dict[tuple[Path | None, str], str] = {}
    envs: dict[Path, str] = {}
    for company, tenant in found.items():
        app = (tenant.pm2_home, tenant.pm2_app)
        if app in apps:
            raise ConfigError(
                f"{_SETTING} {path}: tenants {apps[app]} and {company} name the same PM2 app "
                f"{tenant.pm2_app}"
            )
        apps[app] = company
        env = tenant.env_path
        if env is not None:
            if env in envs:
                raise ConfigError(
                    f"{_SETTING} {path}: tenants {envs[env]} and {company} share the .env {env}"
                )
            envs[env] = company
