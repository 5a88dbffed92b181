"""Baileys' multi-file auth store on disk (``useMultiFileAuthState``), written safely.

Layout: ``<root>/company_<id>/creds.json`` and one ``<type>-<id>.json`` per key (see
:mod:`resilience.authstate.naming`), each holding base64 BufferJSON as Baileys writes it.

Every write is atomic: a temp file in the same directory, fsync, ``os.replace``, then fsync of the
directory. Files are 0600 and directories 0700, whatever the umask. Temp files: ``.tmp-<random>``.

A whole directory written at once (:meth:`FileAuthStore.write_all` with ``durable="batch"``) is
the exception: it must be a new directory that nobody reads yet (an export's staging directory,
renamed into place afterwards), so its files are created under their own names without per-file
fsync and made durable together by :func:`make_durable` before the call returns. On ext4 one
``syncfs(2)`` after 100k small files costs about a second; an fsync per file costs tens.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import stat
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from resilience.authstate.codec import dumps_file, loads
from resilience.authstate.naming import (
    CREDS_FILE,
    FILE_SUFFIX,
    MANIFEST_FILE,
    company_dir_name,
    file_name_for,
    parse_file_name,
    safe_path,
)
from resilience.errors import DataError, InputError
from resilience.infra.fsutil import atomic_write, fsync_dir

FILE_MODE = 0o600
DIR_MODE = 0o700
TEMP_PREFIX = ".tmp-"

#: ``"each"``: every file is written to a temp file, fsynced and renamed (safe in a live
#: directory). ``"batch"``: a new directory's files are written, then made durable once.
Durability = Literal["each", "batch"]
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@functools.cache
def _syncfs_function() -> Callable[[int], int] | None:
    """The C library's ``syncfs(2)`` (Linux), or None where there is none."""
    try:
        func = ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int
    return func


def syncfs_available() -> bool:
    """Whether :func:`make_durable` can use one ``syncfs(2)`` instead of an fsync per file."""
    return _syncfs_function() is not None


def _syncfs(fd: int) -> bool:
    """``syncfs(2)`` on the file system of ``fd``; False when the C library has no syncfs."""
    func = _syncfs_function()
    if func is None:
        return False
    if func(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return True


def make_durable(
    directory: Path, names: Iterable[str], *, syncfs: Callable[[int], bool] | None = None
) -> None:
    """Flush files just written into ``directory`` (without fsync) and the directory itself.

    One ``syncfs(2)`` of the directory's file system where the C library has it (Linux 5.8+
    also reports writeback errors through it), else an fsync of each named file in a second
    pass; then an fsync of the directory. ``syncfs`` replaces the call to ``syncfs(2)`` (a
    :class:`SyncGroup` shares one among threads). Raises :class:`OSError` when the data cannot
    be made durable.
    """
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if not (syncfs or _syncfs)(dir_fd):
            for name in names:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


#: How a new directory's files are made durable: ``durable(directory, names)`` must return
#: once they and the directory are on disk (:func:`make_durable`, :class:`SyncGroup`).
MakeDurable = Callable[[Path, list[str]], None]


class SyncGroup:
    """:func:`make_durable` for several threads at once (companies exported side by side):
    one ``syncfs(2)`` covers every file written before it started, so a caller arriving while
    one runs waits for the next and shares it with everyone else waiting (group commit), instead
    of each company paying a flush of the whole file system. Where there is no syncfs each
    caller fsyncs its own files. Hand-written: a dozen lines, no library does it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._started = 0  # syncfs calls started (numbered from 1)
        self._done = 0  # the newest one that succeeded
        self._running = False

    def __call__(self, directory: Path, names: list[str]) -> None:
        make_durable(directory, names, syncfs=self._shared_syncfs)

    def _shared_syncfs(self, dir_fd: int) -> bool:
        if not syncfs_available():
            return False  # make_durable fsyncs the caller's own files
        with self._cond:
            wanted = self._started + 1  # one that starts after this caller's files were written
            while self._done < wanted:
                if not self._running:
                    self._running = True
                    self._started += 1
                    number = self._started
                    break
                self._cond.wait()
            else:
                return True
        ok = False
        try:
            _syncfs(dir_fd)
            ok = True
        finally:
            with self._cond:
                self._running = False
                if ok:  # on failure the waiters run their own and meet the error themselves
                    self._done = number
                self._cond.notify_all()
        return True


def check_entry_name(name: str) -> None:
    """:class:`InputError` unless ``name`` is one entry of a directory (no ``/``, not ``.``)."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise InputError(f"unsafe file name {_shown(name)}: it must be one entry of the directory")


def create_file(dir_fd: int, name: str, payload: bytes, *, read_back: bool = False) -> bool:
    """Create ``name`` (one entry, which must not exist) in the directory open as ``dir_fd``, mode
    0600, and write ``payload`` without fsync (see :func:`make_durable`). A partial file is
    removed on failure. With ``read_back`` the file is read back through the same descriptor
    before it is closed; returns whether it holds exactly ``payload`` (always True without)."""
    check_entry_name(name)
    flags = (_CREATE_FLAGS & ~os.O_WRONLY) | os.O_RDWR if read_back else _CREATE_FLAGS
    fd = os.open(name, flags, FILE_MODE, dir_fd=dir_fd)
    same = True
    try:
        try:
            os.fchmod(fd, FILE_MODE)
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            if read_back:
                same = os.pread(fd, len(payload) + 1, 0) == payload
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        raise
    return same


def _make_dirs(directory: Path) -> None:
    """Create ``directory`` and any missing parent, each 0700 whatever the umask."""
    missing: list[Path] = []
    path = directory
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, DIR_MODE)
        os.chmod(path, DIR_MODE)


