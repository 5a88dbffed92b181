"""What Baileys sees of a company's rows: one key per file name, under the name Baileys uses.

Baileys looks a key up by `(type, id)` and, in files, by `fixFileName(f"{type}-{id}.json")`.
Legacy rows (`pre`/`key-5`) name the same file as `pre-key`/`5`, so the service's view of a
company is one record per file name (collisions resolved, newest `updated_at` wins) under the
Baileys reference of that file. Digests of the database and of a directory are taken over this
view, so the two can be compared.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from resilience.authstate.fingerprint import AuthDigest, digest_of
from resilience.authstate.model import KNOWN_KEY_TYPES, KeyRecord
from resilience.authstate.naming import Collision, resolve_collisions

_TYPES_LONGEST_FIRST = sorted(KNOWN_KEY_TYPES, key=len, reverse=True)
_KNOWN = frozenset(KNOWN_KEY_TYPES)


def baileys_ref(key_type: str, key_id: str) -> tuple[str, str]:
    """The `(type, id)` Baileys would ask for to reach this row's file.

    Known types are themselves. A legacy type split at the wrong dash is re-split at the
    longest known type (`pre` + `key-5` -> `pre-key` + `5`); anything else passes through.
    """
    if key_type in _KNOWN:
        return key_type, key_id
    joined = f"{key_type}-{key_id}"
    for known in _TYPES_LONGEST_FIRST:
        if joined.startswith(known + "-") and len(joined) > len(known) + 1:
            return known, joined[len(known) + 1 :]
    return key_type, key_id


@dataclass(frozen=True)
class ViewEntry:
    file_name: str
    key_type: str  # Baileys reference
    key_id: str
    record: KeyRecord  # the row it comes from (may be a legacy row)


@dataclass
class CompanyView:
    company_id: str
    creds: Any | None
    entries: dict[str, ViewEntry]  # by file name
    collisions: list[Collision] = field(default_factory=list)

    def key_values(self) -> list[tuple[str, str, Any]]:
        return [(e.key_type, e.key_id, e.record.value) for e in self.entries.values()]

    def digest(self) -> AuthDigest:
        return digest_of(self.company_id, self.creds, self.key_values())

    def counts_by_type(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in self.entries.values():
            counts[entry.key_type] = counts.get(entry.key_type, 0) + 1
        return dict(sorted(counts.items()))


def view_of(company_id: str, creds: Any | None, records: Iterable[KeyRecord]) -> CompanyView:
    """The service's view of one company's rows."""
    chosen, collisions = resolve_collisions(records)
    entries = {}
    for name, record in chosen.items():
        key_type, key_id = baileys_ref(record.key_type, record.key_id)
        entries[name] = ViewEntry(name, key_type, key_id, record)
    return CompanyView(company_id, creds, entries, collisions)


def digest_of_keys(
    company_id: str, creds: Any | None, keys: Mapping[tuple[str, str], Any]
) -> AuthDigest:
    """Digest of a `{(type, id): value}` map (a directory read back, or a service's memory)."""
    return digest_of(company_id, creds, [(t, i, v) for (t, i), v in keys.items()])
