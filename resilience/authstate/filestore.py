"""Baileys' multi-file auth store on disk (``useMultiFileAuthState``), written safely.

Layout: ``<root>/company_<id>/creds.json`` and one ``<type>-<id>.json`` per key (see
:mod:`resilience.authstate.naming`), each holding base64 BufferJSON as Baileys writes it.

Every write is atomic: a temp file in the same directory, fsync, ``os.replace``, then fsync of the
directory. Files are 0600 and directories 0700, set explicitly whatever the umask. Temp files are
named ``.tmp-<random>`` (never a ``.json`` name Baileys could read).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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

FILE_MODE = 0o600
DIR_MODE = 0o700
TEMP_PREFIX = ".tmp-"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


class FileAuthStore:
    """One directory per company under ``root``, in Baileys' exact multi-file layout."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

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
        target = safe_path(directory, name)
        temp = directory / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        try:
            try:
                os.fchmod(fd, FILE_MODE)
                view = memoryview(payload)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise

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
        _fsync_dir(directory)

    def write_key(self, company_id: str, key_type: str, key_id: str, value: Any | None) -> None:
        """Write one key file atomically; ``None`` deletes it, as Baileys does."""
        name = file_name_for(key_type, key_id)
        directory = self._ensure_dir(company_id)
        if value is None:
            self._delete_file(directory, name)
        else:
            self._write_file(directory, name, dumps_file(value))
        _fsync_dir(directory)

    def write_all(
        self, company_id: str, creds: Any | None, keys: Iterable[tuple[str, str, Any]]
    ) -> int:
        """Write every key (``None`` deletes), then ``creds.json`` last (unless ``creds`` is None).

        All names and values are checked before anything is written: an id that cannot be a file
        name, a value that cannot be encoded, or two keys naming one file (resolve legacy
        collisions first) raise and leave the directory untouched. Returns the number of key
        files written or deleted.
        """
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
        creds_payload = None if creds is None else dumps_file(creds)
        directory = self._ensure_dir(company_id)
        for name, payload in planned.items():
            if payload is None:
                self._delete_file(directory, name)
            else:
                self._write_file(directory, name, payload)
        if creds_payload is not None:
            self._write_file(directory, CREDS_FILE, creds_payload)
        _fsync_dir(directory)
        return len(planned)

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
