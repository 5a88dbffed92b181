"""The worker thread: keys written on every tick, each acknowledged batch journaled and applied.

The stand-in keeps writing keys (:mod:`resilience.drill.standin.traffic`) through the current
backend, journals each acknowledged write (:mod:`resilience.drill.standin.writelog`) and applies
it to its in-memory state only then; a failed write is logged, counted and retried on the next
tick. In cache mode the same thread makes the reload attempts
(:mod:`~resilience.drill.standin.service.cachemode`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from resilience.authstate.fingerprint import next_pre_key_id
from resilience.drill.standin.service.backends import KeyMap, WriteFailed, exc_reason
from resilience.drill.standin.service.core import ServiceCore
from resilience.drill.standin.service.logs import log
from resilience.drill.standin.service.state import utc_now
from resilience.drill.standin.traffic import KeyWrite, Traffic
from resilience.errors import DataError


class Writer(ServiceCore):
    """The worker's part of the service: traffic, and in cache mode the reload attempts."""

    def start_traffic(self, traffic: Traffic) -> None:
        """Start the worker: traffic when enabled; in cache mode also the reload attempts
        (then it runs even with traffic disabled)."""
        if not self.config.traffic:
            log.info("[traffic] disabled")
            if not self.state.on_cache:
                return
        self.writer = threading.Thread(
            target=self._traffic_loop, args=(traffic,), name="traffic", daemon=True
        )
        self.writer.start()
        if self.config.traffic:
            log.info(
                "[traffic] writing keys every %d ms (seed %r)",
                self.config.write_interval_ms,
                self.config.write_seed,
            )

    def _traffic_loop(self, traffic: Traffic) -> None:
        try:
            self._write_until_stopped(traffic)
        except Exception as exc:  # anything unexpected ends the service, loudly
            self.fatal = f"traffic stopped: {type(exc).__name__}: {exc_reason(exc)}"
            self.stop.set()

    def _write_until_stopped(self, traffic: Traffic) -> None:
        if self.config.traffic:
            interval = self.config.write_interval_ms / 1000
        else:
            interval = self.config.cache_reload_interval_ms / 1000
        pending: list[KeyWrite] | None = None
        next_at = time.monotonic()
        while not self.stop.is_set():
            if self.state.on_cache:
                loaded = self._cache_tick()
                if loaded is not None:  # back on PostgreSQL: traffic goes on from its keys
                    traffic = self._traffic_after_load(traffic, loaded)
                    pending = None
                if self.stop.is_set():
                    break
            if not self.state.on_cache:
                if not self.config.traffic:
                    return
                pending = self._write_tick(traffic, pending)
                self._maybe_save_creds()
            elif self.config.traffic and not self.state.expired():
                if pending is None:
                    pending = traffic.next_batch()
                if self._read_tick(pending):
                    # The database answered: load now instead of at the next attempt, and
                    # write nothing on cached creds meanwhile.
                    self._next_reload = 0.0
                    loaded = self._cache_tick()
                    if loaded is not None:
                        traffic = self._traffic_after_load(traffic, loaded)
                        pending = None
                else:
                    pending = self._write_tick(traffic, pending)
                    self._maybe_save_creds()
            next_at = max(next_at + interval, time.monotonic())
            self.stop.wait(next_at - time.monotonic())

    def _traffic_after_load(self, traffic: Traffic, keys: KeyMap) -> Traffic:
        """The stream once the keys were loaded (leaving cache mode): from those keys and the
        loaded creds' ``nextPreKeyId``, never below an id this run already issued."""
        floor = max(next_pre_key_id(self.creds) or 0, traffic.next_pre_key)
        return Traffic(self.config.write_seed, self.journal.seq, keys, floor)

    def _write_tick(
        self, traffic: Traffic, pending: list[KeyWrite] | None
    ) -> list[KeyWrite] | None:
        """One write attempt of the pending batch (a new one when none); returns what is still
        pending (a failed batch is retried unchanged)."""
        if pending is None:
            pending = traffic.next_batch()
        acknowledged: Sequence[KeyWrite]
        left: list[KeyWrite] | None
        began = time.monotonic()
        try:
            self.backend.write(pending)
        except WriteFailed as failure:
            acknowledged, left = pending[: failure.done], pending[failure.done :]
            self._failed(failure.reason)
        else:
            acknowledged, left = pending, None
            self._succeeded()
        if acknowledged:
            at = utc_now()
            try:
                entries = self.journal.append(
                    acknowledged,
                    mode=self.backend.mode,
                    company=self.config.company,
                    at=at,
                    latency_ms=(time.monotonic() - began) * 1000,
                )
            except OSError as exc:
                raise DataError(
                    f"cannot journal acknowledged writes to {self.journal.path}: {exc.strerror}"
                ) from None
            self.state.apply(acknowledged, at, entries[-1].seq)
            traffic.applied(acknowledged)
            self._after_acknowledged(acknowledged)
        return left

    def _failed(self, reason: str) -> None:
        self.state.failed()
        self._fail_streak += 1
        now = time.monotonic()
        if self._fail_streak == 1 or now - self._last_warning >= 5.0:
            self._last_warning = now
            log.warning(
                "[auth] key write failed (%d in a row), retrying on the next tick: %s",
                self._fail_streak,
                self.redactor.text(reason),
            )

    def _succeeded(self) -> None:
        if self._fail_streak:
            log.info("[auth] key writes resumed after %d failed attempt(s)", self._fail_streak)
            self._fail_streak = 0

    # --- creds saves, key reads and the creds cache ---------------------------------------------
