"""The mirror under the stack's PM2, installed by the operator's own commands, for drills."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from resilience.config import Settings, settings_as_env
from resilience.errors import DatabaseError
from resilience.infra.waiting import wait_until
from resilience.mirror.commands import change_feed, install_mirror, uninstall_mirror
from resilience.mirror.position import Position, read_position

PROJECT = Path(__file__).resolve().parents[2]  # where `./run mirror.run` lives


def fresh_position(
    settings: Settings, company_id: str, after: datetime, timeout: float = 60
) -> Position:
    """Wait until the mirror has confirmed a position after ``after`` that holds the
    company, and return it."""

    def ready() -> Position | None:
        position = read_position(settings.mirror_dir)
        if (
            position is not None
            and position.confirmed_at is not None
            and position.confirmed_at > after
            and company_id in position.companies
        ):
            return position
        return None

    return wait_until(ready, timeout, f"the mirror confirming a position after {after}")


@contextmanager
def mirror_under_pm2(
    settings: Settings, base: Path, company_id: str, **overrides: Any
) -> Iterator[Settings]:
    """`mirror.feed-install` and `mirror.install` with ``settings`` (plus ``overrides``), the
    mirror's directories and logs under ``base``; yields the settings naming it (the switch
    needs them to find and stop it) once it follows ``company_id``. Afterwards the mirror
    leaves PM2 and the feed is removed (the database as the other drills know it)."""
    mirror = settings.model_copy(
        update={
            "mirror_dir": base / "mirror",
            "mirror_app": f"mirror-{company_id}",
            "mirror_poll_interval": 0.2,
            "runs_dir": base / "runs",
            **overrides,
        }
    )
    change_feed(mirror, "install", dry_run=False)
    try:
        started = datetime.now(UTC)
        install_mirror(
            mirror,
            PROJECT,
            base / "mirror-pm2" / "ecosystem.json",
            base / "logs",
            dry_run=False,
            env=settings_as_env(mirror),
        )
        fresh_position(mirror, company_id, started)
        yield mirror
    finally:
        with contextlib.suppress(Exception):
            uninstall_mirror(mirror)
        with contextlib.suppress(DatabaseError):
            change_feed(mirror, "remove", dry_run=False)


def mirror_log(base: Path) -> str:
    path = base / "logs" / "mirror.log"
    return path.read_text(errors="replace") if path.exists() else ""
