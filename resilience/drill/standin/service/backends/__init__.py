"""The stand-in's auth-state backends: PostgreSQL (:mod:`.postgres`) or files (:mod:`.files`)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry

from resilience.drill.standin.service.backends.base import (
    Backend,
    CredsSaveFailed,
    KeyMap,
    KeyReadFailed,
    WriteFailed,
    exc_reason,
)
from resilience.drill.standin.service.backends.files import FileBackend
from resilience.drill.standin.service.backends.postgres import PostgresBackend
from resilience.drill.standin.service.logs import Throttle, log
from resilience.drill.standin.service.settings import StandinConfig
from resilience.monitoring.latency import QueryRecord

__all__ = [
    "Backend",
    "CredsSaveFailed",
    "FileBackend",
    "KeyMap",
    "KeyReadFailed",
    "PostgresBackend",
    "WriteFailed",
    "exc_reason",
    "make_backend",
]


def _slow_query_logger(slow_ms: int) -> Callable[[QueryRecord], None]:
    throttle = Throttle()

    def slow(record: QueryRecord) -> None:
        if throttle.due():  # the statement's head only, never its parameters
            log.warning(
                "[auth] slow query: %.0f ms (> %d ms): %s",
                record.duration_s * 1000,
                slow_ms,
                record.sql,
            )

    return slow


def make_backend(config: StandinConfig, registry: CollectorRegistry | None = None) -> Backend:
    """The backend of this configuration; in PostgreSQL mode its query and pool metrics go to
    ``registry`` (when given)."""
    if config.mode == "file":
        return FileBackend(config.auth_dir, config.company)
    assert config.database_url is not None  # read_config guarantees it
    return PostgresBackend(
        config.database_url,
        config.company,
        connect_timeout=config.connect_timeout_ms / 1000,
        pool_size=config.pool_size,
        application_name=config.application_name,
        registry=registry,
        slow_s=config.slow_query_ms / 1000,
        on_slow=_slow_query_logger(config.slow_query_ms),
        buffer_form=config.buffer_form,
    )
