"""A backup's manifest: what the dump beside it holds, so a restore is verified key by key.

Uploaded after the dump, so an object without a manifest is never taken for a backup. It records
the id, kind, SHA-256 and size of the dump, the row count per table, server and client versions,
start and end time, the previous backup's id, and for every company its key count and set
digest (:mod:`resilience.authstate.view`: the service's view, legacy twins resolved, what a
directory of files gives) and the digest of its rows as stored, computed by PostgreSQL in the
dump's snapshot (:mod:`resilience.authstate.pgdigest`), which a restore is verified by.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from resilience.errors import DataError

FORMAT = 1
Kind = Literal["hourly", "daily", "monthly"]
KINDS: tuple[Kind, ...] = ("hourly", "daily", "monthly")
PREFIX = "baileys-auth"
_ID_RE = re.compile(r"^\d{8}T\d{12}Z$")  # UTC start, to the microsecond: unique
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def new_id(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def id_time(backup_id: str) -> datetime:
    return datetime.strptime(backup_id, "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)


def dump_key(backup_id: str) -> str:
    return f"{PREFIX}/{backup_id}/dump.pgc"


def manifest_key(backup_id: str) -> str:
    return f"{PREFIX}/{backup_id}/manifest.json"


@dataclass
class CompanyDigest:
    key_count: int
    digest: str
    # keys per Baileys type and whether creds were there; None in manifests written before
    # they were recorded (a comparison then uses the total alone)
    by_type: dict[str, int] | None = None
    has_creds: bool | None = None
    # SHA-256 of the company's rows as stored (resilience.authstate.pgdigest), in the dump's
    # snapshot; None in manifests written before it was recorded (verified by decoding then)
    stored_digest: str | None = None


@dataclass
class BackupManifest:
    id: str
    kind: Kind
    started_at: str
    ended_at: str
    sha256: str
    size: int
    rows: dict[str, int]
    companies: dict[str, CompanyDigest]
    server_version: int
    client_version: int
    previous_id: str | None = None
    tables: list[str] = field(default_factory=list)  # empty: the whole database
    format: int = FORMAT

    @property
    def created(self) -> datetime:
        return id_time(self.id)

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> BackupManifest:
        def bad(why: str) -> DataError:
            return DataError(f"manifest {where} is invalid: {why}")

        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise bad("not JSON") from None
        if not isinstance(data, dict):
            raise bad("not an object")
        if data.get("format") != FORMAT:
            raise bad(f"format {data.get('format')!r} is not {FORMAT}")
        try:
            companies = {
                str(c): CompanyDigest(
                    int(v["key_count"]),
                    str(v["digest"]),
                    None
                    if v.get("by_type") is None
                    else {str(t): int(n) for t, n in dict(v["by_type"]).items()},
                    None if v.get("has_creds") is None else bool(v["has_creds"]),
                    None if v.get("stored_digest") is None else str(v["stored_digest"]),
                )
                for c, v in dict(data["companies"]).items()
            }
            manifest = cls(
                id=str(data["id"]),
                kind=data["kind"],
                started_at=str(data["started_at"]),
                ended_at=str(data["ended_at"]),
                sha256=str(data["sha256"]),
                size=int(data["size"]),
                rows={str(k): int(v) for k, v in dict(data["rows"]).items()},
                companies=companies,
                server_version=int(data["server_version"]),
                client_version=int(data["client_version"]),
                previous_id=data.get("previous_id"),
                tables=[str(t) for t in data.get("tables", [])],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"{type(exc).__name__} {exc}") from None
        if not _ID_RE.match(manifest.id) or manifest.kind not in KINDS:
            raise bad("id or kind malformed")
        if not _HEX64.match(manifest.sha256) or manifest.size < 0:
            raise bad("sha256 or size malformed")
        if any(
            not _HEX64.match(c.digest)
            or (c.stored_digest is not None and not _HEX64.match(c.stored_digest))
            for c in manifest.companies.values()
        ):
            raise bad("a company digest is malformed")
        return manifest

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "size": self.size,
            "rows": self.rows,
            "companies": len(self.companies),
            "sha256": self.sha256,
        }
