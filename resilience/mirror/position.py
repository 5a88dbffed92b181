"""``position.json``: how far the mirror has applied, written only once that is on disk.

The mirror writes it atomically after the files of an apply are durable, so what it says is
never ahead of the directories beside it. ``confirmed_at`` is the local time just before the
read snapshot of the last cycle that drained the change table: every change committed before
it is in the files. ``failing_since`` is when the mirror first failed to reach the database
after that (None while it reaches it): between the two lies every write a fallback to the
mirror may lose, the mirror's loss window.

The switch (:mod:`resilience.restore.switch`), ``health`` and the monitor read it here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from resilience.config import validate_company_id
from resilience.errors import DataError, InputError
from resilience.infra.fsutil import atomic_write
from resilience.infra.timefmt import iso_or_none

POSITION_FILE = "position.json"
POSITION_FORMAT = 1


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(str(value))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass
class Position:
    """The mirror's confirmed position and what it last reported."""

    confirmed_at: datetime | None = None  # every change committed before it is applied
    written_at: datetime | None = None
    last_change_id: int = 0  # highest change id applied so far
    applied_total: int = 0  # changes applied by this process
    pending_changes: int = 0  # changes behind (recorded, not yet applied) at the last cycle
    last_batch: int = 0
    last_apply_s: float = 0.0
    state: str = "starting"  # starting, following, db-unreachable, write-failed
    failing_since: datetime | None = None
    last_error: str | None = None
    pid: int | None = None
    source: str = ""
    companies: dict[str, dict[str, Any]] = field(default_factory=dict)  # digest, key_count
    reconcile_at: datetime | None = None
    reconcile_repairs_total: int = 0
    reconcile_last: list[str] = field(default_factory=list)  # "company: file" repaired last
    skipped_changes_total: int = 0  # changes of companies whose id does not validate

    def lag_s(self, now: datetime | None = None) -> float | None:
        """Seconds since the confirmed position (None before the first one)."""
        if self.confirmed_at is None:
            return None
        return max(0.0, ((now or datetime.now(UTC)) - self.confirmed_at).total_seconds())

    def loss_window_s(self, now: datetime | None = None) -> float | None:
        """The writes a fallback to the mirror may lose: from the confirmed position to the
        moment the mirror lost the database (now, when it has not noticed yet)."""
        if self.confirmed_at is None:
            return None
        end = self.failing_since or now or datetime.now(UTC)
        return max(0.0, (end - self.confirmed_at).total_seconds())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("confirmed_at", "written_at", "failing_since", "reconcile_at"):
            data[name] = iso_or_none(getattr(self, name))
        return {"format": POSITION_FORMAT, **data}

    @classmethod
    def from_dict(cls, data: Any, where: Path) -> Position:
        if not isinstance(data, dict) or data.get("format") != POSITION_FORMAT:
            raise DataError(f"mirror position {where} is not format {POSITION_FORMAT}")
        try:
            companies = data.get("companies") or {}
            if not isinstance(companies, dict):
                raise TypeError("companies is not an object")
            for company_id, entry in companies.items():
                validate_company_id(company_id)
                if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str):
                    raise TypeError(f"entry of company {company_id} is bad")
            return cls(
                confirmed_at=_time(data.get("confirmed_at")),
                written_at=_time(data.get("written_at")),
                last_change_id=int(data.get("last_change_id", 0)),
                applied_total=int(data.get("applied_total", 0)),
                pending_changes=int(data.get("pending_changes", 0)),
                last_batch=int(data.get("last_batch", 0)),
                last_apply_s=float(data.get("last_apply_s", 0.0)),
                state=str(data.get("state", "unknown")),
                failing_since=_time(data.get("failing_since")),
                last_error=None if data.get("last_error") is None else str(data["last_error"]),
                pid=None if data.get("pid") is None else int(data["pid"]),
                source=str(data.get("source", "")),
                companies=companies,
                reconcile_at=_time(data.get("reconcile_at")),
                reconcile_repairs_total=int(data.get("reconcile_repairs_total", 0)),
                reconcile_last=[str(x) for x in data.get("reconcile_last", [])],
                skipped_changes_total=int(data.get("skipped_changes_total", 0)),
            )
        except (TypeError, ValueError, InputError) as exc:
            raise DataError(f"mirror position {where} is malformed: {exc}") from None


def read_position(mirror_dir: Path) -> Position | None:
    """The mirror's position, None when it has written none; :class:`DataError` when bad."""
    path = Path(mirror_dir) / POSITION_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DataError(f"cannot read mirror position {path}: {exc.strerror}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"mirror position {path} is not valid JSON") from None
    return Position.from_dict(data, path)


def write_position(mirror_dir: Path, position: Position) -> None:
    """Replace ``position.json`` atomically (fsynced, 0600)."""
    position.written_at = datetime.now(UTC)
    payload = (json.dumps(position.to_dict(), indent=1) + "\n").encode("utf-8")
    atomic_write(Path(mirror_dir) / POSITION_FILE, payload, mode=0o600)
