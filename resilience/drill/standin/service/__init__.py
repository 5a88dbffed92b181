"""A stand-in for the Baileys WhatsApp service, run by PM2 in drills (``python -m`` this package).

Seen from outside it behaves like the real service (docs/domain.md §4, docs/service-contract.md):
it reads ``.env`` in its working directory and runs in file or PostgreSQL mode as the three flags
say; logs its mode line, then the connected line once the auth state is loaded (no creds: a line
and a non-zero exit); keeps writing keys and journals each acknowledged write; serves
``GET /health`` and ``GET /metrics`` on ``127.0.0.1:PORT``; on SIGTERM / SIGINT lets the
in-flight write finish, logs the final digest and exits 0. With PostgreSQL down at start it can
run on cached creds.

One module per concern:

- :mod:`.settings`: what it reads from ``.env`` (every setting and its default);
- :mod:`.lines`: the log lines and the patterns that find them (what drills wait for);
- :mod:`.backends`: the auth state in PostgreSQL (:mod:`.backends.postgres`: the pool, timed
  statements) or in Baileys' files (:mod:`.backends.files`);
- :mod:`.state`: creds, keys and counters as persisted, and ``/health``'s report;
- :mod:`.metrics` and :mod:`.app`: ``/metrics`` and the HTTP server;
- the service itself, :class:`.runner.Service`: its :mod:`.core` plus the worker
  (:mod:`.writer`), creds saves (:mod:`.creds`), cache mode (:mod:`.cachemode`) and the reader
  threads (:mod:`.readers`);
- :mod:`.startup`: the process's life (``main``, ``run``); :mod:`.logs`: its logger.
"""

from resilience.drill.standin.service.app import make_app
from resilience.drill.standin.service.backends import (
    Backend,
    CredsSaveFailed,
    FileBackend,
    KeyReadFailed,
    PostgresBackend,
    WriteFailed,
    make_backend,
)
from resilience.drill.standin.service.lines import (
    CACHE_EXPIRED_LINE,
    CACHE_EXPIRED_PATTERN,
    CACHE_LEFT_LINE,
    CACHE_LEFT_PATTERN,
    CACHE_SERVING_LINE,
    CACHE_SERVING_PATTERN,
    CONNECTION_OPEN_LINE,
    CONNECTION_OPEN_PATTERN,
    FILE_MODE_LINE,
    FILE_MODE_PATTERN,
    HTTP_LINE,
    HTTP_PATTERN,
    MISSING_CREDS_LINE,
    MISSING_CREDS_PATTERN,
    NO_CACHE_LINE,
    NO_CACHE_PATTERN,
    POSTGRES_MODE_LINE,
    POSTGRES_MODE_PATTERN,
    STOPPED_LINE,
    STOPPED_ON_CACHE_LINE,
    STOPPED_ON_CACHE_PATTERN,
    STOPPED_PATTERN,
    mode_pattern,
)
from resilience.drill.standin.service.runner import Service
from resilience.drill.standin.service.settings import (
    DEFAULT_GRACE_MS,
    HOST,
    StandinConfig,
    mode_from_flags,
    read_config,
)
from resilience.drill.standin.service.startup import main, run
from resilience.drill.standin.service.state import ServiceState, creds_fingerprint

__all__ = [
    "CACHE_EXPIRED_LINE",
    "CACHE_EXPIRED_PATTERN",
    "CACHE_LEFT_LINE",
    "CACHE_LEFT_PATTERN",
    "CACHE_SERVING_LINE",
    "CACHE_SERVING_PATTERN",
    "CONNECTION_OPEN_LINE",
    "CONNECTION_OPEN_PATTERN",
    "DEFAULT_GRACE_MS",
    "FILE_MODE_LINE",
    "FILE_MODE_PATTERN",
    "HOST",
    "HTTP_LINE",
    "HTTP_PATTERN",
    "MISSING_CREDS_LINE",
    "MISSING_CREDS_PATTERN",
    "NO_CACHE_LINE",
    "NO_CACHE_PATTERN",
    "POSTGRES_MODE_LINE",
    "POSTGRES_MODE_PATTERN",
    "STOPPED_LINE",
    "STOPPED_ON_CACHE_LINE",
    "STOPPED_ON_CACHE_PATTERN",
    "STOPPED_PATTERN",
    "Backend",
    "CredsSaveFailed",
    "FileBackend",
    "KeyReadFailed",
    "PostgresBackend",
    "Service",
    "ServiceState",
    "StandinConfig",
    "WriteFailed",
    "creds_fingerprint",
    "main",
    "make_app",
    "make_backend",
    "mode_from_flags",
    "mode_pattern",
    "read_config",
    "run",
]
