"""The mirror as the switch's source when PostgreSQL is unreachable.

A mirror's directory has the layout of a snapshot (``company_<id>/`` with its manifest), and its
``position.json`` plays the part of ``snapshot.json``: the time every write before which is in
the files, and each company's digest. So the switch installs it exactly as it installs a
snapshot (digests checked against the manifest and the position, staged and swapped in), after
stopping the mirror process so the copy cannot change under it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from resilience.config import Settings, validate_company_id
from resilience.errors import DataError, StackError
from resilience.files.snapshot import CompanyEntry, Snapshot
from resilience.infra.pm2 import Pm2
from resilience.mirror.position import Position, read_position

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MirrorFallback:
    """A mirror's confirmed copy of one company."""

    mirror_dir: Path
    company_id: str
    position: Position

    @property
    def confirmed_at(self) -> datetime:
        assert self.position.confirmed_at is not None
        return self.position.confirmed_at

    def age_s(self, now: datetime | None = None) -> float:
        return ((now or datetime.now(UTC)) - self.confirmed_at).total_seconds()

    def loss_window_s(self, now: datetime | None = None) -> float:
        """The mirror's lag at the moment it lost the database (now, if it has not yet)."""
        window = self.position.loss_window_s(now)
        return 0.0 if window is None else window

    def as_snapshot(self) -> Snapshot:
        entry = self.position.companies[self.company_id]
        return Snapshot(
            self.mirror_dir,
            self.confirmed_at,
            {
                self.company_id: CompanyEntry(
                    key_count=int(entry.get("key_count", 0)), digest=str(entry["digest"])
                )
            },
        )

    def to_dict(self) -> dict[str, Any]:
        p = self.position
        return {
            "mirror_dir": str(self.mirror_dir),
            "mirror_confirmed_at": self.confirmed_at.isoformat(),
            "mirror_failing_since": p.failing_since.isoformat() if p.failing_since else None,
            "mirror_state": p.state,
            "mirror_loss_window_s": round(self.loss_window_s(), 3),
            "mirror_last_change_id": p.last_change_id,
        }


def mirror_fallback(settings: Settings, company_id: str) -> MirrorFallback | None:
    """The mirror's copy of ``company_id`` when the mirror has confirmed a position holding
    it; None otherwise (no mirror, never confirmed, an unreadable position: logged)."""
    validate_company_id(company_id)
    mirror_dir = Path(settings.mirror_dir)
    try:
        position = read_position(mirror_dir)
    except DataError as exc:
        log.warning("mirror not usable: %s", exc)
        return None
    if position is None or position.confirmed_at is None:
        return None
    if company_id not in position.companies:
        return None
    return MirrorFallback(mirror_dir, company_id, position)


def stop_mirror_process(settings: Settings, pm2: Pm2) -> str:
    """Stop the mirror's PM2 app so its copy cannot change while it is installed; what was
    done ("stopped", "not running", "not under PM2")."""
    try:
        app = pm2.describe(settings.mirror_app)
    except StackError as exc:
        log.warning("cannot ask PM2 about the mirror: %s", exc)
        return "not under PM2"
    if app is None:
        return "not under PM2"
    if app.status != "online":
        return "not running"
    pm2.stop(settings.mirror_app)
    return "stopped"
