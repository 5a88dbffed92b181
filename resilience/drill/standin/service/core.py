"""What every part of one run of the stand-in shares: its settings, backend, state and threads.

:class:`~resilience.drill.standin.service.runner.Service` is this core plus one mixin per
concern: the writer (:mod:`.writer`), creds saves (:mod:`.creds`), cache mode
(:mod:`.cachemode`) and the readers (:mod:`.readers`). The methods one concern calls on another
are declared here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, Literal

from prometheus_client import CollectorRegistry
from werkzeug.serving import BaseWSGIServer

from resilience.alerting.channels import SentryChannel
from resilience.authstate.credscache import CredsCache
from resilience.drill.standin.service.backends import Backend, KeyMap
from resilience.drill.standin.service.logs import Throttle
from resilience.drill.standin.service.settings import StandinConfig
from resilience.drill.standin.service.state import ServiceState
from resilience.drill.standin.traffic import KeyWrite
from resilience.drill.standin.writelog import WriteLog
from resilience.infra.redact import Redactor


class ServiceCore:
    """One run of the stand-in: loaded state, the worker thread (traffic, and in cache mode the
    reload attempts), the reader threads, HTTP server."""

    def __init__(
        self,
        config: StandinConfig,
        backend: Backend,
        state: ServiceState,
        journal: WriteLog,
        *,
        cache: CredsCache | None = None,
        sentry: SentryChannel | None = None,
        redactor: Redactor | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.backend = backend
        self.state = state
        self.journal = journal
        self.cache = cache
        self.sentry = sentry
        self.redactor = redactor or Redactor([config.database_url])
        self.stop = threading.Event()
        self.fatal: str | None = None
        self.http: BaseWSGIServer | None = None
        self.writer: threading.Thread | None = None
        self.readers: list[threading.Thread] = []
        self._fail_streak = 0
        self._last_warning = 0.0
        self._next_save = time.monotonic() + config.creds_save_interval_ms / 1000
        # Baileys' creds in memory: ahead of the saved ones (state.creds) until a save is made
        self.creds: Any = state.creds
        self._creds_unsaved = False  # a save is due (a pre-key upload, or a failed save)
        self._next_reload = time.monotonic() + config.cache_reload_interval_ms / 1000
        self._expiry_reported = False
        self.last_db_error = ""
        self._save_failed_log = Throttle()
        self._skipped_log = Throttle()
        self._read_failed_log = Throttle()
        self._reload_failed_log = Throttle(30.0)
        self._reader_failed_log = Throttle()

    # --- what one concern calls on another (each defined by its mixin) -------------------------
    def start_readers(self) -> None:
        raise NotImplementedError  # readers.Readers

    def _after_acknowledged(self, writes: Sequence[KeyWrite]) -> None:
        raise NotImplementedError  # creds.CredsSaves

    def _maybe_save_creds(self) -> None:
        raise NotImplementedError  # creds.CredsSaves

    def _store_in_cache(self, creds: Any, origin: Literal["load", "save"]) -> None:
        raise NotImplementedError  # creds.CredsSaves

    def _read_tick(self, pending: Sequence[KeyWrite]) -> bool:
        raise NotImplementedError  # cachemode.CacheMode

    def _cache_tick(self) -> KeyMap | None:
        raise NotImplementedError  # cachemode.CacheMode
