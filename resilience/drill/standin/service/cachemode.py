"""Cache mode: running on cached creds while PostgreSQL is down (docs/domain.md §8).

The creds cache is :mod:`resilience.authstate.credscache`. After every good creds load or save
the creds are cached per company, in memory and, with ``CREDS_CACHE_DIR``, in an on-disk copy
(0600 in a 0700 directory) that survives a PM2 restart; ``CREDS_CACHE_TTL_S`` (default 300;
``0`` turns the cache off) is its TTL. When loading creds fails at start with a database error:

- with a fresh entry the service runs on the cached creds (*cache mode*): it logs
  :data:`~.lines.CACHE_SERVING_LINE`, sends one Sentry warning carrying the true cache age (the
  seconds since that good load or save) through ``SENTRY_DSN`` when set, skips every creds save
  (counted, logged), key reads fail with :class:`~.backends.KeyReadFailed` (counted, never an
  empty answer as if the keys did not exist) and key writes fail as in any outage
  (``writes_failed``). Every ``CACHE_RELOAD_INTERVAL_MS`` (default 3000, at least 200; each
  attempt bounded by the connect timeout) it tries to load again; the first good load ends cache
  mode (:data:`~.lines.CACHE_LEFT_LINE`), then it proceeds as after a normal start (keys loaded,
  :data:`~.lines.CONNECTION_OPEN_LINE`);
- when the entry is older than the TTL (at start, or while serving from it) the service fails
  loudly: :data:`~.lines.CACHE_EXPIRED_LINE`, a Sentry error, and ``/health`` answers 503 with
  ``"ok": false``; it keeps trying to load and recovers when PostgreSQL is back;
- without any entry it cannot start (:data:`~.lines.NO_CACHE_LINE`, exit code 6).

A wrong DSN (a configuration error) or missing or corrupt creds never fall back to the cache.
The stand-in holds every key it loaded, so it reads keys from the store only in cache mode.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from resilience.drill.standin.service.app import SERVER_NAME
from resilience.drill.standin.service.backends import KeyMap, KeyReadFailed
from resilience.drill.standin.service.core import ServiceCore
from resilience.drill.standin.service.lines import (
    CACHE_EXPIRED_LINE,
    CACHE_LEFT_LINE,
    CACHE_SERVING_LINE,
    CONNECTION_OPEN_LINE,
    MISSING_CREDS_LINE,
)
from resilience.drill.standin.service.logs import log
from resilience.drill.standin.traffic import KeyWrite
from resilience.errors import ResilienceError


class CacheMode(ServiceCore):
    """Cache mode's part of the service: reads to the store, reload attempts, expiry, alerts."""

    def _read_tick(self, pending: Sequence[KeyWrite]) -> bool:
        """In cache mode the keys are not loaded: Baileys' reads go to the store (one read per
        tick, of the keys the pending batch touches) and fail while PostgreSQL is down. True
        when every read was answered."""
        by_type: dict[str, list[str]] = {}
        for write in pending:
            by_type.setdefault(write.key_type, []).append(write.key_id)
        for key_type, ids in by_type.items():
            try:
                self.backend.read_keys(key_type, ids)
            except KeyReadFailed as exc:
                failed = self.state.failed_read()
                if self._read_failed_log.due():
                    log.warning(
                        "[auth] key read failed while serving creds from cache (%d so far): %s",
                        failed,
                        self.redactor.text(str(exc)),
                    )
                return False
        return True

    def _cache_tick(self) -> KeyMap | None:
        """In cache mode: a load attempt when one is due (the keys it loaded when it worked),
        and the expiry check."""
        if time.monotonic() >= self._next_reload:
            self._next_reload = time.monotonic() + self.config.cache_reload_interval_ms / 1000
            try:
                creds, keys = self.backend.load()
            except ResilienceError as exc:  # the database (or its data) still fails
                self.last_db_error = self.redactor.text(str(exc))
                if self._reload_failed_log.due():
                    log.warning(
                        "[auth] PostgreSQL still unavailable for company %s, next attempt in "
                        "%.1f s: %s",
                        self.config.company,
                        self.config.cache_reload_interval_ms / 1000,
                        self.last_db_error,
                    )
            else:
                if creds is None:
                    self.fatal = MISSING_CREDS_LINE.format(
                        company=self.config.company, source="PostgreSQL"
                    )
                    self.stop.set()
                    return None
                self._leave_cache(creds, keys)
                return keys
        self._check_expiry()
        return None

    def _leave_cache(self, creds: Any, keys: KeyMap) -> None:
        self._store_in_cache(creds, "load")  # first: health never shows the old entry's age
        self.creds, self._creds_unsaved = creds, False
        duration = self.state.leave_cache(creds, keys)
        self._expiry_reported = False
        log.info(
            CACHE_LEFT_LINE.format(
                company=self.config.company,
                duration=duration,
                skipped=self.state.skipped_creds_saves,
                reads=self.state.failed_key_reads,
            )
        )
        log.info(CONNECTION_OPEN_LINE.format(keys=len(keys)))
        self.start_readers()

    def _check_expiry(self) -> None:
        if self._expiry_reported or not self.state.expired():
            return
        self.report_expired()

    def report_serving(self, age: float, source: str) -> None:
        """Log the cache-mode line and send the one Sentry warning (with the true age)."""
        ttl = self.config.creds_cache_ttl_s
        company = self.config.company
        log.warning(
            CACHE_SERVING_LINE.format(
                company=company, age=age, ttl=ttl, source=source, reason=self.last_db_error
            )
        )
        self.alert(
            f"creds cache: company {company} runs on cached creds, PostgreSQL is unavailable; "
            f"cache age {age:.1f} s (ttl {ttl:g} s)",
            level="warning",
            event="creds-cache-serving",
            age=age,
        )

    def report_expired(self) -> None:
        """Log why the service cannot run and send a Sentry error, once per expiry."""
        self._expiry_reported = True
        age = self.state.cache_age() or 0.0
        ttl = self.config.creds_cache_ttl_s
        company = self.config.company
        log.error(
            CACHE_EXPIRED_LINE.format(company=company, age=age, ttl=ttl, reason=self.last_db_error)
        )
        self.alert(
            f"creds cache expired: company {company} cannot run, PostgreSQL is unavailable and "
            f"the cached creds are {age:.1f} s old (ttl {ttl:g} s)",
            level="error",
            event="creds-cache-expired",
            age=age,
        )

    def alert(self, message: str, *, level: str, event: str, age: float) -> None:
        if self.sentry is None:
            return
        sent = self.sentry.event(
            message,
            level=level,
            tags={"company": self.config.company, "event": event, "service": SERVER_NAME},
            extra={
                "cache_age_s": round(age, 3),
                "ttl_s": self.config.creds_cache_ttl_s,
                "reason": self.last_db_error,
            },
        )
        if sent is None:
            log.warning("[cache] the Sentry %s could not be sent", level)
