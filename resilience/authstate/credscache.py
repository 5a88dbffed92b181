"""A per-company cache of Baileys creds (not keys), so a service survives a short database outage
(docs/domain.md §8).

What it holds and why:

- One entry per company: the creds of the last *good* load from, or save to, the auth store,
  and the wall-clock time of that load or save. The entry is replaced after every good load or
  save (:meth:`CredsCache.store`); nothing else puts creds in it.
- A TTL (default :data:`DEFAULT_TTL_S`, 5 minutes): an entry older than the TTL is *stale*.
  :meth:`CredsCache.get_fresh` hands out creds only from a fresh entry, with its true age, the
  seconds since that good load or save. Creds older than that may have been rotated meanwhile:
  serving them for long is worse than failing loudly.
- An optional on-disk copy per company (``creds-<company>.json`` in a 0700 directory, the file
  0600, written atomically through :func:`resilience.infra.fsutil.atomic_write`), so the entry
  survives a restart of the service, which is exactly when it is needed: a service restarted
  during an outage cannot load its creds. The copy is a versioned JSON document
  (:data:`FORMAT`, :data:`FORMAT_VERSION`) holding the creds as BufferJSON
  (:mod:`resilience.authstate.codec`, base64 Buffers), so binary fields come back as the same
  bytes.
- A copy that is corrupt (not JSON, not this format, fields missing or of the wrong type), of
  another format version, of another company, dated in the future, or stale is *ignored with a
  warning* on the logger: never a crash, and never creds that might not be this company's.
  Messages name the file and the problem, never a value of the creds.

The cache is pure library code: no database, no service. The clock is injectable
(``clock``, seconds since the epoch) so TTL logic is tested without waiting.
"""

from __future__ import annotations

import copy
import errno
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from resilience.authstate.codec import encode, loads
from resilience.config import validate_company_id
from resilience.errors import DataError, InputError
from resilience.infra.fsutil import atomic_write

FORMAT = "baileys-resilience/creds-cache"
FORMAT_VERSION = 1
DEFAULT_TTL_S = 300.0
DIR_MODE = 0o700
FILE_MODE = 0o600
#: A copy dated further than this into the future is not trusted (clock jumps of a few seconds
#: between a write and a read are tolerated; the age is then 0).
FUTURE_TOLERANCE_S = 60.0
#: Creds are a few KB; a copy larger than this is not a creds cache file.
MAX_COPY_BYTES = 4 * 1024 * 1024

Origin = Literal["load", "save"]
ORIGINS: tuple[str, ...] = ("load", "save")

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheEntry:
    """The creds of one company as of its last good load or save."""

    company_id: str
    creds: Any
    stored_at: float  # seconds since the epoch (wall clock): ages survive a restart
    origin: Origin
    source: Literal["memory", "disk"] = "memory"  # where this process got the entry from

    def __repr__(self) -> str:  # creds are secrets: never in a repr
        return (
            f"CacheEntry(company_id={self.company_id!r}, stored_at={self.stored_at!r}, "
            f"origin={self.origin!r}, source={self.source!r})"
        )

    def age(self, now: float) -> float:
        """Seconds since the good load or save (0 for a slightly future time stamp)."""
        return max(0.0, now - self.stored_at)


class CopyIgnored(DataError):
    """The on-disk copy cannot be used; the message says why (never a creds value)."""


def file_name(company_id: str) -> str:
    """The on-disk copy's file name (company ids are ``[A-Za-z0-9_-]{1,50}``: a safe name)."""
    return f"creds-{validate_company_id(company_id)}.json"