def _shown(name: str) -> str:
    return repr(name[:57]) + "..." if len(name) > 60 else repr(name)


def plan_payloads(
    creds: Any | None, keys: Iterable[tuple[str, str, Any]]
) -> tuple[bytes | None, dict[str, bytes | None]]:
    """The bytes of ``creds.json`` and of every key file, by file name (``None``: delete).

    Every name and value is checked: an id that cannot be a file name, a value that cannot be
    encoded, or two keys naming one file (resolve legacy collisions first) raise."""
    planned: dict[str, bytes | None] = {}
    owners: dict[str, tuple[str, str]] = {}
    for key_type, key_id, value in keys:
        name = file_name_for(key_type, key_id)
        if name in owners:
            first = owners[name]
            raise InputError(
                f"keys {_shown(first[0])}/{_shown(first[1])} and "
                f"{_shown(key_type)}/{_shown(key_id)} both name {_shown(name)}: "
                "resolve collisions before writing"
            )
        owners[name] = (key_type, key_id)
        planned[name] = None if value is None else dumps_file(value)
    return (None if creds is None else dumps_file(creds)), planned


class FileAuthStore:
    """One directory per company under ``root``, in Baileys' exact multi-file layout."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # directories being written by write_all(durable="batch") -> their open descriptor
        self._batch_fds: dict[Path, int] = {}

    # --- paths -----------------------------------------------------------------------------

    def company_dir(self, company_id: str) -> Path:
        """``<root>/company_<id>`` (the company id is validated; nothing is created)."""
        return safe_path(self.root, company_dir_name(company_id))

    def exists(self, company_id: str) -> bool:
        """Whether the company's directory exists."""
        return self.company_dir(company_id).is_dir()

    def _ensure_dir(self, company_id: str) -> Path:
        directory = self.company_dir(company_id)
        _make_dirs(directory)
        os.chmod(directory, DIR_MODE)
        return directory

    # --- writing ---------------------------------------------------------------------------

    def _write_file(self, directory: Path, name: str, payload: bytes) -> None:
        batch_fd = self._batch_fds.get(directory)
        if batch_fd is not None:  # a new directory nobody reads yet: no temp file, no fsync
            create_file(batch_fd, name, payload)
            return
        # the callers fsync the directory once after all their files
        target = safe_path(directory, name)
        atomic_write(target, payload, mode=FILE_MODE, temp_prefix=TEMP_PREFIX, sync_dir=False)

    def _delete_file(self, directory: Path, name: str) -> None:
        target = safe_path(directory, name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)

    def write_creds(self, company_id: str, creds: Any) -> None:
        """Write ``creds.json`` atomically."""
        if creds is None:
            raise InputError("refusing to write empty creds (None) to creds.json")
        payload = dumps_file(creds)
        directory = self._ensure_dir(company_id)
        self._write_file(directory, CREDS_FILE, payload)
        fsync_dir(directory)

    def write_key(self, company_id: str, key_type: str, key_id: str, value: Any | None) -> None:
        """Write one key file atomically; ``None`` deletes it, as Baileys does."""
        name = file_name_for(key_type, key_id)
        directory = self._ensure_dir(company_id)
        if value is None:
            self._delete_file(directory, name)
        else:
            self._write_file(directory, name, dumps_file(value))
        fsync_dir(directory)

    def write_all(
        self,
        company_id: str,
        creds: Any | None,
        keys: Iterable[tuple[str, str, Any]],
        *,
        durable: Durability = "each",
    ) -> int:
        """Write every key (``None`` deletes), then ``creds.json`` last (unless ``creds`` is None).

        All names and values are checked before anything is written: an id that cannot be a file
        name, a value that cannot be encoded, or two keys naming one file (resolve legacy
        collisions first) raise and leave the directory untouched. Returns the number of key
        files written or deleted.

        ``durable="each"`` replaces each file atomically with its own fsync. ``durable="batch"``
        is for a company directory that does not exist yet and that nobody reads until the
        caller renames it into place (a staging directory): it is created, every file is
        written under its own name without fsync, and all are made durable at once
        (:func:`make_durable`) before this returns. An existing directory raises
        :class:`InputError`; ``None`` values are then simply not written.
        """
        creds_payload, planned = plan_payloads(creds, keys)
        if durable == "batch":
            self.write_new_dir(company_id, creds_payload, planned)
            return len(planned)
        if durable != "each":
            raise InputError(f"unknown durability {durable!r}: use 'each' or 'batch'")
        directory = self._ensure_dir(company_id)
        for name, payload in planned.items():
            if payload is None:
                self._delete_file(directory, name)
            else:
                self._write_file(directory, name, payload)
        if creds_payload is not None:
            self._write_file(directory, CREDS_FILE, creds_payload)
        fsync_dir(directory)
        return len(planned)

    def make_new_dir(self, company_id: str) -> Path:
        """Create the company's directory (0700), which must not exist yet; return it."""
        directory = self.company_dir(company_id)
        _make_dirs(directory.parent)
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            raise InputError(
                f"{directory} already exists: a batch write needs a directory of its own"
            ) from None
        os.chmod(directory, DIR_MODE)
        return directory

    def write_new_dir(
        self, company_id: str, creds_payload: bytes | None, planned: dict[str, bytes | None]
    ) -> None:
        """``write_all(durable="batch")`` of payloads from :func:`plan_payloads`."""
        directory = self.make_new_dir(company_id)
        written: list[str] = []
        self._batch_fds[directory] = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name, payload in planned.items():
                if payload is not None:
                    self._write_file(directory, name, payload)
                    written.append(name)
            if creds_payload is not None:
                self._write_file(directory, CREDS_FILE, creds_payload)
                written.append(CREDS_FILE)
        finally:
            os.close(self._batch_fds.pop(directory))
        make_durable(directory, written)

    # --- reading ---------------------------------------------------------------------------

    def _existing_dir(self, company_id: str) -> Path:
        directory = self.company_dir(company_id)
        if not directory.is_dir():
            raise DataError(f"no auth-state directory for company {company_id!r} at {directory}")
        return directory

    def _read(self, directory: Path, name: str) -> Any:
        path = directory / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise DataError(f"cannot read {_shown(name)} in {directory}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read()
        return loads(raw, where=name)

    def read_creds(self, company_id: str) -> Any | None:
        """Decoded ``creds.json``, or ``None`` when the file (or the directory) does not exist."""
        directory = self.company_dir(company_id)
        try:
            info = (directory / CREDS_FILE).lstat()
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{CREDS_FILE} in {directory} is not a regular file")
        return self._read(directory, CREDS_FILE)

    def read_files(self, company_id: str) -> dict[str, Any]:
        """File name -> decoded value for every key file (``*.json`` but creds, manifest, temp).

        A missing directory, a ``*.json`` entry that is not a regular file (e.g. a symlink), or a
        file that does not parse raise :class:`DataError`.
        """
        directory = self._existing_dir(company_id)
        out: dict[str, Any] = {}
        with os.scandir(directory) as entries:
            for entry in entries:
                name = entry.name
                if (
                    name in (CREDS_FILE, MANIFEST_FILE)
                    or not name.endswith(FILE_SUFFIX)
                    or name.startswith(TEMP_PREFIX)
                ):
                    continue
                if not entry.is_file(follow_symlinks=False):
                    raise DataError(f"{_shown(name)} in {directory} is not a regular file")
                out[name] = self._read(directory, name)
        return dict(sorted(out.items()))

    def read_keys(self, company_id: str) -> dict[tuple[str, str], Any]:
        """``(type, id)`` -> decoded value, mapping names back with
        :func:`~resilience.authstate.naming.parse_file_name`. Raises :class:`DataError` naming
        every file whose key id cannot be recovered without guessing."""
        files = self.read_files(company_id)
        keys: dict[tuple[str, str], Any] = {}
        unmappable: list[str] = []
        for name, value in files.items():
            try:
                keys[parse_file_name(name)] = value
            except DataError:
                unmappable.append(name)
        if unmappable:
            listed = ", ".join(_shown(n) for n in unmappable)
            raise DataError(
                f"{len(unmappable)} key file(s) of company {company_id!r} cannot be mapped back "
                f"to a key id without guessing: {listed}"
            )
        return keys


# --- reading a company directory as raw bytes ----------------------------------------------


def read_regular_file(directory: Path, name: str, *, dir_fd: int | None = None) -> bytes:
    """The bytes of ``directory/name``, which must be a regular file (no symlink followed);
    :class:`FileNotFoundError` when it is not there, :class:`DataError` otherwise. With
    ``dir_fd`` (``directory`` opened) the name is opened relative to it (no path walk per
    file; ``directory`` then only names it in messages)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        # O_NONBLOCK: a FIFO planted under a key's name does not hang the open
        if dir_fd is None:
            fd = os.open(os.path.join(directory, name), flags)
        else:
            fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise DataError(f"cannot read {name[:60]!r} in {directory}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{name[:60]!r} in {directory} is not a regular file")
        chunks = [os.read(fd, info.st_size + 1)]  # one read(2) for a file that did not grow
        while len(chunks) > 1 or len(chunks[0]) > info.st_size:
            more = os.read(fd, 1 << 16)
            if not more:
                break
            chunks.append(more)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_raw_files(company_dir: Path) -> dict[str, bytes]:
    """Bytes of every ``*.json`` regular file of a company directory (creds and manifest
    included, temp files skipped), by name. A ``*.json`` entry that is not a regular file, or
    one that cannot be read, raises :class:`DataError`."""
    out: dict[str, bytes] = {}
    try:
        entries = list(os.scandir(company_dir))
    except OSError as exc:
        raise DataError(f"cannot list {company_dir}: {exc.strerror}") from None
    for entry in entries:
        name = entry.name
        if not name.endswith(FILE_SUFFIX) or name.startswith(TEMP_PREFIX):
            continue
        if not entry.is_file(follow_symlinks=False):
            raise DataError(f"{name[:60]!r} in {company_dir} is not a regular file")
        try:
            out[name] = read_regular_file(company_dir, name)
        except FileNotFoundError as exc:
            raise DataError(f"cannot read {name[:60]!r} in {company_dir}: {exc.strerror}") from None
    return dict(sorted(out.items()))


def key_file_names(company_dir: Path) -> list[str]:
    return sorted(key_file_set(company_dir))  # the key files, sorted


def key_file_set(company_dir: Path) -> set[str]:
    """Names of the key files of a company directory (not creds, manifest or temp files)."""
    try:
        names = os.listdir(company_dir)
    except OSError as exc:
        raise DataError(f"cannot list {company_dir}: {exc.strerror}") from None
    return {
        n
        for n in names
        if n.endswith(FILE_SUFFIX)
        and n not in (CREDS_FILE, MANIFEST_FILE)
        and not n.startswith(TEMP_PREFIX)
    }
