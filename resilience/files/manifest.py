"""``manifest.json``: what an exported company directory holds, with the exact key ids.

Names do not reverse (docs/domain.md §3): the manifest records the exact ``(type, id)`` of every
file, the counts per type, the set digest, the source (redacted) and the time of the export, and
the legacy collisions resolved. Export, snapshot and import all read and write it here.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from resilience.authstate.codec import parse
from resilience.authstate.naming import (
    MANIFEST_FILE,
    Collision,
    KeyRef,
    company_dir_name,
    file_name_for,
)
from resilience.config import validate_company_id
from resilience.errors import DataError, InputError
from resilience.infra.timefmt import iso_or_none as _iso

MANIFEST_FORMAT = 1
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")

__all__ = [
    "MANIFEST_FILE",
    "MANIFEST_FORMAT",
    "Manifest",
    "collision_to_dict",
    "parse_manifest",
    "read_manifest",
]


def _ref_to_json(ref: KeyRef) -> list[str | None]:
    return [ref[0], ref[1], _iso(ref[2])]


def collision_to_dict(collision: Collision) -> dict[str, Any]:
    """JSON form of a :class:`Collision` (times as ISO 8601)."""
    return {
        "file_name": collision.file_name,
        "chosen": _ref_to_json(collision.chosen),
        "dropped": [_ref_to_json(ref) for ref in collision.dropped],
    }


@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` of an exported company directory."""

    company_id: str
    source: str
    exported_at: datetime
    key_count: int
    counts_by_type: dict[str, int]
    digest: str
    files: dict[str, tuple[str, str]]  # file name -> Baileys (type, id)
    collisions: list[Collision] = field(default_factory=list)
    format: int = MANIFEST_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "company_id": self.company_id,
            "source": self.source,
            "exported_at": self.exported_at.isoformat(),
            "key_count": self.key_count,
            "counts_by_type": dict(self.counts_by_type),
            "digest": self.digest,
            "collisions": [collision_to_dict(c) for c in self.collisions],
            "files": {name: [t, i] for name, (t, i) in self.files.items()},
        }

    def to_json(self) -> bytes:
        """One member per line, each value compact (``files`` last: the summary reads first).
        ASCII only: ids from the network stay readable and never break the file's encoding.
        Compact values go through json's C encoder; an indented dump of 100k files took a
        second in its pure-Python one."""
        members = [
            f" {json.dumps(name)}: {json.dumps(value, ensure_ascii=True)}"
            for name, value in self.to_dict().items()
        ]
        return ("{\n" + ",\n".join(members) + "\n}\n").encode("ascii")


def _bad(path: Path, why: str) -> DataError:
    return DataError(f"manifest {path} is invalid: {why}")


def _time(text: Any, path: Path, what: str) -> datetime | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise _bad(path, f"{what} is not a time")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _bad(path, f"{what} is not an ISO 8601 time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _ref_from_json(item: Any, path: Path) -> KeyRef:
    if (
        not isinstance(item, list)
        or len(item) != 3
        or not isinstance(item[0], str)
        or not isinstance(item[1], str)
    ):
        raise _bad(path, "a collision entry is not [type, id, updated_at]")
    return item[0], item[1], _time(item[2], path, "a collision time")


def _collision_from_json(item: Any, path: Path) -> Collision:
    if not isinstance(item, dict) or not isinstance(item.get("file_name"), str):
        raise _bad(path, "a collision is not an object with a file_name")
    dropped = item.get("dropped")
    if not isinstance(dropped, list):
        raise _bad(path, "a collision has no list of dropped rows")
    return Collision(
        file_name=item["file_name"],
        chosen=_ref_from_json(item.get("chosen"), path),
        dropped=[_ref_from_json(ref, path) for ref in dropped],
    )


def parse_manifest(data: Any, path: Path) -> Manifest:
    """A :class:`Manifest` from parsed JSON; :class:`DataError` naming what is wrong."""
    if not isinstance(data, dict):
        raise _bad(path, "not a JSON object")
    if data.get("format") != MANIFEST_FORMAT:
        raise _bad(path, f"format {data.get('format')!r} is not {MANIFEST_FORMAT}")
    company_id = data.get("company_id")
    try:
        if not isinstance(company_id, str):
            raise InputError("not a string")
        validate_company_id(company_id)
    except InputError:
        raise _bad(path, "company_id is not a valid company id") from None
    digest = data.get("digest")
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise _bad(path, "digest is not 64 hex digits")
    files_raw = data.get("files")
    if not isinstance(files_raw, dict):
        raise _bad(path, "files is not an object")
    files: dict[str, tuple[str, str]] = {}
    for name, ref in files_raw.items():
        if (
            not isinstance(ref, list)
            or len(ref) != 2
            or not all(isinstance(part, str) for part in ref)
        ):
            raise _bad(path, f"entry {name[:60]!r} is not [type, id]")
        try:
            expected = file_name_for(ref[0], ref[1])
        except InputError:
            raise _bad(path, f"entry {name[:60]!r} holds a key no file can be named by") from None
        if expected != name:
            raise _bad(path, f"entry {name[:60]!r} holds a key of another file")
        files[name] = (ref[0], ref[1])
    key_count = data.get("key_count")
    if not isinstance(key_count, int) or isinstance(key_count, bool) or key_count != len(files):
        raise _bad(path, "key_count does not match the files listed")
    counts = data.get("counts_by_type")
    if not isinstance(counts, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in counts.values()
    ):
        raise _bad(path, "counts_by_type is not an object of counts")
    collisions = data.get("collisions", [])
    if not isinstance(collisions, list):
        raise _bad(path, "collisions is not a list")
    source = data.get("source")
    if not isinstance(source, str):
        raise _bad(path, "source is not a string")
    exported_at = _time(data.get("exported_at"), path, "exported_at")
    if exported_at is None:
        raise _bad(path, "exported_at is missing")
    return Manifest(
        company_id=company_id,
        source=source,
        exported_at=exported_at,
        key_count=key_count,
        counts_by_type={str(k): int(v) for k, v in counts.items()},
        digest=digest,
        files=files,
        collisions=[_collision_from_json(c, path) for c in collisions],
    )


def read_manifest(company_dir: Path) -> Manifest | None:
    """The manifest of an exported company directory; ``None`` if it has none.

    Raises :class:`DataError` if it cannot be read, does not parse, does not describe this
    directory's company, or lists a key under a file name that key does not have.
    """
    path = Path(company_dir) / MANIFEST_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DataError(f"cannot read manifest {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        raw = handle.read()
    try:
        data = parse(raw, where=MANIFEST_FILE)  # orjson (the json module where it refuses)
    except DataError:
        raise _bad(path, "not valid JSON") from None
    manifest = parse_manifest(data, path)
    if Path(company_dir).name != company_dir_name(manifest.company_id):
        raise _bad(path, f"it describes company {manifest.company_id!r}, not this directory")
    return manifest
