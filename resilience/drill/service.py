"""The service under test or drill: one helper for tests and drills alike.

On the local and docker stacks it is the stand-in (seeded, writing keys, keeping a log of every
acknowledged write); on the external backend it is the real service the settings name. Its mode
and digest always come from the service itself: its health endpoint, or, without one, the mode
line it logged last. Never from a file the switch wrote.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from resilience.authstate.dataset import Dataset
from resilience.authstate.naming import company_dir_name
from resilience.authstate.pgconn import connect
from resilience.config import Settings
from resilience.drill.baileys import read_writes
from resilience.drill.stack.base import Stack
from resilience.drill.standin.deploy import DeployedService
from resilience.drill.standin.writelog import WRITELOG_FILE, WriteEntry, read_writelog
from resilience.errors import ConfigError
from resilience.infra.pm2 import Pm2
from resilience.infra.waiting import wait_until
from resilience.restore import commands
from resilience.restore.preflight import Direction
from resilience.restore.verify import LogWatch
from resilience.service.health import mode_of_value


@dataclass
class ServiceUnderTest:
    stack: Stack
    deployed: DeployedService
    settings: Settings  # the operator's settings naming this service
    pm2: Pm2
    dataset: Dataset | None = None
    #: a service we deployed (the stand-in or the Baileys drill service): it keeps a write log
    #: and counts `writes_ok` in its health; False for a real service
    standin: bool = True
    writing: bool = True  # it writes keys by itself: its rows move
    kind: str = "standin"  # "standin", "baileys" (real Baileys code) or "real"

    @property
    def company(self) -> str:
        return self.deployed.company_id

    @property
    def workdir(self) -> Path:
        return self.deployed.workdir

    @property
    def auth_root(self) -> Path:
        root = self.settings.auth_root
        if root is None:
            raise ConfigError("the service has no auth dir in its settings")
        return root

    def health(self) -> dict[str, Any]:
        """The service's own view: its health endpoint, else the mode line it logged last."""
        if self.settings.health_url:
            body: dict[str, Any] = httpx.get(self.settings.health_url, timeout=2).json()
            # "files", "postgresql", ...: the mode the settings map the value to, the value kept
            mode = mode_of_value(self.settings, body.get("mode"))
            if mode is not None and mode != body.get("mode"):
                body = {**body, "mode": mode, "mode_value": body.get("mode")}
            return body
        return self._mode_from_log()

    def _mode_from_log(self) -> dict[str, Any]:
        app = self.pm2.require(self.settings.pm2_app)
        if app.out_log is None or not app.out_log.exists():
            raise ConfigError(
                f"no health URL and no PM2 log for {self.settings.pm2_app}: set "
                "RESILIENCE_HEALTH_URL or make the service log its mode line"
            )
        # one log watch for commands and drills: line by line, as the switch's verify reads it
        last = LogWatch.whole(app.out_log).last_mode(self.settings, self.company)
        if last is None:
            raise ConfigError(
                "no health URL, and the service's log has no mode line for company "
                f"{self.company}: set RESILIENCE_HEALTH_URL or RESILIENCE_*_MODE_PATTERN"
            )
        return {"mode": last, "company": self.company, "source": "log"}

    def wait_mode(self, mode: str, timeout: float = 30) -> dict[str, Any]:
        """Wait until PM2 runs the app and the service reports `mode` (the stand-in, while
        writing, also its first acknowledged write)."""

        def ok() -> dict[str, Any] | None:
            if self.pm2.require(self.deployed.app).status != "online":
                return None
            body = self.health()
            if body.get("mode") != mode:
                return None
            started = body.get("writes_ok", 0) > 0 or not (self.standin and self.writing)
            return body if started else None

        return wait_until(ok, timeout, f"the service healthy in {mode} mode")

    def write_marker(self) -> tuple[str, Any]:
        """Where the service's own writes can be counted from now on: the database's clock
        in PostgreSQL mode, the file system's in file mode (see :meth:`writes_since`)."""
        mode = str(self.health().get("mode"))
        if mode == "postgres":
            with connect(self.stack.endpoints.admin_dsn) as conn:
                row = conn.execute("SELECT now()").fetchone()
            return mode, row[0] if row else None
        return mode, time.time()

    def writes_since(self, marker: tuple[str, Any]) -> int:
        """Keys the service wrote since ``marker``, from its own traces (a real service keeps no
        write log): rows' ``updated_at`` in PostgreSQL mode, files' mtimes in file mode."""
        mode, since = marker
        if mode == "postgres":
            with connect(self.stack.endpoints.admin_dsn) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM whatsapp_keys WHERE company_id = %s AND updated_at > %s",
                    (self.company, since),
                ).fetchone()
            return int(row[0]) if row else 0
        directory = self.auth_root / company_dir_name(self.company)
        count = 0
        with os.scandir(directory) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    if entry.name != "creds.json" and entry.stat().st_mtime > since:
                        count += 1
        return count

    def acknowledged_writes(self) -> list[WriteEntry] | None:
        """Every write the stand-in acknowledged; None for a real service (it keeps none)."""
        if self.kind == "baileys":
            return read_writes(self.workdir / WRITELOG_FILE)
        return read_writelog(self.workdir / WRITELOG_FILE) if self.standin else None

    def switch(self, direction: Direction, **options: Any) -> commands.SwitchRun:
        """The switch exactly as the operator runs it: the same command, on these settings."""
        return commands.switch(self.settings, direction, company_id=self.company, **options)

    def snapshot(self, keep: int = 3) -> commands.SnapshotRun:
        """``restore.snapshot`` of the service's company as the operator's cron runs it (with
        the standby copy beside the service's directory)."""
        return commands.snapshot(self.settings, company_id=self.company, keep=keep)
