"""Creds saves, as Baileys makes them (both modes, through the backend in use).

Pre-key ids are issued from the creds' ``nextPreKeyId`` (:mod:`resilience.drill.standin.traffic`);
once a batch that issues pre-keys was acknowledged (and journaled), ``nextPreKeyId`` and
``firstUnuploadedPreKeyId`` move past them and the creds are saved (Baileys' ``creds.update``
after ``uploadPreKeys``): ``creds.json`` in file mode, the creds row in PostgreSQL mode. A save
that fails is counted (``creds_saves_failed``), logged (throttled) and made again after the next
acknowledged write. ``PRE_KEY_CREDS_SAVE=false`` (from ``.env``; default ``true``) keeps the
counters in memory only (a drill that needs ``creds.json`` left as it made it).
``CREDS_SAVE_INTERVAL_MS`` (default 0: never) adds periodic saves, as Baileys makes on other
``creds.update`` events (``accountSyncCounter`` and ``lastAccountSyncTimestamp`` change). Every
save is counted in ``creds_saves_ok`` and cached (:mod:`~.cachemode`); none is made while
serving from the cache (counted in ``skipped_creds_saves``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

from resilience.drill.standin.service.backends import CredsSaveFailed
from resilience.drill.standin.service.core import ServiceCore
from resilience.drill.standin.service.logs import log
from resilience.drill.standin.traffic import KeyWrite, creds_after_pre_keys
from resilience.errors import ResilienceError


class CredsSaves(ServiceCore):
    """The creds saves' part of the service (and what it puts in the creds cache)."""

    def _after_acknowledged(self, writes: Sequence[KeyWrite]) -> None:
        """Baileys after the ``keys.set`` of a pre-key upload: ``nextPreKeyId`` and
        ``firstUnuploadedPreKeyId`` move past the new pre-keys and the creds are saved
        (``creds.update``). A save that failed before is made again here."""
        moved = creds_after_pre_keys(self.creds, writes)
        if moved is not None:
            self.creds = moved
            if self.config.pre_key_creds_save:
                self._creds_unsaved = True
        if self._creds_unsaved:
            self._save_creds()

    def _maybe_save_creds(self) -> None:
        """Save the creds when a periodic save is due (``CREDS_SAVE_INTERVAL_MS``), as Baileys
        does on ``creds.update``."""
        if self.config.creds_save_interval_ms <= 0 or time.monotonic() < self._next_save:
            return
        self._next_save = time.monotonic() + self.config.creds_save_interval_ms / 1000
        if not self.state.on_cache:
            self.creds = _updated_creds(self.creds)
        self._save_creds()

    def _save_creds(self) -> None:
        """Save the creds held in memory through the backend in use (``creds.json`` or the
        creds row), counted and cached; skipped (and counted) while serving from the cache; a
        failed save is counted and made again after the next acknowledged write."""
        self._creds_unsaved = False
        if self.state.on_cache:
            skipped = self.state.skipped_save()
            if self._skipped_log.due():
                log.warning(
                    "[cache] creds save skipped: serving creds from cache, nothing is saved "
                    "until PostgreSQL is back (%d skipped so far)",
                    skipped,
                )
            return
        creds = self.creds
        try:
            self.backend.save_creds(creds)
        except CredsSaveFailed as exc:
            self._creds_unsaved = True
            self.state.creds_save_failed()
            if self._save_failed_log.due():
                log.warning(
                    "[auth] creds save failed, retrying after the next acknowledged write: %s",
                    self.redactor.text(str(exc)),
                )
            return
        self.state.creds_saved(creds)
        self._store_in_cache(creds, "save")

    def _store_in_cache(self, creds: Any, origin: Literal["load", "save"]) -> None:
        if self.cache is None:
            return
        try:
            entry = self.cache.store(self.config.company, creds, origin=origin)
        except ResilienceError as exc:
            log.warning("[cache] creds not cached: %s", exc)
            return
        self.state.cached(entry)


def _updated_creds(creds: Any) -> Any:
    """The creds after a ``creds.update`` of Baileys: the account sync counter and time move."""
    if not isinstance(creds, dict):
        return creds
    counter = creds.get("accountSyncCounter")
    if isinstance(counter, bool) or not isinstance(counter, int):
        counter = 0
    return {
        **creds,
        "accountSyncCounter": counter + 1,
        "lastAccountSyncTimestamp": int(time.time()),
    }