def encode_copy(entry: CacheEntry) -> bytes:
    """The on-disk form of ``entry``: one versioned JSON document, creds as BufferJSON."""
    moment = datetime.fromtimestamp(entry.stored_at, UTC).isoformat(timespec="milliseconds")
    document = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "company_id": entry.company_id,
        "stored_at": entry.stored_at,
        "stored_at_iso": moment,
        "origin": entry.origin,
        "creds": encode(entry.creds, "base64", where="creds"),
    }
    # ASCII only: a lone surrogate in a string (possible from JavaScript) stays representable.
    return (json.dumps(document, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")


def decode_copy(data: bytes, company_id: str, *, now: float) -> CacheEntry:
    """Parse and check an on-disk copy for ``company_id``; :class:`CopyIgnored` says what is
    wrong with it. Staleness is not judged here (the caller knows the TTL)."""
    if len(data) > MAX_COPY_BYTES:
        raise CopyIgnored(f"larger than {MAX_COPY_BYTES} bytes: not a creds cache file")
    try:
        document = loads(data, where="creds cache")
    except DataError as exc:
        raise CopyIgnored(f"corrupt ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CopyIgnored(f"corrupt (not a {FORMAT} document)")
    version = document.get("version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        shown = repr(version)[:20]
        raise CopyIgnored(
            f"format version {shown}, this reader knows version {FORMAT_VERSION} only"
        )
    owner = document.get("company_id")
    if owner != company_id:
        shown = repr(owner)[:60] if isinstance(owner, str) else type(owner).__name__
        raise CopyIgnored(f"written for company {shown}, not {company_id!r}")
    stored_at = document.get("stored_at")
    if (
        isinstance(stored_at, bool)
        or not isinstance(stored_at, int | float)
        or not math.isfinite(stored_at)
        or stored_at <= 0
    ):
        raise CopyIgnored("corrupt (stored_at is not a time stamp)")
    if stored_at > now + FUTURE_TOLERANCE_S:
        raise CopyIgnored(f"dated {stored_at - now:.0f} s in the future: the clock is not trusted")
    origin = document.get("origin")
    if origin not in ORIGINS:
        raise CopyIgnored("corrupt (origin is neither 'load' nor 'save')")
    creds = document.get("creds")
    if not isinstance(creds, dict) or not creds:
        raise CopyIgnored("corrupt (creds are missing or not an object)")
    return CacheEntry(company_id, creds, float(stored_at), origin, "disk")


class CredsCache:
    """Creds per company: in memory, and on disk when ``directory`` is given.

    Thread-safe. ``ttl_s`` must be positive (a service that wants no cache has none);
    ``logger`` receives every warning (default: this module's logger).
    """

    def __init__(
        self,
        ttl_s: float = DEFAULT_TTL_S,
        directory: Path | None = None,
        *,
        clock: Callable[[], float] = time.time,
        logger: logging.Logger | None = None,
    ) -> None:
        if isinstance(ttl_s, bool) or not math.isfinite(ttl_s) or ttl_s <= 0:
            raise InputError(f"the creds cache TTL must be a positive number of seconds: {ttl_s}")
        self.ttl_s = float(ttl_s)
        self.directory = directory
        self.clock = clock
        self.log = logger or _log
        self._lock = threading.Lock()
        self._entries: dict[str, CacheEntry] = {}

    def __repr__(self) -> str:
        return f"CredsCache(ttl_s={self.ttl_s!r}, directory={self.directory!r})"

    # --- paths ---------------------------------------------------------------------------------
    def path(self, company_id: str) -> Path | None:
        """Where the on-disk copy of ``company_id`` lives (None: memory only)."""
        return None if self.directory is None else self.directory / file_name(company_id)

    def _ensure_directory(self, directory: Path) -> None:
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        if (directory.stat().st_mode & 0o777) != DIR_MODE:
            os.chmod(directory, DIR_MODE)  # created earlier or under another umask

    # --- writing -------------------------------------------------------------------------------
    def store(self, company_id: str, creds: Any, *, origin: Origin = "load") -> CacheEntry:
        """Remember ``creds`` as of now, after a good load or save, and write the on-disk copy.

        A copy that cannot be written is a warning (the memory entry still serves); creds that
        cannot be encoded raise :class:`InputError` or :class:`DataError` (nothing is stored).
        """
        validate_company_id(company_id)
        if origin not in ORIGINS:
            raise InputError(f"origin must be 'load' or 'save', not {origin!r}")
        if not isinstance(creds, dict) or not creds:
            raise InputError("refusing to cache empty creds (they must be a non-empty object)")
        entry = CacheEntry(company_id, copy.deepcopy(creds), self.clock(), origin)
        payload = encode_copy(entry) if self.directory is not None else b""
        with self._lock:
            self._entries[company_id] = entry
            target = self.path(company_id)
            if target is not None:
                try:
                    self._ensure_directory(target.parent)
                    atomic_write(target, payload, mode=FILE_MODE)
                except OSError as exc:
                    reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
                    self.log.warning(
                        "[creds-cache] cannot write the on-disk copy %s: %s; the copy in "
                        "memory still serves, a restart would not find it",
                        target,
                        reason,
                    )
        return entry

    def forget(self, company_id: str) -> None:
        """Drop the entry of ``company_id`` from memory and disk (after a logout, a re-pair)."""
        with self._lock:
            self._entries.pop(company_id, None)
            target = self.path(company_id)
            if target is not None:
                try:
                    target.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    self.log.warning(
                        "[creds-cache] cannot remove %s: %s", target, os.strerror(exc.errno or 0)
                    )

    # --- reading -------------------------------------------------------------------------------
    def entry(self, company_id: str) -> CacheEntry | None:
        """The entry of ``company_id``, fresh or stale: the one in memory, else the on-disk copy
        (checked; a bad copy is ignored with a warning). None when there is none."""
        validate_company_id(company_id)
        with self._lock:
            found = self._entries.get(company_id)
            if found is not None:
                return found
            loaded = self._read_copy(company_id)
            if loaded is not None:
                self._entries[company_id] = loaded
            return loaded

    def age(self, entry: CacheEntry) -> float:
        return entry.age(self.clock())

    def is_fresh(self, entry: CacheEntry) -> bool:
        """Not older than the TTL."""
        return self.age(entry) <= self.ttl_s

    def get_fresh(self, company_id: str) -> tuple[Any, float] | None:
        """``(creds, age_s)`` from a fresh entry, else None; a stale entry is ignored with a
        warning. The creds are a copy: changing them changes nothing in the cache."""
        found = self.entry(company_id)
        if found is None:
            return None
        age = self.age(found)
        if age > self.ttl_s:
            self.log.warning(
                "[creds-cache] cached creds of company %s are stale (age %.1f s > ttl %g s, "
                "from the %s at %s): ignored",
                company_id,
                age,
                self.ttl_s,
                found.origin,
                datetime.fromtimestamp(found.stored_at, UTC).isoformat(timespec="seconds"),
            )
            return None
        return copy.deepcopy(found.creds), age

    def _read_copy(self, company_id: str) -> CacheEntry | None:
        target = self.path(company_id)
        if target is None:
            return None
        try:
            data = _read_no_follow(target)
        except FileNotFoundError:
            return None
        except OSError as exc:
            reason = (
                "it is a symbolic link"
                if exc.errno == errno.ELOOP
                else (os.strerror(exc.errno) if exc.errno else type(exc).__name__)
            )
            self.log.warning("[creds-cache] ignoring the on-disk copy %s: %s", target, reason)
            return None
        try:
            return decode_copy(data, company_id, now=self.clock())
        except CopyIgnored as exc:
            self.log.warning("[creds-cache] ignoring the on-disk copy %s: %s", target, exc)
            return None


def _read_no_follow(path: Path) -> bytes:
    """The file's bytes (at most one byte over :data:`MAX_COPY_BYTES`), refusing a symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_COPY_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
