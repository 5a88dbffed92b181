"""Deploy the stand-in service on the embedded stack, the way production runs the real one.

A working directory that is a git repository (main holds the PostgreSQL-mode code, a tag holds
the file fallback), a `.env` with the three mode flags in PostgreSQL mode, and a PM2 app that
runs `python -m resilience.drill.standin.service` in that directory. Drills that need more of the
stand-in's settings (the creds cache's `CREDS_CACHE_DIR` and `CREDS_CACHE_TTL_S`, `SENTRY_DSN`,
shorter timeouts) pass them as `extra_env`: lines appended to `.env`, never replacing one of
the lines above.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from resilience.authstate import pgraw
from resilience.errors import InputError, StackError
from resilience.infra.pm2 import Pm2
from resilience.infra.processes import free_port
from resilience.service.modes import POSTGRES_MODE_FLAGS

if TYPE_CHECKING:
    from resilience.authstate.dataset import Dataset
    from resilience.config import DrillSettings, Settings
    from resilience.drill.stack.base import Endpoints, Stack

FALLBACK_TAG = "emergency-file-fallback-v1"
_ENV_NAME_RE = re.compile(r"[A-Z][A-Z0-9_]*")


@dataclass(frozen=True)
class DeployedService:
    app: str
    workdir: Path
    env_file: Path
    auth_dir: Path
    health_url: str
    company_id: str
    fallback_tag: str


def _git(workdir: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "drill", "GIT_AUTHOR_EMAIL": "drill@localhost"}
    env |= {"GIT_COMMITTER_NAME": "drill", "GIT_COMMITTER_EMAIL": "drill@localhost"}
    result = subprocess.run(
        ["git", "-C", str(workdir), *args], capture_output=True, text=True, env=env, check=False
    )
    if result.returncode != 0:
        raise StackError(f"git {args[0]} in {workdir} failed: {result.stderr.strip()[-200:]}")


def _init_repo(workdir: Path, tag: str) -> None:
    """main: PostgreSQL-mode code; `tag`: the commit before it, with the file fallback."""
    _git(workdir, "init", "-q", "-b", "main")
    (workdir / ".gitignore").write_text(
        ".env\n.env.bak-*\nauth_info/\nlogs/\nwrites.jsonl\necosystem.config.json\n"
    )
    (workdir / "AUTH_BACKEND").write_text("files\n")
    _git(workdir, "add", "-A")
    _git(workdir, "commit", "-q", "-m", "auth state in Baileys files")
    _git(workdir, "tag", tag)
    (workdir / "AUTH_BACKEND").write_text("postgresql\n")
    _git(workdir, "commit", "-q", "-am", "auth state in PostgreSQL")


def deploy_standin(
    pm2: Pm2,
    workdir: Path,
    *,
    service_dsn: str,
    company_id: str,
    app: str = "baileys-whatsapp-service",
    write_interval_ms: int = 100,
    seed: str = "drill",
    tag: str = FALLBACK_TAG,
    extra_env: Mapping[str, str] | None = None,
) -> DeployedService:
    """Create the working dir, `.env` and PM2 app, and start it (PostgreSQL mode).

    `extra_env`: more `.env` lines (`NAME=value`) after the usual ones; a name the usual lines
    set, a name that is not `[A-Z][A-Z0-9_]*` or a value with a line break is an InputError."""
    port = prepare_workdir(workdir, tag)
    lines = service_env_lines(service_dsn, company_id, port, write_interval_ms)
    lines.append(f"WRITE_SEED={seed}")
    lines += _extra_lines(lines, extra_env or {})
    program = {
        "script": sys.executable,
        "args": ["-m", "resilience.drill.standin.service"],
        "interpreter": "none",
        "kill_timeout": 12000,  # above the stand-in's shutdown grace
        "env": {"PYTHONUNBUFFERED": "1"},
    }
    return start_service(pm2, workdir, app, lines, program, port, company_id, tag)


def prepare_workdir(workdir: Path, tag: str) -> int:
    """The service's git working directory (created with the fallback tag when new), and a
    free port for it."""
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / ".git").exists():
        _init_repo(workdir, tag)
    return free_port()


def service_env_lines(
    service_dsn: str, company_id: str, port: int, write_interval_ms: int
) -> list[str]:
    """The `.env` lines every drill service reads: the three flags in PostgreSQL mode, its
    database, company, auth dir, port and write pace."""
    return [
        "# Baileys service settings (embedded stack)",
        *(f"{k}={v}" for k, v in POSTGRES_MODE_FLAGS.items()),
        f"DATABASE_URL={service_dsn}",
        f"COMPANY_ID={company_id}",
        "AUTH_DIR=auth_info",
        f"PORT={port}",
        f"WRITE_INTERVAL_MS={write_interval_ms}",
    ]


def start_service(
    pm2: Pm2,
    workdir: Path,
    app: str,
    lines: list[str],
    program: Mapping[str, object],
    port: int,
    company_id: str,
    tag: str,
) -> DeployedService:
    """Write `.env` (0600) and the PM2 ecosystem file of ``program`` in ``workdir``, start it."""
    env_file = workdir / ".env"
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    entry = {
        "name": app,
        "cwd": str(workdir),
        "out_file": str(logs / "out.log"),
        "error_file": str(logs / "err.log"),
        "merge_logs": True,
        "autorestart": True,
        **program,
    }
    ecosystem = workdir / "ecosystem.config.json"
    ecosystem.write_text(json.dumps({"apps": [entry]}, indent=2))
    pm2.start(ecosystem)
    return DeployedService(
        app=app,
        workdir=workdir,
        env_file=env_file,
        auth_dir=workdir / "auth_info",
        health_url=f"http://127.0.0.1:{port}/health",
        company_id=company_id,
        fallback_tag=tag,
    )


def _extra_lines(lines: list[str], extra: Mapping[str, str]) -> list[str]:
    taken = {line.split("=", 1)[0] for line in lines if "=" in line}
    out = []
    for name, value in extra.items():
        if not _ENV_NAME_RE.fullmatch(name):
            raise InputError(f"extra .env name {name[:40]!r} is not [A-Z][A-Z0-9_]*")
        if name in taken:
            raise InputError(f"extra .env name {name} is already set by the deployment")
        text = str(value)
        if "\n" in text or "\r" in text:
            raise InputError(f"extra .env value of {name} holds a line break")
        out.append(f"{name}={text}")
        taken.add(name)
    return out


def operator_settings(stack: Stack, settings: DrillSettings, pm2: Pm2) -> Settings:
    """The operator's settings for this stack, as `stack.up` writes them: the service DSN, the
    alert channels (the stack's fakes), the PM2 running the service, S3 (nothing about the
    stack itself)."""
    from resilience.config import Settings

    ep = stack.endpoints
    operator = {name: getattr(settings, name) for name in Settings.model_fields}
    regions = ep.s3
    operator.update(
        service_dsn=ep.service_dsn,
        sentry_dsn=ep.sentry_dsn,
        telegram_api_url=ep.telegram_api_url or settings.telegram_api_url,
        telegram_bot_token=ep.telegram_bot_token,
        telegram_chat_id=ep.telegram_chat_id,
        pm2_bin=pm2.binary,
        pm2_home=pm2.home,
    )
    if "moscow" in regions and "eu" in regions:
        operator.update(
            s3_endpoint_moscow=regions["moscow"].endpoint_url,
            s3_endpoint_eu=regions["eu"].endpoint_url,
            s3_bucket_moscow=regions["moscow"].bucket,
            s3_bucket_eu=regions["eu"].bucket,
            s3_access_key_id=ep.s3_access_key_id or None,
            s3_secret_access_key=ep.s3_secret_access_key or None,
        )
    return Settings.model_validate(operator)


def backup_settings(
    stack: Stack, base: Settings | None, work: Path, *, fresh_buckets: bool = True
) -> Settings:
    """`base` (or empty settings) with backups on this stack: its S3 regions (in buckets of
    their own when `fresh_buckets`, so a test's listings are its own), its admin DSN for
    scratch restores, and the spool, validation log and run records under `work`."""
    from pydantic import SecretStr

    from resilience.config import Settings
    from resilience.infra.s3 import regions_from_settings

    ep = stack.endpoints
    values = {name: getattr(base, name) for name in Settings.model_fields} if base else {}
    suffix = secrets.token_hex(4)
    values.update(
        service_dsn=SecretStr(ep.service_dsn),
        restore_dsn=SecretStr(ep.admin_dsn),
        s3_endpoint_moscow=ep.s3["moscow"].endpoint_url,
        s3_endpoint_eu=ep.s3["eu"].endpoint_url,
        s3_bucket_moscow=f"t-moscow-{suffix}" if fresh_buckets else ep.s3["moscow"].bucket,
        s3_bucket_eu=f"t-eu-{suffix}" if fresh_buckets else ep.s3["eu"].bucket,
        s3_access_key_id=SecretStr(ep.s3_access_key_id),
        s3_secret_access_key=SecretStr(ep.s3_secret_access_key),
        backup_spool_dir=work / "spool",
        backup_validation_log=work / "validation.jsonl",
        runs_dir=work / "runs",
    )
    settings = Settings.model_validate(values)
    for store in regions_from_settings(settings):
        store.ensure_bucket()
    return settings


@dataclass(frozen=True)
class StandinOnStack:
    """A seeded company and the stand-in serving it, with the settings a switch needs."""

    deployed: DeployedService
    dataset: Dataset
    settings: Settings
    pm2: Pm2


@contextmanager
def standin_on_stack(
    stack: Stack,
    settings: DrillSettings,
    base: Path,
    *,
    prefix: str,
    keys: int,
    write_interval_ms: int = 100,
    verify_timeout: float = 60.0,
    snapshot_max_age: float = 600.0,
    extra_env: Mapping[str, str] | None = None,
    kind: str = "standin",
) -> Iterator[StandinOnStack]:
    """Seed a fresh company (`keys` keys plus legacy rows) through the admin DSN, deploy the
    stand-in for it under `base`, and afterwards undo every fault and remove both again.
    `extra_env` goes to :func:`deploy_standin`. ``kind`` "baileys": the drill service on real
    Baileys code instead (:mod:`resilience.drill.baileys`), its rows seeded as it writes them
    (base64 Buffers, what Baileys' BufferJSON reads) and its creds' ``nextPreKeyId`` past the
    seeded pre-keys."""
    from resilience.infra.pm2 import find_pm2

    ep = stack.endpoints
    company = f"{prefix}_{secrets.token_hex(5)}"
    data = _seed_company(ep.admin_dsn, company, keys, kind)
    pm2 = Pm2(find_pm2(settings.tools_dir), home=Path(ep.pm2_home) if ep.pm2_home else None)
    app = f"baileys-{company}"
    try:
        deployed = _deploy_service(
            kind,
            pm2,
            base / "service",
            settings,
            service_dsn=ep.service_dsn,
            company_id=company,
            app=app,
            write_interval_ms=write_interval_ms,
            extra_env=extra_env,
        )
        switch_settings = operator_settings(stack, settings, pm2).model_copy(
            update={
                "company_id": company,
                "pm2_app": app,
                "service_dir": deployed.workdir,
                "fallback_tag": deployed.fallback_tag,
                "health_url": deployed.health_url,
                "metrics_url": deployed.health_url.removesuffix("/health") + "/metrics",
                "monitor_state_file": base / "monitor" / "state.json",
                "snapshot_dir": base / "snapshots",
                "runs_dir": base / "runs",
                "snapshot_max_age": snapshot_max_age,
                "verify_timeout": verify_timeout,
            }
        )
        yield StandinOnStack(deployed, data, switch_settings, pm2)
    finally:
        _tear_down(stack, ep, pm2, app, company)


def _seed_company(admin_dsn: str, company: str, keys: int, kind: str) -> Dataset:
    """Generate `keys` keys for `company` and insert them through the admin DSN: as the
    stand-in's seed (legacy rows included), or for ``kind`` "baileys" as Baileys writes them."""
    from resilience.authstate.codec import Style
    from resilience.authstate.dataset import generate
    from resilience.authstate.pgconn import connect
    from resilience.authstate.view import baileys_ref

    data = generate(company, keys)
    with connect(admin_dsn) as conn:
        if kind == "baileys":
            # a site whose rows the old file migration never touched: no legacy twins (a
            # Baileys service reads only real types, so a twin would outlive the key it deletes;
            # legacy rows are the stand-in drills' business)
            data.keys = [
                k for k in data.keys if baileys_ref(k.key_type, k.key_id) == (k.key_type, k.key_id)
            ]
            numbers = [
                int(k.key_id) for k in data.keys if k.key_type == "pre-key" and k.key_id.isdigit()
            ]
            data.creds["nextPreKeyId"] = data.creds["firstUnuploadedPreKeyId"] = (
                max(numbers, default=0) + 1
            )
            as_baileys: Style = "base64"
            rows = ((record, as_baileys) for record in data.keys)
            pgraw.insert_raw(conn, company, data.creds, rows, creds_style=as_baileys)
        else:
            pgraw.insert_raw(conn, company, data.creds, data.rows())
    return data


def _deploy_service(
    kind: str,
    pm2: Pm2,
    workdir: Path,
    settings: DrillSettings,
    *,
    service_dsn: str,
    company_id: str,
    app: str,
    write_interval_ms: int,
    extra_env: Mapping[str, str] | None,
) -> DeployedService:
    """The stand-in (or, ``kind`` "baileys", the drill service on real Baileys code) deployed in
    `workdir` as PM2 app `app`."""
    if kind == "baileys":
        from resilience.drill.baileys import deploy_baileys

        return deploy_baileys(
            pm2,
            workdir,
            settings.tools_dir,
            service_dsn=service_dsn,
            company_id=company_id,
            app=app,
            write_interval_ms=write_interval_ms,
        )
    return deploy_standin(
        pm2,
        workdir,
        service_dsn=service_dsn,
        company_id=company_id,
        app=app,
        write_interval_ms=write_interval_ms,
        extra_env=extra_env,
    )


def _tear_down(stack: Stack, ep: Endpoints, pm2: Pm2, app: str, company: str) -> None:
    """Undo every fault (PostgreSQL started again when it does not answer), delete the PM2 app
    and the company's rows."""
    from resilience.authstate.pgconn import connect
    from resilience.chaos.toxiproxy import ToxiproxyClient
    from resilience.errors import DatabaseError

    with ToxiproxyClient(ep.toxiproxy_url) as toxiproxy:
        toxiproxy.reset()
    try:
        connect(ep.admin_dsn, timeout=2).close()
    except DatabaseError:
        stack.start_postgres()
    with suppress(StackError):
        pm2.delete(app)
    with connect(ep.admin_dsn) as conn:
        pgraw.delete_company(conn, company)
