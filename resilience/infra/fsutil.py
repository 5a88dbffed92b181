"""Durable file writes, in one place: temp file + fsync + rename + fsync of the directory."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OwnershipError(PermissionError):
    """The file could not be given the owner it must keep (we are neither that user nor root)."""


def atomic_write(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o600,
    temp_prefix: str | None = None,
    sync_dir: bool = True,
    owner: tuple[int, int] | None = None,
    replace: bool = True,
) -> Path:
    """Replace `path` with `data` so that a reader sees the old or the new file, never a torn
    one, and a crash after return loses nothing. The temp file is removed on failure.

    `temp_prefix` names the temp file for readers that skip it; `sync_dir=False` is for a
    caller that writes many files into one directory and fsyncs it once at the end.
    `owner` (uid, gid) gives the file an owner other than ours (:class:`OwnershipError` when it
    cannot); `replace=False` never overwrites an existing `path` (:class:`FileExistsError`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if temp_prefix is None:
        temp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}")
    else:
        temp = path.with_name(f"{temp_prefix}{secrets.token_hex(8)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            if owner is not None and owner != (os.getuid(), os.getgid()):
                try:
                    os.fchown(fd, *owner)
                except PermissionError as exc:
                    raise OwnershipError(exc.errno, exc.strerror, str(path)) from None
            os.fchmod(fd, mode)  # independent of the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(temp, path)
        else:
            os.link(temp, path)
            os.unlink(temp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    if sync_dir:
        fsync_dir(path.parent)
    return path
