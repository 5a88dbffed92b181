"""The embedded stack as one more deployment: a seeded company, the stand-in serving it under
the stack's PM2, and the settings file that describes it to the operator's commands.

`stack.up` calls :func:`deploy_demo`, then :func:`write_settings_file`; from then on
`./run restore.to-files`, `restore.snapshot` and the rest run against the embedded stack on
settings alone, exactly as they would against production.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from pydantic import SecretStr

from resilience.authstate import pgraw
from resilience.authstate.dataset import generate
from resilience.authstate.pgconn import connect
from resilience.authstate.pgstore import PgAuthStore
from resilience.config import DrillSettings, Settings, settings_as_env, stack_settings_file
from resilience.drill.stack.base import Stack
from resilience.drill.standin.deploy import FALLBACK_TAG, deploy_standin, operator_settings
from resilience.infra.fsutil import atomic_write
from resilience.infra.pm2 import Pm2, find_pm2

DEMO_COMPANY = "demo"
DEMO_KEYS = 1313
DEMO_APP = "baileys-whatsapp-service"
DEMO_WRITE_INTERVAL_MS = 1000
#: What the demo deployment puts in the stack's directory beside the stack: the stand-in's work
#: tree, the operator's snapshots, backup spool and validation log, and the monitor's state.
DEMO_ENTRIES = ("service", "snapshots", "backups", "monitor")

#: What the settings file names: the operator's settings of a deployment, nothing about stacks.
SETTINGS_FILE_FIELDS = (
    "service_dsn",
    "company_id",
    "pm2_app",
    "pm2_bin",
    "pm2_home",
    "service_dir",
    "fallback_tag",
    "health_url",
    "metrics_url",
    "monitor_state_file",
    "snapshot_dir",
    "sentry_dsn",
    "telegram_api_url",
    "telegram_bot_token",
    "telegram_chat_id",
    "s3_endpoint_moscow",
    "s3_endpoint_eu",
    "s3_bucket_moscow",
    "s3_bucket_eu",
    "s3_access_key_id",
    "s3_secret_access_key",
    "restore_dsn",
    "backup_spool_dir",
    "backup_validation_log",
)


def deploy_demo(stack: Stack, settings: DrillSettings, *, keys: int = DEMO_KEYS) -> Settings:
    """Seed company `demo` (once) and run the stand-in for it from `<stack dir>/service`, a git
    work tree with the fallback tag, under the stack's PM2; return the operator's settings."""
    ep = stack.endpoints
    pm2 = Pm2(
        find_pm2(settings.tools_dir.resolve()), home=Path(ep.pm2_home) if ep.pm2_home else None
    )
    workdir = settings.stack_dir.resolve() / "service"
    with connect(ep.admin_dsn) as conn:
        store = PgAuthStore(conn)
        if store.load_creds(DEMO_COMPANY) is None:
            data = generate(DEMO_COMPANY, keys)
            pgraw.insert_raw(store.conn, DEMO_COMPANY, data.creds, data.rows())
    if pm2.describe(DEMO_APP) is None:
        # a work tree nothing runs from is a leftover (a crashed run; perhaps checked out on
        # the fallback tag by a switch): the demo starts from a fresh one
        shutil.rmtree(workdir, ignore_errors=True)
        deployed = deploy_standin(
            pm2,
            workdir,
            service_dsn=ep.service_dsn,
            company_id=DEMO_COMPANY,
            app=DEMO_APP,
            write_interval_ms=DEMO_WRITE_INTERVAL_MS,
        )
        health_url = deployed.health_url
    else:
        health_url = _health_url(workdir)
    return operator_settings(stack, settings, pm2).model_copy(
        update={
            "company_id": DEMO_COMPANY,
            "pm2_app": DEMO_APP,
            "service_dir": workdir,
            "fallback_tag": FALLBACK_TAG,
            "health_url": health_url,
            "metrics_url": health_url.removesuffix("/health") + "/metrics",
            "monitor_state_file": settings.stack_dir.resolve() / "monitor" / "state.json",
            "snapshot_dir": settings.stack_dir.resolve() / "snapshots",
            "restore_dsn": SecretStr(ep.admin_dsn),
            "backup_spool_dir": settings.stack_dir.resolve() / "backups",
            "backup_validation_log": settings.stack_dir.resolve() / "backups" / "validation.jsonl",
        }
    )


def _health_url(workdir: Path) -> str:
    from dotenv import dotenv_values

    port = dotenv_values(workdir / ".env").get("PORT")
    return f"http://127.0.0.1:{port}/health"


def write_settings_file(settings: Settings) -> Path:
    """Write the deployment's settings (secrets included) to `path` (default: where
    :func:`~resilience.config.load_settings` looks for them), mode 0600, atomically."""
    target = stack_settings_file()
    lines = [
        "# Settings of the embedded stack, written by `./run stack.up` (mode 0600: secrets).",
        "# Tasks read this file when it exists; `.env` and the environment override it.",
    ]
    lines += [f"{k}={v}" for k, v in settings_as_env(settings, SETTINGS_FILE_FIELDS).items()]
    atomic_write(target, ("\n".join(lines) + "\n").encode(), mode=0o600)
    return target


def remove_settings_file() -> None:
    stack_settings_file().unlink(missing_ok=True)


def remove_demo(stack_dir: Path) -> None:
    """Remove the demo deployment (:data:`DEMO_ENTRIES`) and the settings file, once the stack
    (whose PM2 ran the stand-in) is down; then the stack's directory when nothing else is in
    it."""
    root = stack_dir.resolve()
    for name in DEMO_ENTRIES:
        shutil.rmtree(root / name, ignore_errors=True)
    remove_settings_file()
    with contextlib.suppress(OSError):
        root.rmdir()
