"""One exclusive lock per deployment and company, held by any command that changes its state.

Two commands changing one company at once lose acknowledged writes: a second switch exports over
the directory the service has just written to, or records the fallback tag's own commit as the
ref to return to. Every command that changes a company's auth directory, the service's `.env`,
code or PM2 state, or the company's rows takes this lock first; a second one is refused at once,
naming the holder (:class:`LockHeld`, its own exit code). Read-only commands take none.

The lock is an OS lock (``flock``) on ``.lock-company_<id>`` beside the switch state (the auth
root, else the runs dir), whose content says who holds it: pid, host, command, start time. The
kernel drops the lock with its holder, so a holder that died never blocks anyone: the next
command takes the lock over and reports the holder it found written there. Within one process
the lock is re-entrant per thread (a command holding it calls another that takes it); another
thread is refused like another process.

Written by hand: ``fcntl.flock`` is the whole mechanism; lock-file libraries add polling and
timeouts this refusal-at-once design does not want.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from resilience.config import Settings, validate_company_id
from resilience.errors import InputError, LockHeld

LOCK_PREFIX = ".lock-company_"
log = logging.getLogger(__name__)

#: (lock file, thread) -> depth: re-entrant within one thread; another thread of this process
#: is refused like another process (its flock on a descriptor of its own conflicts)
_held: dict[tuple[Path, int], int] = {}
_guard = threading.Lock()


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lock, as written in its file."""

    pid: int | None
    host: str | None
    command: str | None
    started_at: str | None

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        try:
            data: Any = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        pid = data.get("pid")
        return cls(
            pid if isinstance(pid, int) else None,
            _str(data.get("host")),
            _str(data.get("command")),
            _str(data.get("started_at")),
        )

    def describe(self) -> str:
        return (
            f"{self.command or 'a command'} (pid {self.pid} on {self.host}, "
            f"started {self.started_at})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "host": self.host,
            "command": self.command,
            "started_at": self.started_at,
        }


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def lock_path(settings: Settings, company_id: str) -> Path:
    """The company's lock file: beside the switch state (the auth root), else in the runs dir."""
    validate_company_id(company_id)
    home = settings.auth_root or settings.runs_dir
    return Path(home).absolute() / f"{LOCK_PREFIX}{company_id}"


def current_holder(settings: Settings, company_id: str) -> Holder | None:
    """Who holds the company's lock now (None: nobody; a holder that died holds nothing)."""
    path = lock_path(settings, company_id)
    if (path, threading.get_ident()) in _held:
        return _me("this thread")
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return Holder.parse(_read(fd)) or Holder(None, None, None, None)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _me(command: str) -> Holder:
    return Holder(os.getpid(), socket.gethostname(), command, datetime.now(UTC).isoformat())


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode("utf-8", "replace")


@contextlib.contextmanager
def company_lock(settings: Settings, company_id: str, command: str) -> Iterator[Holder | None]:
    """Hold the company's lock for the body; yields the holder found written in the lock file
    whose process is gone (taken over, to be reported), or None.

    Raises :class:`LockHeld` when another command holds it (naming it), and
    :class:`InputError` when the lock file cannot be created (the directory not writable)."""
    path = lock_path(settings, company_id)
    mine = (path, threading.get_ident())
    with _guard:
        reentered = mine in _held
        if reentered:
            _held[mine] += 1
    if reentered:
        try:
            yield None
        finally:
            with _guard:
                _held[mine] -= 1
        return
    fd = _acquire(path, company_id)
    try:
        previous = _read(fd).strip()
        stale = Holder.parse(previous) if previous else None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_me(command).to_dict()).encode(), 0)
        os.fsync(fd)
        with _guard:
            _held[mine] = 1
        try:
            yield stale
        finally:
            with _guard:
                _held.pop(mine, None)
            with contextlib.suppress(OSError):
                # released cleanly: nothing to take over, no file left behind (a command that
                # opened it meanwhile sees it unlinked once it gets the lock, and opens anew)
                os.unlink(path)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(path: Path, company_id: str) -> int:
    """An open, exclusively locked descriptor of the lock file now at ``path``."""
    while True:
        fd = _open(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Holder.parse(_read(fd))
            os.close(fd)
            who = holder.describe() if holder else "another command"
            refused = LockHeld(
                f"company {company_id} is locked by {who}: wait until it ends (lock file "
                f"{path}); nothing was changed"
            )
            refused.details = {"lock": {"path": str(path), "holder": holder and holder.to_dict()}}
            raise refused from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder released and unlinked it meanwhile: lock the new one


class _Journal(Protocol):
    def event(self, kind: str, message: str, **data: Any) -> None: ...


@contextlib.contextmanager
def operation_lock(
    settings: Settings,
    company_id: str,
    command: str,
    journal: _Journal | None = None,
    *,
    skip: bool = False,
) -> Iterator[None]:
    """:func:`company_lock` for an operator command: a holder that died is taken over and said
    in its journal (and the log); ``skip`` for a run that only reads (a dry run takes none)."""
    if skip:
        yield
        return
    with company_lock(settings, company_id, command) as stale:
        if stale is not None:
            said = (
                f"the lock of company {company_id} was left by {stale.describe()}, which is "
                "gone: taken over"
            )
            log.warning("%s", said)
            if journal is not None:
                journal.event("lock-taken-over", said, holder=stale.to_dict())
        yield


def _open(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"lock file {path} is a symlink: refusing to use it") from None
        raise InputError(
            f"cannot create the lock file {path}: {exc.strerror or type(exc).__name__}"
        ) from None
