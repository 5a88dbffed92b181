"""The way back merges three ways: what the switch installed, the directory now, PostgreSQL now.

After a snapshot fallback the database was only unreachable; it still holds every write it
acknowledged after the snapshot. Making its rows equal to the directory would delete or revert
those. So the switch to files records what it installed (:class:`InstalledBase`: a fingerprint
per key file, from the export, the snapshot or the mirror's copy), and the way back compares,
file name by file name (the name is what Baileys reads):

- **base**: what the switch installed; **ours**: the directory now; **theirs**: PostgreSQL now.
- A key created, changed or deleted in file mode (ours differs from base) is written or deleted;
  when PostgreSQL also changed it since the base (and differently), file mode wins and the key
  is listed as a conflict (after a snapshot fallback the service reissues pre-key ids from the
  snapshot's ``nextPreKeyId``: those are such conflicts).
- A key untouched in file mode is left as PostgreSQL has it, also when PostgreSQL created,
  changed or deleted it after the base.
- Creds are the directory's (the service's current state); PostgreSQL creds that changed since
  the base are listed as replaced.

After a live export nothing could change PostgreSQL while the service was stopped, so theirs
equals base and the merge is the directory: today's import. Without a recorded base (a switch
made by hand, or a record lost) the directory is taken whole, as before, and that is said.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import orjson

from resilience.authstate.naming import MANIFEST_FILE, company_dir_name
from resilience.config import validate_company_id
from resilience.errors import DataError
from resilience.files.untouched import file_signatures, versions_sum
from resilience.infra.fsutil import atomic_write

Ref = tuple[str, str]
BASE_PREFIX = ".restore-base-"
#: how many ids of each class a preview shows
SHOWN = 10


# --- the base: what the switch installed ------------------------------------------------------


@dataclass
class InstalledBase:
    """What a switch to files installed for one company: a fingerprint per key file."""

    company_id: str
    source: str  # export | install-snapshot | install-mirror | keep-directory
    installed_at: str
    digest: str
    creds: str | None  # creds_fingerprint of the installed creds
    keys: dict[str, str] = field(repr=False)  # file name -> KeyFingerprint
    next_pre_key_id: int | None = None  # the installed creds' nextPreKeyId
    #: file name -> :func:`file_hash` of the bytes installed, for the files whose value is
    #: plain (codec.file_forms_plain); None when the source did not record them
    files: dict[str, str] | None = field(default=None, repr=False)
    #: file name -> [type, id, version] of the row each file holds, as the export read it,
    #: and file name -> signature of the file put in place (:mod:`.untouched`; the manifest's
    #: too: while it is untouched it maps the names as the rows do); None when the
    #: source did not record them (the way back then reads every file and row)
    rows: dict[str, list[str]] | None = field(default=None, repr=False)
    stats: dict[str, list[int]] | None = field(default=None, repr=False)
    #: :func:`~.untouched.versions_sum` of ``rows`` as ``"count:sum"``, computed when recorded
    row_sum: str | None = None

    def versions_sum(self) -> tuple[int, int]:
        """:func:`~.untouched.versions_sum` of the rows recorded (computed if not recorded)."""
        if self.row_sum is not None:
            count, total = self.row_sum.split(":")
            return int(count), int(total)
        return versions_sum((self.rows or {}).values())

    def write(self, root: Path) -> Path:
        """Atomically, 0600, beside the switch state."""
        path = base_path(root, self.company_id)
        atomic_write(path, orjson.dumps(self))  # a dataclass, natively (100k keys: ms)
        return path

    @classmethod
    def read(cls, root: Path, company_id: str) -> InstalledBase | None:
        """The recorded base of ``company_id`` in ``root``; None when there is none;
        :class:`DataError` when it cannot be read (never guessed)."""
        path = base_path(root, company_id)
        try:
            data: Any = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise DataError(
                f"the switch's record of what it installed, {path}, is unreadable: {exc}; "
                "move it away to take the directory whole"
            ) from None
        try:
            base = cls(**data)
            ok = (
                base.company_id == company_id
                and isinstance(base.keys, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in base.keys.items())
                and (
                    base.files is None
                    or (
                        isinstance(base.files, dict)
                        and all(
                            isinstance(v, str) and k in base.keys for k, v in base.files.items()
                        )
                    )
                )
                and _recorded_per_key(base)
            )
        except TypeError:
            ok = False
        if not ok:
            raise DataError(
                f"the switch's record of what it installed, {path}, is not one of company "
                f"{company_id}: move it away to take the directory whole"
            )
        return base


_ROW_SUM = re.compile(r"[0-9]{1,12}:[0-9]{1,40}")


def _recorded_per_key(base: InstalledBase) -> bool:
    """The base's row versions and file signatures, when recorded, are one per key file."""
    rows, stats = base.rows, base.stats
    if rows is None and stats is None:
        return True
    return (
        isinstance(rows, dict)
        and isinstance(stats, dict)
        and rows.keys() == base.keys.keys()
        and stats.keys() - {MANIFEST_FILE} <= base.keys.keys()
        and all(
            isinstance(row, list) and len(row) == 3 and all(isinstance(p, str) for p in row)
            for row in rows.values()
        )
        and all(
            isinstance(sig, list) and len(sig) == 4 and all(type(n) is int for n in sig)
            for sig in stats.values()
        )
        and (base.row_sum is None or bool(_ROW_SUM.fullmatch(str(base.row_sum))))
    )


