"""The reader threads (``STANDIN_READERS``, PostgreSQL mode): keys read through the pool.

What a pool-exhaustion drill needs; see :mod:`~resilience.drill.standin.service.backends.postgres`.
"""

from __future__ import annotations

import math
import random
import threading
import time

from resilience.drill.standin.service.backends import exc_reason
from resilience.drill.standin.service.core import ServiceCore
from resilience.drill.standin.service.logs import log

READ_BATCH = 5  # keys one reader asks for at a time
READER_REFRESH_S = 5.0  # a reader picks its key ids from the held keys at most this often


class Readers(ServiceCore):
    """The readers' part of the service."""

    def start_readers(self) -> None:
        """Start the reader threads (``STANDIN_READERS``, PostgreSQL mode, once the keys are
        loaded): each reads a few keys through the pool every ``READ_INTERVAL_MS``, so that a
        drill can exhaust the pool."""
        count = self.config.readers
        if self.readers or count <= 0 or self.config.mode != "postgres" or self.state.on_cache:
            return
        for index in range(count):
            reader = threading.Thread(
                target=self._read_loop, args=(index,), name=f"reader-{index}", daemon=True
            )
            self.readers.append(reader)
            reader.start()
        log.info(
            "[reader] %d reader(s) read %d keys each every %d ms (pool of %d)",
            count,
            READ_BATCH,
            self.config.read_interval_ms,
            self.config.pool_size,
        )

    def _read_loop(self, index: int) -> None:
        rng = random.Random(f"{self.config.write_seed}/reader/{index}")  # reproducible per reader
        interval = self.config.read_interval_ms / 1000
        held: tuple[str, list[str]] | None = None
        picked_at = -math.inf
        while not self.stop.is_set():
            if time.monotonic() - picked_at >= READER_REFRESH_S:
                held, picked_at = self.state.reader_ids(), time.monotonic()
            if held is not None:
                key_type, ids = held
                self._read_once(key_type, rng.sample(ids, min(READ_BATCH, len(ids))))
            self.stop.wait(interval)

    def _read_once(self, key_type: str, ids: list[str]) -> None:
        """One reader's read; a failure is counted and logged (throttled), never raised."""
        try:
            self.backend.read_keys(key_type, ids)
        except Exception as exc:  # a reader never stops the service
            if self.stop.is_set():  # the pool closes under it at shutdown
                return
            failed = self.state.reader_read(False)
            if self._reader_failed_log.due():
                log.warning(
                    "[reader] key read failed (%d so far): %s",
                    failed,
                    self.redactor.text(exc_reason(exc)),
                )
        else:
            self.state.reader_read(True)
