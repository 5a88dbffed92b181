"""What the way back can tell untouched since an export without reading it.

- **A key file** by its signature: inode, size, modification and change times
  (:func:`signature`). The base records it while the service is stopped, right after the
  export put the files in place; any later write by the service (Baileys truncates and rewrites
  a file in place, or a tool renames a new one over it) changes the change time, which no
  process can set back (``utimensat`` sets the modification time only, and sets the change time
  to now). A file whose signature differs is read and compared by its bytes, as before.
- **A key row** by its version (``xmin``): an update or a delete and insert makes a new row
  version with the writing transaction's id; an export reads each row's version in its one
  snapshot. A row whose version is the one exported holds the exported value.

Both are as git's index tells a file unchanged by its stat data: a shortcut taken only when
everything it relies on was recorded; otherwise the way back reads and compares everything.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resilience.authstate.filestore import TEMP_PREFIX
from resilience.authstate.naming import CREDS_FILE, FILE_SUFFIX, MANIFEST_FILE
from resilience.authstate.pgconn import Conn, database_errors
from resilience.config import validate_company_id
from resilience.errors import DatabaseError, DataError


def signature(info: os.stat_result) -> list[int]:
    """A regular file's signature: inode, size, modification and change times (ns)."""
    return [info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]


def file_signatures(company_dir: Path, names: Iterable[str]) -> dict[str, list[int]]:
    """The signature of each of ``names`` that is a regular file of ``company_dir`` now (no
    symlink followed; one missing or of another kind is left out)."""
    signatures: dict[str, list[int]] = {}
    dir_fd = os.open(company_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(info.st_mode):
                signatures[name] = signature(info)
    finally:
        os.close(dir_fd)
    return signatures


def untouched_files(
    company_dir: Path, names: Iterable[str], recorded: Mapping[str, list[int]]
) -> set[str]:
    """Those of ``names`` that are regular files whose signature now is the one ``recorded``
    (one stat each, compared field by field: 100k files in a few tenths of a second)."""
    dir_fd = os.open(company_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return _untouched(dir_fd, names, recorded)
    finally:
        os.close(dir_fd)


def _untouched(dir_fd: int, names: Iterable[str], recorded: Mapping[str, list[int]]) -> set[str]:
    untouched: set[str] = set()
    lstat, regular = os.stat, stat.S_ISREG
    for name in names:
        was = recorded.get(name)
        if was is None:
            continue
        try:
            now = lstat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if (
            now.st_ctime_ns == was[3]
            and now.st_ino == was[0]
            and now.st_size == was[1]
            and now.st_mtime_ns == was[2]
            and regular(now.st_mode)
        ):
            untouched.add(name)
    return untouched


@dataclass
class Scan:
    """A company directory as one scan found it: the key files with the ``(type, id)``
    of the exported row of their name, the names no row had (``unmapped``), those untouched
    since the base, and the directory's own signature then (:meth:`unchanged_since`)."""

    files: dict[str, tuple[str, str]] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)
    untouched: set[str] = field(default_factory=set)
    directory: list[int] = field(default_factory=list)
    settled: bool = False  # the directory last changed over RACY_NS before the scan

    def unchanged_since(self, company_dir: Path) -> bool:
        """No name created, removed or renamed in the directory since the scan: its
        modification and change times are the same and were already older than the kernel's
        clock granularity then (else a change in the same tick could keep them: not trusted)."""
        return self.settled and signature(os.stat(company_dir)) == self.directory


#: how long ago a directory must have changed for its times to tell a later change (a coarse
#: kernel tick is a few milliseconds; a second leaves room for any clock)
RACY_NS = 1_000_000_000


def scan_directory(
    company_dir: Path, rows: Mapping[str, Sequence[str]], recorded: Mapping[str, list[int]]
) -> Scan:
    """``company_dir`` listed once (one open): the key files (not creds, manifest or temp
    files), each mapped by ``rows``, and those ``recorded`` compared as :func:`untouched_files`
    does."""
    scan = Scan()
    files = scan.files
    dir_fd = os.open(company_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        info = os.fstat(dir_fd)
        scan.directory = signature(info)
        scan.settled = time.time_ns() - max(info.st_mtime_ns, info.st_ctime_ns) > RACY_NS
        for name in os.listdir(dir_fd):
            if not name.endswith(FILE_SUFFIX) or name.startswith(TEMP_PREFIX):
                continue
            if name in (CREDS_FILE, MANIFEST_FILE):
                continue
            row = rows.get(name)
            if row is None:
                scan.unmapped.append(name)
            else:
                files[name] = (row[0], row[1])
        scan.untouched = _untouched(dir_fd, files, recorded)
    except OSError as exc:
        raise DataError(f"cannot list {company_dir}: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
    return scan


def versions_sum(rows: Iterable[Sequence[str]]) -> tuple[int, int]:
    """(count, sum of :data:`VERSION_HASH`'s 60-bit hash) over ``(type, id, version)`` rows:
    the set of row versions in two numbers, compared with :func:`versions_now`'s."""
    count = total = 0
    for key_type, key_id, version in rows:
        text = f"{len(key_type)}:{key_type}{len(key_id)}:{key_id}:{version}"
        total += int(hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()[:15], 16)
        count += 1
    return count, total


#: each row's version under its reference, hashed by the server as :func:`versions_sum` does
#: in Python (lengths make the text unambiguous; a set differs by chance with odds of 2^-60)
VERSION_HASH = (
    "('x' || left(md5(length(key_type) || ':' || key_type || length(key_id) || ':' || key_id "
    "|| ':' || xmin::text), 15))::bit(60)::bigint"
)


#: the same text under PostgreSQL's own 64-bit hash: cheaper, for comparing the server with itself
_SERVER_HASH = (
    "hashtextextended(length(key_type) || ':' || key_type || length(key_id) || ':' || key_id "
    "|| ':' || xmin::text, 0)"
)


def versions_now(conn: Conn, company_id: str) -> tuple[tuple[int, int], int]:
    """:func:`versions_sum` of the company's key rows as they are now, computed by the server
    in the caller's transaction (no row travels), and the sum of their :data:`_SERVER_HASH`
    (what :func:`versions_again` gives while no row changes)."""
    row = _one(
        conn,
        company_id,
        f"SELECT count(*), coalesce(sum({VERSION_HASH}), 0), coalesce(sum({_SERVER_HASH}), 0) "
        "FROM whatsapp_keys WHERE company_id = %s",
    )
    return (int(row[0]), int(row[1])), int(row[2])


def versions_again(conn: Conn, company_id: str) -> int:
    """The sum :func:`versions_now` gave second: equal while the company's rows are the same
    versions (a later check in the same transaction, at a fraction of the cost)."""
    row = _one(
        conn,
        company_id,
        f"SELECT coalesce(sum({_SERVER_HASH}), 0) FROM whatsapp_keys WHERE company_id = %s",
    )
    return int(row[0])


def _one(conn: Conn, company_id: str, statement: str) -> tuple[Any, ...]:
    validate_company_id(company_id)
    with database_errors("reading the rows' versions"):
        row = conn.execute(statement, (company_id,)).fetchone()
    if row is None:
        raise DatabaseError("reading the rows' versions: no answer")
    return tuple(row)