def base_path(root: Path, company_id: str) -> Path:
    validate_company_id(company_id)
    return Path(root) / f"{BASE_PREFIX}{company_dir_name(company_id)}.json"


def remove_base(root: Path, company_id: str) -> None:
    base_path(root, company_id).unlink(missing_ok=True)


def record_base(
    root: Path,
    company_id: str,
    source: str,
    digest: str,
    creds: str | None,
    keys: Mapping[str, str],
    next_pre_key: int | None = None,
    files: Mapping[str, str] | None = None,
    rows: Mapping[str, list[str]] | None = None,
) -> InstalledBase:
    """Write the base of a switch that installed ``keys`` (file name -> fingerprint; ``files``:
    file name -> :func:`file_hash` of the plain files' bytes, when the source knows them;
    ``rows``: file name -> [type, id, version] of the rows exported). With ``rows`` the
    files' signatures are taken now (:mod:`.untouched`): call it before the service runs."""
    stats = row_sum = None
    if rows is not None:
        stats = file_signatures(root / company_dir_name(company_id), [*rows, MANIFEST_FILE])
        row_sum = "{}:{}".format(*versions_sum(rows.values()))
    base = InstalledBase(
        company_id,
        source,
        datetime.now(UTC).isoformat(),
        digest,
        creds,
        dict(keys),
        next_pre_key,
        None if files is None else dict(files),
        None if rows is None else dict(rows),
        stats,
        row_sum,
    )
    base.write(root)
    return base


class InstalledCopy(Protocol):
    """What an export, a snapshot install or a switch's source reports having put in place."""

    digest: str
    creds_print: str | None
    fingerprints: dict[str, str]
    next_pre_key_id: int | None


def record_installed(
    root: Path, company_id: str, source: str, copy: InstalledCopy
) -> InstalledBase:
    """:func:`record_base` of what ``copy`` put in place (with its files' hashes and its rows'
    versions when it has them: an export's result)."""
    files: Mapping[str, str] | None = getattr(copy, "file_hashes", None)
    rows: Mapping[str, list[str]] | None = getattr(copy, "row_versions", None)
    return record_base(
        root, company_id, source, copy.digest, copy.creds_print, copy.fingerprints,
        copy.next_pre_key_id, files, rows,
    )  # fmt: skip


def file_hash(key_type: str, key_id: str, raw: bytes) -> str:
    """A key file's bytes under its reference, hashed: a file of the directory whose hash is
    the base's holds what the switch installed (its fingerprint is the base's)."""
    head = f"{key_type}\0{key_id}\0".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(head + raw, digest_size=16).hexdigest()


# --- the merge --------------------------------------------------------------------------------


class Side(NamedTuple):
    """One side of the merge for one file name: the key's reference and its fingerprint
    (a named tuple: the way back makes one per key and side)."""

    ref: Ref
    fingerprint: str


@dataclass
class MergePlan:
    """What the way back takes from where, by file name."""

    base_source: str | None  # None: no base recorded, the directory taken whole
    from_files: dict[str, Ref] = field(default_factory=dict)  # written as the directory has it
    deleted_in_files: list[str] = field(default_factory=list)  # gone in file mode: deleted
    from_postgres: dict[str, Ref] = field(default_factory=dict)  # left as PostgreSQL has it
    #: of from_postgres: changed, created or deleted in PostgreSQL after the base
    changed_in_postgres: list[str] = field(default_factory=list)
    deleted_in_postgres: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # changed on both sides: files won
    creds_replaced: bool = False  # PostgreSQL's creds changed since the base and are replaced
    unchanged: int = 0  # names equal on every side

    def summary(self) -> dict[str, Any]:
        """Counts and the first ids of each class (what a dry run previews)."""

        def shown(names: Iterable[str]) -> dict[str, Any]:
            listed = sorted(names)
            return {"count": len(listed), "first": listed[:SHOWN]}

        written = [n for n in self.from_files if n not in self.conflicts]
        return {
            "base": self.base_source or "none recorded: the directory is taken whole",
            "written_from_files": shown(written),
            "deleted_in_files": shown(self.deleted_in_files),
            "kept_from_postgres": shown(self.changed_in_postgres),
            "deleted_in_postgres_kept_deleted": shown(self.deleted_in_postgres),
            "conflicts_files_won": shown(self.conflicts),
            "creds": "the directory's; PostgreSQL's creds changed since the switch and are replaced"
            if self.creds_replaced
            else "the directory's",
            "unchanged": self.unchanged,
        }


