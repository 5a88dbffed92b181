"""One run of the stand-in: the core and its concerns in one class, started, waited on, stopped.

SIGTERM / SIGINT: the service stops writing, lets the in-flight write finish (up to
``SHUTDOWN_GRACE_MS``), and :func:`~resilience.drill.standin.service.startup.run` logs
:data:`~resilience.drill.standin.service.lines.STOPPED_LINE` with the final digest and exits 0.
"""

from __future__ import annotations

import math
import signal
import time

from resilience.drill.standin.service.app import serve
from resilience.drill.standin.service.cachemode import CacheMode
from resilience.drill.standin.service.creds import CredsSaves
from resilience.drill.standin.service.logs import log
from resilience.drill.standin.service.readers import Readers
from resilience.drill.standin.service.writer import Writer
from resilience.infra.waiting import wait_until

SIGNAL_WAIT = 0.25  # seconds between two looks at the stop flag while waiting for a signal
FATAL = "fatal error"


class Service(Writer, CacheMode, CredsSaves, Readers):
    """One run of the stand-in: loaded state, the worker thread (traffic, and in cache mode the
    reload attempts), the reader threads, HTTP server."""

    def start_http(self) -> None:
        if self.config.port is None:
            return
        self.http = serve(self.config.port, self.state, self.backend, self.registry)

    def wait_for_signal(self, signals: set[signal.Signals]) -> str:
        """Block until a stop signal (blocked in every thread) or a fatal traffic error."""

        def stopped() -> str | None:
            info = signal.sigtimedwait(signals, SIGNAL_WAIT)  # the wait between checks
            if info is not None:
                return signal.Signals(info.si_signo).name
            return FATAL if self.stop.is_set() else None

        # No deadline: the service runs until stopped. Nothing raised here is "not yet".
        return wait_until(stopped, math.inf, "a stop signal", interval=0, fatal=(Exception,))

    def shutdown(self) -> None:
        self.stop.set()
        deadline = time.monotonic() + self.config.shutdown_grace_ms / 1000
        if self.writer is not None:
            self.writer.join(self.config.shutdown_grace_ms / 1000)
            if self.writer.is_alive():
                log.warning(
                    "[standin] the in-flight write did not finish within %d ms; exiting anyway",
                    self.config.shutdown_grace_ms,
                )
        self.journal.close()  # waits for a journal append in progress
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        if self.writer is None or not self.writer.is_alive():
            self.backend.close()  # readers waiting for a connection fail at once
        for reader in self.readers:  # one blocked in a query is left behind (a daemon)
            reader.join(max(0.0, deadline - time.monotonic()))
        if self.sentry is not None:
            self.sentry.close()
