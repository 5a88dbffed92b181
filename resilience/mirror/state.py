"""What the mirror holds of each company and what one cycle changes in it: the pure part of a
cycle (no database, no disk), so it reads and tests on its own."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from resilience.authstate.codec import canonical, dumps_file
from resilience.authstate.fingerprint import KeyFingerprint, digest_of_fingerprints
from resilience.authstate.naming import CREDS_FILE, Collision, file_name_for
from resilience.authstate.view import CompanyView
from resilience.files.manifest import Manifest
from resilience.mirror import feed

Entry = tuple[str, str, str]  # Baileys (type, id), fingerprint
UNCHANGED = object()


@dataclass
class CompanyState:
    """What the mirror holds of one company (values are on disk; fingerprints in memory)."""

    company_id: str
    creds: Any | None
    entries: dict[str, Entry]  # file name -> entry
    collisions: dict[str, Collision] = field(default_factory=dict)
    _digest: str | None = field(default=None, repr=False, compare=False)

    def digest(self) -> str:
        """The set digest (computed once: a state is replaced, never changed, by a write)."""
        if self._digest is None:
            self._digest = digest_of_fingerprints(self.creds, (e[2] for e in self.entries.values()))
        return self._digest

    def counts_by_type(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for key_type, _, _ in self.entries.values():
            counts[key_type] += 1
        return dict(sorted(counts.items()))

    def manifest(self, source: str, at: datetime) -> Manifest:
        return Manifest(
            company_id=self.company_id,
            source=source,
            exported_at=at,
            key_count=len(self.entries),
            counts_by_type=self.counts_by_type(),
            digest=self.digest(),
            files={name: (t, i) for name, (t, i, _) in sorted(self.entries.items())},
            collisions=[self.collisions[n] for n in sorted(self.collisions)],
        )

    @classmethod
    def of_view(cls, view: CompanyView) -> CompanyState:
        entries = {
            name: (e.key_type, e.key_id, KeyFingerprint.of(e.key_type, e.key_id, e.record.value))
            for name, e in view.entries.items()
        }
        return cls(view.company_id, view.creds, entries, {c.file_name: c for c in view.collisions})


@dataclass
class Delta:
    """What one cycle changes in one company: files (None deletes), creds, collisions."""

    files: dict[str, tuple[Entry, bytes] | None] = field(default_factory=dict)
    creds: Any = UNCHANGED
    collisions: dict[str, Collision | None] = field(default_factory=dict)
    repaired: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.files) or self.creds is not UNCHANGED or bool(self.collisions)


@dataclass
class CycleResult:
    changes: int
    drained: bool
    files_written: int
    files_deleted: int
    repaired: list[str]
    exported: list[str]
    skipped: int
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "changes": self.changes,
            "drained": self.drained,
            "files_written": self.files_written,
            "files_deleted": self.files_deleted,
            "repaired": list(self.repaired),
            "exported": list(self.exported),
            "skipped": self.skipped,
            "duration_s": round(self.duration_s, 6),
        }


@dataclass
class CycleRead:
    """What a cycle read in its snapshot: the changes, and per company the delta to write."""

    changes: list[feed.Change] = field(default_factory=list)
    drained: bool = True
    pending: int = 0
    deltas: dict[str, Delta] = field(default_factory=dict)
    exported: list[str] = field(default_factory=list)
    skipped: int = 0


def by_company(changes: list[feed.Change]) -> dict[str, list[feed.Change]]:
    grouped: dict[str, list[feed.Change]] = defaultdict(list)
    for change in changes:
        grouped[change.company_id].append(change)
    return grouped


def _splits(text: str) -> list[tuple[str, str]]:
    return [
        (text[:at], text[at + 1 :])
        for at, char in enumerate(text)
        if char == "-" and 0 < at < len(text) - 1
    ]


def candidates(key_type: str, key_id: str) -> set[tuple[str, str]]:
    """Every ``(type, id)`` a row naming the same file as ``(key_type, key_id)`` may have:
    the key itself and every split of its joined name at a dash, as written and after
    Baileys' name fix (the old migration split fixed file names)."""
    joined = f"{key_type}-{key_id}"
    fixed = file_name_for(key_type, key_id).removesuffix(".json")
    return {(key_type, key_id), *_splits(joined), *_splits(fixed)}


def reconcile_into(state: CompanyState, view: CompanyView, delta: Delta) -> None:
    """Compare the company whole (``state`` as it will be after ``delta``) with ``view``, the
    database's, and add a repair to ``delta`` for every file that differs."""
    company_id = state.company_id
    after: dict[str, Entry | None] = dict(state.entries)
    for name, change in delta.files.items():
        after[name] = None if change is None else change[0]
    expected = CompanyState.of_view(view)
    for name in sorted(set(after) | set(expected.entries)):
        want = expected.entries.get(name)
        if after.get(name) == want:
            continue
        if want is None:
            delta.files[name] = None
        else:
            delta.files[name] = (want, dumps_file(view.entries[name].record.value))
        delta.repaired.append(f"{company_id}: {name}")
    creds_after = state.creds if delta.creds is UNCHANGED else delta.creds
    if _canon(creds_after) != _canon(view.creds):
        delta.creds = view.creds
        delta.repaired.append(f"{company_id}: {CREDS_FILE}")
    for name in set(state.collisions) | set(expected.collisions):
        if state.collisions.get(name) != expected.collisions.get(name):
            delta.collisions[name] = expected.collisions.get(name)


def applied(
    state: CompanyState, delta: Delta
) -> tuple[CompanyState, list[tuple[str, bytes]], list[str]]:
    """The state after ``delta``, the files to write (name, content) and the names to delete
    (the manifest not among them)."""
    entries = dict(state.entries)
    collisions = dict(state.collisions)
    writes: list[tuple[str, bytes]] = []
    deletes: list[str] = []
    for name, change in sorted(delta.files.items()):
        if change is None:
            entries.pop(name, None)
            deletes.append(name)
        else:
            entries[name] = change[0]
            writes.append((name, change[1]))
    creds = state.creds
    if delta.creds is not UNCHANGED:
        creds = delta.creds
        if creds is None:
            deletes.append(CREDS_FILE)
        else:
            writes.append((CREDS_FILE, dumps_file(creds)))
    for name, collision in delta.collisions.items():
        if collision is None:
            collisions.pop(name, None)
        else:
            collisions[name] = collision
    return CompanyState(state.company_id, creds, entries, collisions), writes, deletes


def _canon(value: Any) -> bytes | None:
    return None if value is None else canonical(value)