def plan_merge(
    base: InstalledBase | None,
    ours: Mapping[str, Side],
    theirs: Mapping[str, Side],
    theirs_creds: str | None,
    owned_by_files: Set[str] = frozenset(),
) -> MergePlan:
    """The merge, name by name (module text). Without a base, the directory whole.

    ``owned_by_files``: names file mode wrote even where the directory shows no change (pre-key
    ids it issued and deleted again, :func:`pre_keys_issued_in_files`)."""
    if base is None:
        plan = MergePlan(None)
        plan.from_files = {name: side.ref for name, side in ours.items()}
        plan.deleted_in_files = [name for name in theirs if name not in ours]
        plan.unchanged = sum(
            1 for n, s in ours.items() if n in theirs and theirs[n].fingerprint == s.fingerprint
        )
        return plan
    plan = MergePlan(base.source)
    for name in sorted(set(ours) | set(theirs) | set(base.keys)):
        mine, other, was = ours.get(name), theirs.get(name), base.keys.get(name)
        mine_print = mine.fingerprint if mine else None
        other_print = other.fingerprint if other else None
        if mine_print != was or name in owned_by_files:  # written in file mode: files win
            if other_print != was and other_print != mine_print:
                plan.conflicts.append(name)
            if mine is not None:
                plan.from_files[name] = mine.ref
            elif other is not None:
                plan.deleted_in_files.append(name)
        elif other is not None:  # untouched in file mode: PostgreSQL's, whatever it did
            plan.from_postgres[name] = other.ref
            if other_print != was:
                plan.changed_in_postgres.append(name)
            else:
                plan.unchanged += 1
        elif was is not None:  # deleted in PostgreSQL after the base, untouched in files
            plan.deleted_in_postgres.append(name)
    plan.creds_replaced = theirs_creds is not None and theirs_creds != base.creds
    return plan


_PRE_KEY_FILE = re.compile(r"pre-key-([0-9]{1,9})\.json")


def _pre_key_number(name: str) -> int | None:
    if not name.startswith("pre-key-"):  # most names: no regular expression run
        return None
    found = _PRE_KEY_FILE.fullmatch(name)
    return int(found.group(1)) if found else None


def _highest_pre_key(names: Iterable[str]) -> int | None:
    """The highest pre-key id among file names (a regular expression only for pre-keys)."""
    found = (_PRE_KEY_FILE.fullmatch(n) for n in names if n.startswith("pre-key-"))
    return max((int(m.group(1)) for m in found if m), default=None)


def pre_keys_issued_in_files(
    base: InstalledBase | None,
    next_pre_key: int | None,
    ours: Iterable[str],
    candidates: Iterable[str],
) -> set[str]:
    """The pre-key files among ``candidates`` whose ids the service issued in file mode.

    Baileys issues pre-key ids upwards from its creds' ``nextPreKeyId`` and deletes a pre-key
    once used. On a snapshot it issues again the ids PostgreSQL had issued after the snapshot;
    one it issued and used in file mode leaves no file, but PostgreSQL's older key of that id
    must go too. Issued in file mode: ids from the base's ``nextPreKeyId`` up to the
    directory's, and ids above the base's highest pre-key up to the directory's highest (a
    service that does not keep ``nextPreKeyId`` current)."""
    if base is None:
        return set()
    ranges: list[tuple[int, int]] = []
    issued_from = base.next_pre_key_id
    if issued_from is not None and next_pre_key is not None and next_pre_key > issued_from:
        ranges.append((issued_from, next_pre_key))
    # only a name the base has not can be above the base's highest pre-key
    ours_max = _highest_pre_key(n for n in ours if n not in base.keys)
    base_max = None if ours_max is None else _highest_pre_key(base.keys)
    if base_max is not None and ours_max is not None and ours_max > base_max:
        ranges.append((base_max + 1, ours_max + 1))
    if not ranges:
        return set()
    return {
        name
        for name in candidates
        if (n := _pre_key_number(name)) is not None and any(lo <= n < hi for lo, hi in ranges)
    }
