"""The stand-in's in-memory state: creds and keys as persisted, counters, the creds cache's view.

A write is applied here only once the backend acknowledged it (and it was journaled). What
``/health`` reports is one :meth:`ServiceState.snapshot`: ``status`` (``ok``, ``degraded`` on
cached creds, ``unavailable`` once they expired), the counters (``writes_ok``/``writes_failed``,
``creds_saves_ok``/``creds_saves_failed``, and ``reads_ok``/``reads_failed`` for the readers'
reads, in both modes), the live and the loaded digest, and ``cache``: ``{"state":
"off|fresh|serving|expired", "age_s", "ttl_s", "skipped_creds_saves", "failed_key_reads",
"creds_fingerprint", "serving_since", "source"}``. In cache mode the keys are not loaded, so
``key_count``, ``digest`` and the ``loaded_*`` fields are ``null``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from resilience.authstate.credscache import CacheEntry
from resilience.authstate.fingerprint import KeyFingerprint, digest_of_fingerprints
from resilience.drill.standin.service.backends.base import KeyMap
from resilience.drill.standin.traffic import KeyWrite
from resilience.service.modes import Mode


def utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="milliseconds")


def creds_fingerprint(creds: Any) -> str:
    """The creds' fingerprint, as the drills' evidence takes it (never the creds themselves)."""
    return KeyFingerprint.of("creds", "", creds)


def _fingerprints(keys: KeyMap) -> dict[tuple[str, str], str]:
    return {(t, i): KeyFingerprint.of(t, i, v) for (t, i), v in keys.items()}


class ServiceState:
    """Creds and keys as persisted (a write is applied only after it was acknowledged), plus
    counters and the creds cache's view. The set digest is computed lazily and cached per
    version. In cache mode the keys are not loaded (``keys_known`` is False)."""

    def __init__(
        self,
        mode: Mode,
        company: str,
        creds: Any,
        keys: KeyMap,
        *,
        keys_known: bool = True,
        cache_ttl_s: float | None = None,
    ) -> None:
        self.lock = threading.Lock()
        self.mode: Mode = mode
        self.company = company
        self.creds = creds
        self.keys: KeyMap = dict(keys)
        self.keys_known = keys_known
        self.writes_ok = 0
        self.writes_failed = 0
        self.last_write_at: datetime | None = None
        self.started_at = utc_now()
        self.last_seq = 0
        self.version = 0
        self._digest_lock = threading.Lock()
        self._digest: tuple[int, str] | None = None
        # what was loaded at start, before any write: what a restore verifies against
        self.loaded_key_count = len(self.keys)
        # one fingerprint per key, kept current by every write: /health's live digest is then
        # a sort and a hash, not a re-encoding of every value (100k keys under steady writes)
        self._prints = _fingerprints(self.keys)
        self.loaded_digest = digest_of_fingerprints(creds, self._prints.values())
        # creds saves and the creds cache (None TTL: no cache)
        self.creds_saves_ok = 0
        self.creds_saves_failed = 0
        self.cache_ttl_s = cache_ttl_s
        self.cache_stored_at: float | None = None  # wall clock of the entry in use
        self.cache_source: str | None = None
        self.cache_fingerprint: str | None = None
        self.on_cache = False  # serving creds from the cache (no good load yet)
        self.serving_since: datetime | None = None
        self.skipped_creds_saves = 0
        self.failed_key_reads = 0
        # the reader threads (STANDIN_READERS)
        self.reads_ok = 0
        self.reads_failed = 0

    # --- changes -------------------------------------------------------------------------------
    def apply(self, writes: Sequence[KeyWrite], at: datetime, last_seq: int) -> None:
        with self.lock:
            for write in writes:
                if write.deleted:
                    self.keys.pop(write.ref, None)
                    self._prints.pop(write.ref, None)
                else:
                    self.keys[write.ref] = write.value
                    self._prints[write.ref] = KeyFingerprint.of(*write.ref, write.value)
            self.writes_ok += len(writes)
            self.last_write_at = at
            self.last_seq = last_seq
            self.version += 1

    def failed(self) -> None:
        with self.lock:
            self.writes_failed += 1

    def creds_saved(self, creds: Any) -> None:
        with self.lock:
            self.creds = creds
            self.creds_saves_ok += 1
            self.version += 1

    def creds_save_failed(self) -> None:
        with self.lock:
            self.creds_saves_failed += 1

    def cached(self, entry: CacheEntry, source: str = "memory") -> None:
        """The cache now holds ``entry`` (after a good load or save, or read at start)."""
        fingerprint = creds_fingerprint(entry.creds)
        with self.lock:
            self.cache_stored_at = entry.stored_at
            self.cache_source = source
            self.cache_fingerprint = fingerprint

    def serve_from_cache(self, entry: CacheEntry) -> None:
        self.cached(entry, entry.source)
        with self.lock:
            self.on_cache = True
            self.serving_since = utc_now()

    def leave_cache(self, creds: Any, keys: KeyMap) -> float:
        """A good load ended cache mode: hold what it loaded; returns the seconds spent on the
        cache."""
        prints = _fingerprints(keys)
        digest = digest_of_fingerprints(creds, prints.values())
        with self.lock:
            since = self.serving_since or utc_now()
            self.creds = creds
            self.keys = dict(keys)
            self._prints = prints
            self.keys_known = True
            self.loaded_key_count = len(self.keys)
            self.loaded_digest = digest
            self.on_cache = False
            self.serving_since = None
            self.version += 1
        return (utc_now() - since).total_seconds()

    def skipped_save(self) -> int:
        with self.lock:
            self.skipped_creds_saves += 1
            return self.skipped_creds_saves

    def failed_read(self) -> int:
        with self.lock:
            self.failed_key_reads += 1
            return self.failed_key_reads

    def reader_read(self, ok: bool) -> int:
        """A reader's read was answered (ok) or failed; returns the count of its kind."""
        with self.lock:
            if ok:
                self.reads_ok += 1
                return self.reads_ok
            self.reads_failed += 1
            return self.reads_failed

    def reader_ids(self) -> tuple[str, list[str]] | None:
        """What the readers read: the pre-keys held, else the ids of the type held most."""
        with self.lock:
            refs = list(self.keys)
        by_type: dict[str, list[str]] = {}
        for key_type, key_id in refs:
            by_type.setdefault(key_type, []).append(key_id)
        if not by_type:
            return None
        key_type = (
            "pre-key" if "pre-key" in by_type else max(by_type, key=lambda t: len(by_type[t]))
        )
        return key_type, by_type[key_type]

    # --- views ---------------------------------------------------------------------------------
    def cache_age(self, now: float | None = None) -> float | None:
        with self.lock:
            stored = self.cache_stored_at
        if stored is None:
            return None
        return max(0.0, (time.time() if now is None else now) - stored)

    def expired(self) -> bool:
        """Serving from a cache entry older than the TTL: the service cannot run."""
        with self.lock:
            on_cache, ttl = self.on_cache, self.cache_ttl_s
        age = self.cache_age()
        return on_cache and ttl is not None and age is not None and age > ttl

    def _cache_report(self, now: float) -> dict[str, Any]:
        """The ``cache`` object of /health (called with the lock held)."""
        ttl, stored = self.cache_ttl_s, self.cache_stored_at
        age = None if stored is None else max(0.0, now - stored)
        if ttl is None or age is None:
            state = "off"
        elif age > ttl:
            state = "expired"
        else:
            state = "serving" if self.on_cache else "fresh"
        return {
            "state": state,
            "age_s": None if age is None else round(age, 3),
            "ttl_s": ttl,
            "skipped_creds_saves": self.skipped_creds_saves,
            "failed_key_reads": self.failed_key_reads,
            "creds_fingerprint": self.cache_fingerprint,
            "serving_since": _iso(self.serving_since),
            "source": self.cache_source,
        }

    def snapshot(self) -> dict[str, Any]:
        """Everything /health reports, consistent with one moment."""
        with self._digest_lock:
            with self.lock:
                cache = self._cache_report(time.time())
                ok = not (self.on_cache and cache["state"] == "expired")
                known = self.keys_known
                report: dict[str, Any] = {
                    "status": "unavailable" if not ok else "degraded" if self.on_cache else "ok",
                    "ok": ok,
                    "mode": self.mode,
                    "company": self.company,
                    "key_count": len(self.keys) if known else None,
                    "last_write_at": _iso(self.last_write_at),
                    "writes_ok": self.writes_ok,
                    "writes_failed": self.writes_failed,
                    "last_seq": self.last_seq,
                    "started_at": _iso(self.started_at),
                    "pid": os.getpid(),
                    "loaded_key_count": self.loaded_key_count if known else None,
                    "loaded_digest": self.loaded_digest if known else None,
                    "creds_saves_ok": self.creds_saves_ok,
                    "creds_saves_failed": self.creds_saves_failed,
                    "reads_ok": self.reads_ok,
                    "reads_failed": self.reads_failed,
                    "cache": cache,
                }
                version, creds = self.version, self.creds
                stale = known and (self._digest is None or self._digest[0] != version)
                prints = list(self._prints.values()) if stale else []
            if stale:
                digest = digest_of_fingerprints(creds, prints)
                self._digest = (version, digest)
            report["digest"] = None if not known or self._digest is None else self._digest[1]
        return report
