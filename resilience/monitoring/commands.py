"""What the tasks call: the long-running monitor, its PM2 entry, and one health look."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from resilience.config import Settings
from resilience.infra import daemon
from resilience.infra.commandline import Launcher
from resilience.infra.daemon import Daemon
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


def health_document(
    settings: Settings, *, direct: bool = False, history: bool = False
) -> dict[str, Any]:
    """The health document: from the running monitor when one answers, else computed here
    from the service's /metrics and the database (read-only: no alert is sent, no state kept).
    ``via`` says which. ``history``: also the monitor's recent samples as ``history`` (its
    ``/history.json``; computed directly, the one sample of this look)."""
    url = monitor_url(settings)
    reason = "asked to compute directly" if direct else None
    if not direct:
        try:
            response = httpx.get(url + "/health.json", timeout=settings.monitor_http_timeout)
            if response.status_code == 200:
                doc: dict[str, Any] = response.json()
                doc["via"] = {"monitor": url}
                if history:
                    doc["history"] = _history(url, settings.monitor_http_timeout)
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
    if history:
        doc["history"] = list(monitor.history)
    return doc


def _history(url: str, timeout: float) -> list[dict[str, Any]]:
    """The monitor's samples, or none when it does not serve them (an older monitor)."""
    try:
        response = httpx.get(url + "/history.json", timeout=timeout)
        samples = response.json().get("samples", []) if response.status_code == 200 else []
    except (httpx.HTTPError, ValueError, AttributeError):
        return []
    return [s for s in samples if isinstance(s, dict)]


def exit_code(doc: dict[str, Any]) -> int:
    return EXIT_CODES.get(str(doc.get("status")), 2)


def monitor_daemon(settings: Settings) -> Daemon:
    return Daemon(settings.monitor_app, "monitor.run", "monitor.log")


def install_monitor(
    settings: Settings,
    project: Path | Launcher,
    ecosystem_file: Path,
    log_dir: Path,
    *,
    dry_run: bool,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write the monitor's ecosystem file and start (or restart) it under the deployment's
    PM2. Re-runs converge: the app is replaced by the file's definition."""
    return daemon.install(
        settings,
        monitor_daemon(settings),
        project,
        ecosystem_file,
        log_dir,
        dry_run=dry_run,
        env=env,
        shown={"url": monitor_url(settings)},
    )


def uninstall_monitor(settings: Settings) -> bool:
    return daemon.uninstall(settings, settings.monitor_app)
