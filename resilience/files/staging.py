"""Staging and swapping a directory into place, in one place: nobody ever sees half of one.

A company directory (an export, an installed snapshot) or a whole snapshot is built in a fresh
``.staging-<random>`` directory beside its final place, made durable once (one ``syncfs`` or an
fsync per file, then the directory), and renamed into place; a directory it replaces is renamed
aside first and removed only after the new one is in place. Any failure removes the staging
directory and leaves what was there before. Leftovers of crashed runs are swept by the next one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from resilience.authstate.filestore import DIR_MODE, FILE_MODE
from resilience.authstate.naming import company_dir_name, safe_path
from resilience.errors import InputError, ResilienceError
from resilience.infra.fsutil import fsync_dir

STAGING_PREFIX = ".staging-"
PREVIOUS_PREFIX = ".previous-"
#: A staging directory older than this is a leftover of a crash and is removed by the next swap.
STALE_AFTER_S = 3600.0
T = TypeVar("T")


def write_private(path: Path, payload: bytes, *, fsync: bool = True) -> int:
    """Create ``path`` (which must not exist) with mode 0600, write ``payload`` and (unless
    ``fsync`` is False, for a caller that calls :func:`make_durable` afterwards) fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return len(payload)


_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def os_error(exc: OSError, directory: Path, what: str) -> ResilienceError:
    """A one-line error for an OSError met while writing ``what`` into ``directory``."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno in _NOT_WRITABLE:
        return InputError(f"export dir {directory} is not writable ({reason}); {what} not written")
    if exc.errno in _NO_SPACE:
        return InputError(
            f"no space left in export dir {directory} ({reason}); {what} not written, "
            "the previous directory is intact"
        )
    if exc.errno == errno.ENOTDIR:
        return InputError(f"export dir {directory} is not a directory; {what} not written")
    return InputError(f"cannot write {what} into {directory}: {reason}")


# --- staging and swap -----------------------------------------------------------------------------


def ensure_root(root: Path) -> None:
    """Create ``root`` (0700) if missing; refuse a root that exists but is not a directory."""
    if root.is_dir():
        return
    if root.is_symlink():
        raise InputError(f"export dir {root} exists and is not a directory")
    try:
        root.mkdir(mode=DIR_MODE, parents=True)
    except FileExistsError:
        if root.is_dir():  # made meanwhile by another export (companies run in parallel)
            return
        raise InputError(f"export dir {root} exists and is not a directory") from None
    os.chmod(root, DIR_MODE)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def sweep_stale(
    directory: Path, previous_of: str | None = None, *, keep: Path | None = None
) -> None:
    """Remove what crashed runs left in ``directory``: staging directories untouched for
    :data:`STALE_AFTER_S` and, when ``previous_of`` names a company directory now in place,
    its ``.previous-`` copies other than ``keep`` (the one this run set aside for its caller).
    Errors are ignored (the next run tries again)."""
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            stale_previous = (
                previous_of is not None
                and entry.name.startswith(f"{PREVIOUS_PREFIX}{previous_of}-")
                and (keep is None or entry.name != keep.name)
            )
            stale_staging = entry.name.startswith(STAGING_PREFIX) and (
                now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
            )
            if stale_previous or stale_staging:
                shutil.rmtree(entry.path, ignore_errors=True)


def _swap(root: Path, staged: Path, final: Path) -> Path | None:
    """Put ``staged`` in place of ``final``; the previous directory's new path (not removed
    yet), or None when there was none."""
    previous: Path | None = None
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise InputError(f"{final} exists and is not a directory: refusing to replace it")
    if final.exists():
        previous = root / f"{PREVIOUS_PREFIX}{final.name}-{_stamp()}-{secrets.token_hex(3)}"
        os.rename(final, previous)
    try:
        os.rename(staged, final)
    except BaseException:
        if previous is not None:
            os.rename(previous, final)
        raise
    fsync_dir(root)
    return previous


@contextlib.contextmanager
def _staging_dir(parent: Path, what: str) -> Iterator[Path]:
    """A fresh staging directory (0700) in ``parent``, removed afterwards whatever happens;
    OSErrors of the body become one-line :class:`InputError`\\ s naming ``what``."""
    try:
        ensure_root(parent)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent))
        try:
            os.chmod(staging, DIR_MODE)
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise os_error(exc, parent, what) from None


def stage_and_swap(
    root: Path,
    company_id: str,
    fill: Callable[[Path], T],
    *,
    set_aside: list[Path] | None = None,
    final_name: str | None = None,
) -> tuple[Path, T]:
    """Build ``company_<id>`` in a fresh staging directory of ``root`` and swap it into place
    (as ``root/<final_name>`` when given: a standby copy).

    ``fill(staging)`` must create ``staging/company_<id>/`` with its content. On success the
    previous ``root/company_<id>`` (if any) is replaced and removed, or, with ``set_aside``,
    renamed to ``.previous-company_<id>-<stamp>`` and its path appended there for the caller
    to remove later (a switch removes it after the service is back: deleting a thousand files
    is not part of the recovery); on any failure the staging directory is removed and the
    previous one is left as it was. OSErrors become one-line :class:`InputError`\\ s (not
    writable, no space, ...). Returns the final path and what ``fill`` returned.
    """
    name = company_dir_name(company_id)
    root = Path(root)
    with _staging_dir(root, f"company {company_id}") as staging:
        final = safe_path(root, final_name or name)
        out = fill(staging)
        staged = staging / name
        if not staged.is_dir():
            raise InputError(f"nothing was staged for company {company_id!r} in {staging}")
        os.chmod(staged, DIR_MODE)
        fsync_dir(staged)
        previous = _swap(root, staged, final)
    if previous is not None and set_aside is not None:
        set_aside.append(previous)
        sweep_stale(root, final.name, keep=previous)  # copies earlier runs left
        return final, out
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    sweep_stale(root, final.name)
    return final, out


def stage_new(parent: Path, name: str, fill: Callable[[Path], T], *, what: str) -> tuple[Path, T]:
    """Build a new directory ``parent/name`` (which must not exist yet) in a fresh staging
    directory and rename it into place once ``fill(staging)`` has filled it and it is durable.
    On any failure nothing appears under ``name``. ``what`` names it in errors."""
    with _staging_dir(parent, what) as staging:
        final = safe_path(parent, name)
        out = fill(staging)
        fsync_dir(staging)
        if final.exists():
            raise InputError(f"{what} {final} already exists")
        os.rename(staging, final)
        fsync_dir(parent)
    return final, out
