"""The life of one stand-in process: read the settings, load the auth state, run, stop.

Start-up logs one line per mode (:data:`~.lines.FILE_MODE_LINE`,
:data:`~.lines.POSTGRES_MODE_LINE`), then :data:`~.lines.CONNECTION_OPEN_LINE` once the auth
state is loaded; without creds it logs :data:`~.lines.MISSING_CREDS_LINE` and exits non-zero (the
real service would need a QR re-pair). A database error while loading creds, with a creds cache,
starts on the cached creds instead (:mod:`~resilience.drill.standin.service.cachemode`).
"""

from __future__ import annotations

import signal
from pathlib import Path

from prometheus_client import CollectorRegistry

from resilience.alerting.channels import SentryChannel
from resilience.authstate.credscache import CredsCache
from resilience.authstate.fingerprint import next_pre_key_id
from resilience.drill.standin.service.backends import Backend, make_backend
from resilience.drill.standin.service.lines import (
    CONNECTION_OPEN_LINE,
    MISSING_CREDS_LINE,
    NO_CACHE_LINE,
    STOPPED_LINE,
    STOPPED_ON_CACHE_LINE,
)
from resilience.drill.standin.service.logs import log, setup_logging
from resilience.drill.standin.service.runner import FATAL, Service
from resilience.drill.standin.service.settings import StandinConfig, read_config
from resilience.drill.standin.service.state import ServiceState
from resilience.drill.standin.traffic import Traffic
from resilience.drill.standin.writelog import WriteLog
from resilience.errors import DatabaseError, DataError, ResilienceError
from resilience.infra.redact import Redactor


def make_cache(config: StandinConfig) -> CredsCache | None:
    """The creds cache of this configuration (None in file mode or with a TTL of 0)."""
    if not config.creds_cache:
        return None
    return CredsCache(config.creds_cache_ttl_s, config.creds_cache_dir, logger=log)


def _start(cwd: Path) -> Service | int:
    """Read the settings, load the auth state, start HTTP and traffic; or an exit code."""
    backend: Backend | None = None
    sentry: SentryChannel | None = None
    try:
        config = read_config(cwd)
        redactor = Redactor([config.database_url, config.sentry_dsn])
        registry = CollectorRegistry()
        backend = make_backend(config, registry)
        log.info(backend.mode_line())
        cache = make_cache(config)
        if config.sentry_dsn:
            sentry = SentryChannel(config.sentry_dsn, redactor, environment="standin")
        try:
            creds, keys = backend.load()
        except DatabaseError as exc:
            if cache is None:
                raise
            return _start_on_cache(config, backend, cache, sentry, redactor, exc, registry)
        if creds is None:
            source = "PostgreSQL" if config.mode == "postgres" else str(config.auth_dir)
            log.error(MISSING_CREDS_LINE.format(company=config.company, source=source))
            backend.close()
            if sentry is not None:
                sentry.close()
            return DataError.exit_code
        journal = WriteLog(config.journal)
        state = ServiceState(
            config.mode,
            config.company,
            creds,
            keys,
            cache_ttl_s=config.creds_cache_ttl_s if cache is not None else None,
        )
        state.last_seq = journal.seq
        service = Service(
            config,
            backend,
            state,
            journal,
            cache=cache,
            sentry=sentry,
            redactor=redactor,
            registry=registry,
        )
        service._store_in_cache(creds, "load")
        log.info(CONNECTION_OPEN_LINE.format(keys=len(keys)))
        service.start_http()
        service.start_traffic(Traffic(config.write_seed, journal.seq, keys, next_pre_key_id(creds)))
        service.start_readers()
        return service
    except (ResilienceError, OSError) as exc:
        if isinstance(exc, ResilienceError):
            log.error("[standin] cannot start: %s", exc)
        else:
            log.error("[standin] cannot start: %s %s", exc.strerror or exc, exc.filename or "")
        if backend is not None:
            backend.close()
        if sentry is not None:
            sentry.close()
        return exc.exit_code if isinstance(exc, ResilienceError) else 1


def _start_on_cache(
    config: StandinConfig,
    backend: Backend,
    cache: CredsCache,
    sentry: SentryChannel | None,
    redactor: Redactor,
    error: DatabaseError,
    registry: CollectorRegistry | None = None,
) -> Service:
    """Loading creds failed with a database error: run on the cached creds when the entry is
    fresh, fail loudly (503, Sentry error) when it is stale; without an entry, re-raise."""
    entry = cache.entry(config.company)
    if entry is None:
        if config.creds_cache_dir is None:
            why = "CREDS_CACHE_DIR is not set, so no cached creds survive a restart"
        else:
            why = f"no usable copy in {config.creds_cache_dir}"
        log.error(NO_CACHE_LINE.format(company=config.company, why=why))
        raise error
    journal = WriteLog(config.journal)
    state = ServiceState(
        config.mode,
        config.company,
        entry.creds,
        {},
        keys_known=False,
        cache_ttl_s=config.creds_cache_ttl_s,
    )
    state.last_seq = journal.seq
    state.serve_from_cache(entry)
    service = Service(
        config,
        backend,
        state,
        journal,
        cache=cache,
        sentry=sentry,
        redactor=redactor,
        registry=registry,
    )
    service.last_db_error = redactor.text(str(error))
    age = cache.age(entry)
    service.start_http()  # health answers while the alert is sent
    if age <= config.creds_cache_ttl_s:
        service.report_serving(age, f"{entry.source} copy from the last good {entry.origin}")
    else:
        service.report_expired()
    service.start_traffic(Traffic(config.write_seed, journal.seq, {}, next_pre_key_id(entry.creds)))
    return service


def run(cwd: Path) -> int:
    """The whole life of the service; returns the exit code."""
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # Block the stop signals before any thread starts: every thread inherits the mask and the
    # main thread takes them with sigtimedwait, so no handler ever runs inside a write.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    service = _start(cwd)
    if isinstance(service, int):
        return service
    reason = service.wait_for_signal(stop_signals)
    log.info("[standin] %s: stopping", reason)
    service.shutdown()
    final = service.state.snapshot()
    if final["digest"] is None:  # still on cached creds: the keys were never loaded
        log.info(
            STOPPED_ON_CACHE_LINE.format(
                ok=final["writes_ok"],
                failed=final["writes_failed"],
                skipped=final["cache"]["skipped_creds_saves"],
                reads=final["cache"]["failed_key_reads"],
            )
        )
    else:
        log.info(
            STOPPED_LINE.format(
                keys=final["key_count"],
                digest=final["digest"],
                ok=final["writes_ok"],
                failed=final["writes_failed"],
            )
        )
    if reason == FATAL:
        log.error("[standin] %s", service.fatal)
        return 1
    return 0


def main() -> int:
    setup_logging()
    return run(Path.cwd())
