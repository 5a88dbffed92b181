"""The monitor under the stack's PM2, installed by the operator's own command, for drills."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from resilience.config import Settings, settings_as_env
from resilience.drill.stack import Stack
from resilience.infra.processes import free_port
from resilience.monitoring.commands import install_monitor, monitor_url, uninstall_monitor

PROJECT = Path(__file__).resolve().parents[2]  # where `./run monitor.run` lives


@contextmanager
def monitor_under_pm2(
    stack: Stack, settings: Settings, base: Path, **overrides: Any
) -> Iterator[tuple[Settings, str]]:
    """`monitor.install` with ``settings`` (plus ``overrides``) on a free port, its state and
    logs under ``base``, the database side read directly (a toxic on the service's path must
    not slow the monitor's own queries); yields its settings and URL, removed afterwards."""
    monitor = settings.model_copy(
        update={
            "monitor_dsn": SecretStr(stack.endpoints.admin_dsn),
            "monitor_port": free_port(),
            "monitor_interval": 0.5,
            "monitor_state_file": base / "monitor" / "state.json",
            **overrides,
        }
    )
    install_monitor(
        monitor,
        PROJECT,
        base / "monitor" / "ecosystem.json",
        base / "logs",
        dry_run=False,
        env=settings_as_env(monitor),
    )
    try:
        yield monitor, monitor_url(monitor)
    finally:
        uninstall_monitor(monitor)
