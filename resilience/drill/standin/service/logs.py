"""The stand-in's one logger (stdout, one line per event) and the throttle of repeated warnings."""

from __future__ import annotations

import logging
import sys
import threading
import time

LOG_EVERY_S = 5.0  # a repeated warning (failed writes, skipped saves, reads) at most this often

#: Every module of the stand-in logs here: one handler, one format, whatever module speaks.
log = logging.getLogger("resilience.drill.standin.service")


class Throttle:
    """At most one log line per ``every`` seconds for a repeated event (the first always)."""

    def __init__(self, every: float = LOG_EVERY_S) -> None:
        self.every = every
        self._last: float | None = None
        self._lock = threading.Lock()  # readers share one

    def due(self) -> bool:
        now = time.monotonic()
        with self._lock:
            if self._last is None or now - self._last >= self.every:
                self._last = now
                return True
            return False


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    # The pool's own warnings (each failed background connect, threads still stopping when an
    # old pool is closed) would repeat what the throttled lines above say, unthrottled.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
