"""What the tasks call: the long-running monitor, its PM2 entry, and one health look."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from resilience.config import ENV_PREFIX, Settings
from resilience.infra.fsutil import atomic_write
from resilience.infra.pm2 import pm2_for
from resilience.monitoring.monitor import EXIT_CODES, Monitor
from resilience.monitoring.server import serve

log = logging.getLogger(__name__)


def monitor_url(settings: Settings) -> str:
    if settings.monitor_url:
        return settings.monitor_url.rstrip("/")
    return f"http://{settings.monitor_host}:{settings.monitor_port}"


def run_monitor(
    settings: Settings,
    stop: threading.Event,
    on_cycle: Callable[[dict[str, Any]], None] | None = None,
    on_listening: Callable[[str], None] | None = None,
) -> int:
    """Serve and cycle every ``monitor_interval`` until ``stop`` is set; the cycles run.
    An exception inside a cycle is logged and the next cycle runs: the monitor outlives what
    it watches."""
    monitor = Monitor(settings)
    server = serve(monitor, settings.monitor_host, settings.monitor_port)
    if on_listening is not None:
        on_listening(f"http://{settings.monitor_host}:{server.port}")
    try:
        while not stop.is_set():
            try:
                doc = monitor.cycle()
            except Exception:  # a bug in one cycle must not end monitoring
                log.exception("a monitor cycle failed")
            else:
                if on_cycle is not None:
                    on_cycle(doc)
            stop.wait(settings.monitor_interval)
    finally:
        server.shutdown()
        monitor.close()
    return monitor.cycles


def health_document(settings: Settings, *, direct: bool = False) -> dict[str, Any]:
    """The health document: from the running monitor when one answers, else computed here
    from the service's /metrics and the database (read-only: no alert is sent, no state kept).
    ``via`` says which."""
    url = monitor_url(settings)
    reason = "asked to compute directly" if direct else None
    if not direct:
        try:
            response = httpx.get(url + "/health.json", timeout=settings.monitor_http_timeout)
            if response.status_code == 200:
                doc: dict[str, Any] = response.json()
                doc["via"] = {"monitor": url}
                return doc
            reason = f"the monitor at {url} answered HTTP {response.status_code}"
        except (httpx.HTTPError, ValueError) as exc:
            reason = f"no monitor at {url} ({type(exc).__name__})"
    monitor = Monitor(settings, alerting=False, keep_state=False)
    try:
        doc = monitor.cycle()
    finally:
        monitor.close()
    doc["via"] = {"direct": reason}
    return doc


def exit_code(doc: dict[str, Any]) -> int:
    return EXIT_CODES.get(str(doc.get("status")), 2)


def monitor_ecosystem(
    settings: Settings, project: Path, log_dir: Path, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The monitor as a PM2 app: restarted when it exits, stopped with SIGINT and a grace.
    Settings come from the project's files; ``env`` (default: the ``RESILIENCE_*`` variables
    of the installing environment) goes into the app's env (the file is 0600)."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)}
    env = {**env, "TZ": "UTC"}
    return {
        "apps": [
            {
                "name": settings.monitor_app,
                "script": str(project / "run"),
                "args": ["monitor.run"],
                "cwd": str(project),
                "interpreter": "none",
                "autorestart": True,
                "kill_timeout": 10000,
                "time": True,
                "out_file": str(log_dir / "monitor.log"),
                "error_file": str(log_dir / "monitor.log"),
                "env": env,
            }
        ]
    }


def install_monitor(
    settings: Settings,
    project: Path,
    ecosystem_file: Path,
    log_dir: Path,
    *,
    dry_run: bool,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write the monitor's ecosystem file and start (or restart) it under the deployment's
    PM2. Re-runs converge: the app is replaced by the file's definition."""
    ecosystem = monitor_ecosystem(settings, project, log_dir, env)
    plan: dict[str, Any] = {
        "app": settings.monitor_app,
        "ecosystem_file": str(ecosystem_file),
        "log_file": str(log_dir / "monitor.log"),
        "url": monitor_url(settings),
        "dry_run": dry_run,
        "env_names": sorted(ecosystem["apps"][0]["env"]),
    }
    if dry_run:
        return plan
    ecosystem_file.parent.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(ecosystem_file, json.dumps(ecosystem, indent=2).encode())
    pm2 = pm2_for(settings)
    if pm2.describe(settings.monitor_app) is not None:
        pm2.delete(settings.monitor_app)  # the file's definition wins (env, args)
    pm2.start(ecosystem_file)
    app = pm2.require(settings.monitor_app)
    plan.update({"pid": app.pid, "status": app.status})
    return plan


def uninstall_monitor(settings: Settings) -> bool:
    pm2 = pm2_for(settings)
    if pm2.describe(settings.monitor_app) is None:
        return False
    pm2.delete(settings.monitor_app)
    return True
