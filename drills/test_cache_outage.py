"""Drill: PostgreSQL goes away and PM2 restarts the service in the middle of the outage; the creds
cache carries it through, or, when the outage outlasts the cache's TTL, the service fails loudly
(docs/domain.md §8; §5: "cache survives an outage: 5 min, tested with a 3-minute outage").

The stand-in runs under PM2 in PostgreSQL mode with its creds cache on disk
(``CREDS_CACHE_DIR``), a TTL (``CREDS_CACHE_TTL_S``), Sentry (the stack's receiver) and periodic
creds saves, writing keys throughout. Each scenario is steady state -> fault -> PM2 restart in
the middle of it -> assertions during the outage -> fault removed -> assertions after, journaled
into ``reports/drill-cache.{json,html}``. Everything is read from the service's own health and
log, the Sentry receiver, and the database through the admin DSN (which does not go through the
proxy the fault sits on):

- survive (outage shorter than the TTL, once as a black hole, once as a disabled proxy): the
  restarted service runs on the cached creds (exactly the database's last creds), sends one
  Sentry warning whose cache age is the true one (since the last good save, before the outage),
  saves no creds to PostgreSQL while on the cache (``whatsapp_auth`` row unchanged, saves
  counted as skipped), its key reads fail and are counted; after the outage it returns to
  PostgreSQL by itself and nothing is lost (every acknowledged key write in the database, by
  fingerprint, and the creds it saved last);
- expire (outage longer than the TTL): the entry expires while the service runs on it, then a
  second restart finds it stale: each time a Sentry error and ``/health`` 503 with
  ``"ok": false``; after the outage it recovers, nothing lost.

The default run scales time down (a TTL of seconds, outages a bit longer or shorter); the true
durations (TTL 300 s, outages of 3 and 6 minutes) run only under ``@pytest.mark.slow``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from dotenv import dotenv_values

from resilience.authstate.credscache import decode_copy, file_name
from resilience.authstate.fingerprint import KeyFingerprint
from resilience.authstate.pgconn import connect
from resilience.chaos import faults
from resilience.chaos.toxiproxy import ToxiproxyClient
from resilience.config import DrillSettings
from resilience.drill.evidence import database_state, differences, replay, seeded
from resilience.drill.fakes.receivers import ReceiverClient
from resilience.drill.fakes.sentry import SentryRecord
from resilience.drill.report import DrillReport
from resilience.drill.service import ServiceUnderTest
from resilience.drill.stack import Stack
from resilience.drill.standin.deploy import standin_on_stack
from resilience.drill.standin.service import (
    CACHE_EXPIRED_PATTERN,
    CACHE_LEFT_PATTERN,
    CACHE_SERVING_PATTERN,
    CONNECTION_OPEN_PATTERN,
)
from resilience.drill.standin.traffic import Traffic
from resilience.drill.standin.writelog import WriteEntry
from resilience.infra.waiting import wait_until
from resilience.runs.journal import Journal

from .conftest import SEEDED_KEYS

pytestmark = pytest.mark.stack

SERVING_EVENT = "creds-cache-serving"
EXPIRED_EVENT = "creds-cache-expired"


@dataclass(frozen=True)
class Timing:
    """How long things take in one run of a scenario (seconds)."""

    ttl_s: float
    outage_s: float
    restarts_at_s: tuple[float, ...]  # PM2 restarts, measured from the start of the outage
    save_interval_ms: int = 500  # the stand-in saves creds this often (Baileys' creds.update)
    env: dict[str, str] = field(default_factory=dict)  # more .env settings of the stand-in

    @property
    def save_interval_s(self) -> float:
        return self.save_interval_ms / 1000


# Quick timeouts keep the default run in seconds: a black-holed connection attempt gives up
# after 2 s (libpq's least connect timeout), a write stuck in a black hole is abandoned 1 s
# after SIGTERM.
QUICK = {"DB_CONNECT_TIMEOUT_MS": "1000", "CACHE_RELOAD_INTERVAL_MS": "1000"}
QUICK |= {"SHUTDOWN_GRACE_MS": "1000"}
# The true durations, with the stand-in's own defaults except a shorter connect timeout.
TRUE = {"DB_CONNECT_TIMEOUT_MS": "5000"}

# An outage lasts `outage_s`, and at least until the service on cached creds has tried (and
# failed) a key read and a key write and skipped a creds save: with a black hole each attempt
# waits for the connect timeout.
SURVIVE = {
    "black-hole": Timing(ttl_s=20, outage_s=10, restarts_at_s=(4,), env=QUICK),
    "proxy-disabled": Timing(ttl_s=20, outage_s=6, restarts_at_s=(3,), env=QUICK),
}
SURVIVE_TRUE = Timing(ttl_s=300, outage_s=180, restarts_at_s=(90,), save_interval_ms=5000, env=TRUE)
EXPIRE = Timing(ttl_s=6, outage_s=10, restarts_at_s=(1, 8), env=QUICK)
EXPIRE_TRUE = Timing(
    ttl_s=300, outage_s=360, restarts_at_s=(180, 330), save_interval_ms=5000, env=TRUE
)


# --- the service under drill -----------------------------------------------------------------
@dataclass
class CacheRig:
    service: ServiceUnderTest
    cache_dir: Path
    timing: Timing

    @property
    def stack(self) -> Stack:
        return self.service.stack

    @property
    def company(self) -> str:
        return self.service.company

    @property
    def copy_path(self) -> Path:
        return self.cache_dir / file_name(self.company)

    def health(self) -> tuple[int, dict[str, Any]]:
        """The service's own view, with the HTTP status (503 when it cannot run)."""
        url = self.service.settings.health_url
        assert url, "the stand-in always has a health URL"
        response = httpx.get(url, timeout=2)
        body: dict[str, Any] = response.json()
        return response.status_code, body

    def log(self) -> str:
        app = self.service.pm2.require(self.service.deployed.app)
        assert app.out_log is not None
        return app.out_log.read_text(errors="replace")

    def copy(self) -> dict[str, Any]:
        """The on-disk copy as a document (its creds' fingerprint instead of the creds)."""
        raw = self.copy_path.read_bytes()
        entry = decode_copy(raw, self.company, now=time.time())
        document: dict[str, Any] = json.loads(raw)
        document["creds"] = KeyFingerprint.of("creds", "", entry.creds)
        document["mode"] = oct(self.copy_path.stat().st_mode & 0o777)
        document["dir_mode"] = oct(self.copy_path.parent.stat().st_mode & 0o777)
        return document

    def db_creds(self) -> tuple[str, str]:
        """(creds fingerprint, updated_at) of the company's row, through the admin DSN."""
        from resilience.authstate.pgstore import PgAuthStore

        with connect(self.stack.endpoints.admin_dsn) as conn:
            row = conn.execute(
                "SELECT updated_at FROM whatsapp_auth WHERE company_id = %s", (self.company,)
            ).fetchone()
            creds = PgAuthStore(conn).load_creds(self.company)
        assert row is not None and creds is not None
        return KeyFingerprint.of("creds", "", creds), row[0].isoformat()

    def sentry(self, event: str) -> list[SentryRecord]:
        url = self.stack.endpoints.receivers_url
        assert url
        with ReceiverClient(url) as receivers:
            return [r for r in receivers.sentry_events() if _is(r, self.company, event)]

    def wait_sentry(self, event: str, count: int, timeout: float = 30) -> list[SentryRecord]:
        def enough() -> list[SentryRecord] | None:
            found = self.sentry(event)
            return found if len(found) >= count else None

        return wait_until(enough, timeout, f"{count} Sentry {event} event(s)")

    def wait(
        self, check: Callable[[int, dict[str, Any]], bool], what: str, timeout: float = 60
    ) -> dict[str, Any]:
        """Poll health until `check(status, body)`; an unreachable service is "not yet"."""

        def ok() -> dict[str, Any] | None:
            status, body = self.health()
            return body if check(status, body) else None

        return wait_until(ok, timeout, what, fatal=(AssertionError,))

    def hold(
        self,
        t0: float,
        until_s: float,
        check: Callable[[int, dict[str, Any]], bool | None],
        what: str,
    ) -> dict[str, Any]:
        """Keep polling health until `until_s` seconds after `t0` and until `check` returns
        something other than False, asserting `check` on every answer: the waiting is the
        observation."""

        def done() -> dict[str, Any] | None:
            status, body = self.health()
            enough = check(status, body) is not False
            return body if enough and time.monotonic() - t0 >= until_s else None

        timeout = max(0.0, until_s - (time.monotonic() - t0)) + 30
        return wait_until(done, timeout, what, interval=0.25, fatal=(AssertionError,))


def _is(record: SentryRecord, company: str, event: str) -> bool:
    tags = record.get("tags") or {}
    return tags.get("company") == company and tags.get("event") == event


@contextmanager
def cache_rig(
    stack: Stack, settings: DrillSettings, tmp_path: Path, timing: Timing
) -> Iterator[CacheRig]:
    if settings.backend == "external":
        pytest.skip(
            "the creds-cache drill needs the stand-in (its .env settings, health and write "
            "log); against staging, run the real service's own cache tests"
        )
    ep = stack.endpoints
    if not ep.sentry_dsn or not ep.receivers_url:
        pytest.fail("the stack has no Sentry receiver: the drill must see the alerts")
    cache_dir = tmp_path / "creds-cache"
    extra = {
        "CREDS_CACHE_DIR": str(cache_dir),
        "CREDS_CACHE_TTL_S": f"{timing.ttl_s:g}",
        "CREDS_SAVE_INTERVAL_MS": str(timing.save_interval_ms),
        "SENTRY_DSN": ep.sentry_dsn,
        **timing.env,
    }
    with standin_on_stack(
        stack, settings, tmp_path, prefix="cache", keys=SEEDED_KEYS, extra_env=extra
    ) as s:
        service = ServiceUnderTest(stack, s.deployed, s.settings, s.pm2, s.dataset)
        service.wait_mode("postgres")
        yield CacheRig(service, cache_dir, timing)


def scenario(report: DrillReport, title: str, rig: CacheRig) -> AbstractContextManager[Journal]:
    ep = rig.stack.endpoints
    return report.scenario(title, *(s for s in (ep.service_dsn, ep.admin_dsn, ep.sentry_dsn) if s))


def inject(rig: CacheRig, toxiproxy: ToxiproxyClient, fault: str) -> AbstractContextManager[Any]:
    ep = rig.stack.endpoints
    if fault == "black-hole":
        return faults.black_hole(toxiproxy, ep.toxiproxy_proxy, allowed=ep.drill_target)
    return faults.proxy_disabled(toxiproxy, ep.toxiproxy_proxy, allowed=ep.drill_target)


FAULTS = {
    "black-hole": "black hole (timeout toxic 0 on both streams: connections hang, nothing passes)",
    "proxy-disabled": "proxy disabled (connections refused, open ones closed)",
}


# --- steps shared by the scenarios ------------------------------------------------------------
def steady(rig: CacheRig, journal: Journal) -> dict[str, Any]:
    """The service on PostgreSQL with a fresh cache entry that its saves keep fresh, and a
    private on-disk copy."""
    saves = 2 if rig.timing.save_interval_ms <= 1000 else 1
    body = rig.wait(
        lambda status, h: (
            status == 200
            and h["cache"]["state"] == "fresh"
            and h["creds_saves_ok"] >= saves
            and h["writes_ok"] >= 5
        ),
        "the service on PostgreSQL with a fresh creds cache",
        timeout=30 + 2 * rig.timing.save_interval_s,
    )
    copy = rig.copy()
    assert (copy["mode"], copy["dir_mode"]) == ("0o600", "0o700")
    state = {k: body[k] for k in ("mode", "company", "ok", "writes_ok", "creds_saves_ok")}
    state |= {"cache": body["cache"], "copy_mode": copy["mode"], "copy_dir_mode": copy["dir_mode"]}
    journal.steady_state("before", state)
    return body


def restart(rig: CacheRig, journal: Journal, t0: float, at_s: float, old_pid: int) -> float:
    """PM2 restarts the service `at_s` seconds into the outage (the wait watches health);
    returns the moment of the restart."""
    rig.hold(t0, at_s, lambda status, h: None, f"{at_s:g} s into the outage")
    with journal.step("pm2-restart") as step:
        rig.service.pm2.restart(rig.service.deployed.app)
        step.details.update(at_s=round(time.monotonic() - t0, 3), old_pid=old_pid)
    return time.monotonic()


def new_process(rig: CacheRig, old_pid: int, state: str) -> Callable[[int, dict[str, Any]], bool]:
    def check(status: int, body: dict[str, Any]) -> bool:
        return body.get("pid") != old_pid and body.get("cache", {}).get("state") == state

    return check


def back_on_postgres(
    rig: CacheRig, journal: Journal, writes_before: int
) -> tuple[dict[str, Any], float]:
    """After the fault is gone: the service leaves cache mode by itself and writes again."""
    t_back = time.monotonic()
    with journal.step("return-to-postgres") as step:
        body = rig.wait(
            lambda status, h: (
                status == 200
                and h["cache"]["state"] == "fresh"
                and h["key_count"] is not None
                and h["writes_ok"] > writes_before
            ),
            "the service back on PostgreSQL",
            timeout=60,
        )
        recovered_s = time.monotonic() - t_back
        step.details.update(recovered_s=round(recovered_s, 3), pid=body["pid"])
    log = rig.log()
    left = list(CACHE_LEFT_PATTERN.finditer(log))
    assert left and left[-1]["company"] == rig.company, "no line says it left cache mode"
    opened = CONNECTION_OPEN_PATTERN.search(log, left[-1].end())
    assert opened is not None, "no 'connection open' after leaving cache mode"
    journal.event("log", left[-1].group(0))
    journal.steady_state(
        "after",
        {k: body[k] for k in ("mode", "ok", "key_count", "writes_ok", "creds_saves_ok", "cache")},
    )
    return body, recovered_s


def in_flight_batch(rig: CacheRig, entries: list[WriteEntry]) -> dict[tuple[str, str], str | None]:
    """The batch the first process had sent but not seen acknowledged when PM2 restarted it
    in the outage, by fingerprint (None: a deletion).

    The fault can cut a write between its COMMIT and the answer: PostgreSQL has it, the service
    never journaled it. Traffic is deterministic (seed, start sequence, keys at start, the
    acknowledged batches), so that one batch is recomputed exactly: a difference between the
    database and the acknowledged writes is excused only when it is this batch, committed."""
    if not entries:
        return {}
    assert rig.service.dataset is not None
    seed = dotenv_values(rig.service.deployed.env_file).get("WRITE_SEED") or "standin"
    first = [e for e in entries if e.pid == entries[0].pid]
    traffic = Traffic(seed, 0, list(seeded(rig.service.dataset, rig.company)))
    done = 0
    while done < len(first):
        batch = traffic.next_batch()
        chunk = [(e.type, e.id) for e in first[done : done + len(batch)]]
        assert chunk == [w.ref for w in batch], f"the write log departs from traffic at {done}"
        traffic.applied(batch)
        done += len(batch)
    return {
        w.ref: None if w.deleted else KeyFingerprint.of(w.key_type, w.key_id, w.value)
        for w in traffic.next_batch()
    }


def nothing_lost(rig: CacheRig) -> dict[str, Any]:
    """Stop the service; then every acknowledged key write is in the database by fingerprint,
    and the creds in the database are the ones it saved (and cached) last."""
    service = rig.service

    def settled() -> bool:
        body = rig.health()[1]
        return bool(body["creds_saves_ok"] >= 1 and body["writes_ok"] >= 10)

    wait_until(settled, 30 + 2 * rig.timing.save_interval_s, "writes and a creds save")
    service.pm2.stop(service.deployed.app)
    db_creds, db_prints, db_digest = database_state(rig.stack.endpoints.admin_dsn, service.company)
    entries = service.acknowledged_writes() or []
    assert service.dataset is not None
    expected = replay(seeded(service.dataset, service.company), entries)
    differ = differences(db_prints, expected)
    orphan = in_flight_batch(rig, entries) if differ else {}
    lost = [k for k in differ if k not in orphan or db_prints.get(k) != orphan[k]]
    assert lost == [], f"acknowledged writes missing from PostgreSQL: {lost[:5]}"
    copy = rig.copy()
    assert copy["creds"] == db_creds, "the creds in PostgreSQL are not the last ones saved"
    return {
        "writes_acknowledged": len(entries),
        "keys_in_db_after": len(db_prints),
        "db_digest_after": db_digest,
        "keys_lost": len(lost),
        "committed_unacknowledged_keys": [f"{t}/{i}" for t, i in differ],
    }


def true_age_checked(rig: CacheRig, warning: SentryRecord, stored_at: float) -> float:
    """The age the warning carries is the time since the entry's good save, as the receiver saw
    it (not the time since the process started)."""
    message = warning.get("message") or ""
    assert f"company {rig.company}" in message
    age = float(message.split("cache age ", 1)[1].split(" s", 1)[0])
    received = datetime.fromisoformat(str(warning["received_at"])).timestamp()
    assert abs(age - (received - stored_at)) < 3.0, (age, received - stored_at)
    return age


# --- scenarios --------------------------------------------------------------------------------
def _survive(rig: CacheRig, report: DrillReport, title: str, fault: str) -> None:
    timing = rig.timing
    with scenario(report, title, rig) as journal:
        before = steady(rig, journal)
        old_pid = int(before["pid"])
        with ToxiproxyClient(rig.stack.endpoints.toxiproxy_url) as toxiproxy:
            with inject(rig, toxiproxy, fault):
                t0, fault_at = time.monotonic(), time.time()
                journal.event("fault", f"injected: {FAULTS[fault]}", outage_s=timing.outage_s)
                restarted = restart(rig, journal, t0, timing.restarts_at_s[0], old_pid)
                with journal.step("serve-from-cache") as step:
                    serving = rig.wait(
                        new_process(rig, old_pid, "serving"),
                        "the restarted service on cached creds",
                        timeout=60,
                    )
                    to_serving_s = time.monotonic() - restarted
                    step.details.update(seconds_after_restart=round(to_serving_s, 3))
                db_at_serving = rig.db_creds()
                copy_at_serving = rig.copy()
                assert serving["cache"]["creds_fingerprint"] == copy_at_serving["creds"]
                # it serves exactly the creds PostgreSQL held when it went away, unless the
                # fault cut a creds save between its COMMIT and the answer (then said)
                creds_in_flight = copy_at_serving["creds"] != db_at_serving[0]
                if creds_in_flight:
                    saved_at = datetime.fromisoformat(db_at_serving[1]).timestamp()
                    assert abs(saved_at - fault_at) < 2.0, "the service serves other creds"
                    journal.event("creds", "a creds save was in flight at the fault")
                assert serving["ok"] is True and serving["mode"] == "postgres"
                assert serving["key_count"] is None  # keys are not served from any cache
                log = rig.log()
                line = list(CACHE_SERVING_PATTERN.finditer(log))
                assert line and line[-1]["company"] == rig.company
                journal.event("log", line[-1].group(0)[:300])
                [warning] = rig.wait_sentry(SERVING_EVENT, 1)
                assert warning.get("level") == "warning"
                age = true_age_checked(rig, warning, copy_at_serving["stored_at"])
                # at least the time since the outage began, minus the last save's interval
                assert age >= timing.restarts_at_s[0] - timing.save_interval_s - 0.5
                assert age <= timing.ttl_s
                journal.event("alert", "Sentry warning received", text=warning.get("message"))

                def on_cache(status: int, h: dict[str, Any]) -> bool:
                    assert status == 200 and h["ok"] is True, h
                    assert h["cache"]["state"] == "serving", h["cache"]
                    assert h["pid"] == serving["pid"] and h["writes_ok"] == 0
                    return bool(
                        h["cache"]["skipped_creds_saves"] > 0
                        and h["cache"]["failed_key_reads"] > 0
                        and h["writes_failed"] > 0
                    )

                during = rig.hold(t0, timing.outage_s, on_cache, "the rest of the outage")
                db_at_end = rig.db_creds()
                copy_at_end = rig.copy()
                assert db_at_end == db_at_serving, "creds were written during the outage"
                assert copy_at_end["stored_at"] == copy_at_serving["stored_at"]
                outage_s = time.monotonic() - t0
            journal.event("fault", "removed", outage_s=round(outage_s, 3))
        assert len(rig.sentry(SERVING_EVENT)) == 1, "one Sentry warning per cache mode"
        after, recovered_s = back_on_postgres(rig, journal, during["writes_ok"])
        assert after["pid"] == serving["pid"]  # it returned by itself, no restart needed
        evidence = nothing_lost(rig)
        journal.finish(
            "completed",
            deviated=False,
            measurements={
                "fault": fault,
                "ttl_s": timing.ttl_s,
                "outage_s": round(outage_s, 3),
                "restart_at_s": timing.restarts_at_s[0],
                "serving_after_restart_s": round(to_serving_s, 3),
                "cache_age_in_warning_s": age,
                "cache_age_at_end_s": during["cache"]["age_s"],
                "skipped_creds_saves": during["cache"]["skipped_creds_saves"],
                "failed_key_reads": during["cache"]["failed_key_reads"],
                "failed_key_writes": during["writes_failed"],
                "creds_row_updated_at_during_outage": db_at_serving[1],
                "creds_written_during_outage": 0,
                "creds_save_in_flight_at_fault": creds_in_flight,
                "sentry_warnings": 1,
                "recovered_after_outage_s": round(recovered_s, 3),
                **evidence,
            },
        )


def _expire(rig: CacheRig, report: DrillReport, title: str) -> None:
    timing = rig.timing
    first, second = timing.restarts_at_s
    with scenario(report, title, rig) as journal:
        before = steady(rig, journal)
        old_pid = int(before["pid"])
        with ToxiproxyClient(rig.stack.endpoints.toxiproxy_url) as toxiproxy:
            with inject(rig, toxiproxy, "proxy-disabled"):
                t0 = time.monotonic()
                journal.event(
                    "fault", f"injected: {FAULTS['proxy-disabled']}", outage_s=timing.outage_s
                )
                restart(rig, journal, t0, first, old_pid)
                serving = rig.wait(
                    new_process(rig, old_pid, "serving"), "the service on cached creds", 60
                )
                db_at_serving = rig.db_creds()
                rig.wait_sentry(SERVING_EVENT, 1)
                # the entry outlives its TTL while the service runs on it
                with journal.step("cache-expires-while-serving") as step:
                    expired = rig.wait(
                        lambda status, h: (
                            status == 503 and h["ok"] is False and h["cache"]["state"] == "expired"
                        ),
                        "health 503 once the cache expired",
                        timeout=timing.ttl_s + 30,
                    )
                    step.details.update(
                        at_s=round(time.monotonic() - t0, 3), age_s=expired["cache"]["age_s"]
                    )
                [error] = rig.wait_sentry(EXPIRED_EVENT, 1)
                assert error.get("level") == "error" and "expired" in (error.get("message") or "")
                journal.event("alert", "Sentry error received", text=error.get("message"))
                lines = list(CACHE_EXPIRED_PATTERN.finditer(rig.log()))
                assert lines and float(lines[-1]["age"]) >= timing.ttl_s  # logged to 0.1 s
                journal.event("log", lines[-1].group(0))

                def failing(status: int, h: dict[str, Any]) -> None:
                    assert status == 503 and h["ok"] is False, (status, h.get("cache"))
                    assert h["cache"]["state"] == "expired"

                # a restart on a stale entry fails loudly at once
                rig.hold(t0, second - 0.01, failing, "the expired service until the restart")
                restart(rig, journal, t0, second, int(serving["pid"]))
                stale = rig.wait(
                    lambda status, h: (
                        status == 503
                        and h.get("pid") != serving["pid"]
                        and h["cache"]["state"] == "expired"
                    ),
                    "the restarted service failing on a stale cache",
                    timeout=60,
                )
                errors = rig.wait_sentry(EXPIRED_EVENT, 2)
                during = rig.hold(t0, timing.outage_s, failing, "the rest of the outage")
                assert during["writes_ok"] == 0
                assert rig.db_creds() == db_at_serving, "creds were written during the outage"
                outage_s = time.monotonic() - t0
            journal.event("fault", "removed", outage_s=round(outage_s, 3))
        after, recovered_s = back_on_postgres(rig, journal, 0)
        assert after["pid"] == stale["pid"]
        evidence = nothing_lost(rig)
        journal.finish(
            "completed",
            deviated=False,
            measurements={
                "fault": "proxy-disabled",
                "ttl_s": timing.ttl_s,
                "outage_s": round(outage_s, 3),
                "restarts_at_s": list(timing.restarts_at_s),
                "cache_age_at_expiry_s": expired["cache"]["age_s"],
                "cache_age_at_second_start_s": stale["cache"]["age_s"],
                "health_status_while_expired": 503,
                "sentry_errors": len(errors),
                "creds_written_during_outage": 0,
                "recovered_after_outage_s": round(recovered_s, 3),
                **evidence,
            },
        )


@pytest.mark.parametrize("fault", ["black-hole", "proxy-disabled"])
def test_cache_carries_the_service_through_a_short_outage(
    stack: Stack,
    settings: DrillSettings,
    tmp_path: Path,
    cache_report: DrillReport,
    fault: str,
) -> None:
    t = SURVIVE[fault]
    with cache_rig(stack, settings, tmp_path, t) as rig:
        title = (
            f"{fault}: {t.outage_s:g} s outage, PM2 restart at {t.restarts_at_s[0]:g} s, "
            f"TTL {t.ttl_s:g} s: runs on cached creds"
        )
        _survive(rig, cache_report, title, fault)


def test_cache_expires_in_a_longer_outage_and_the_service_fails_loudly(
    stack: Stack, settings: DrillSettings, tmp_path: Path, cache_report: DrillReport
) -> None:
    t = EXPIRE
    with cache_rig(stack, settings, tmp_path, t) as rig:
        title = f"{t.outage_s:g} s outage, TTL {t.ttl_s:g} s: the cache expires, fails loudly"
        _expire(rig, cache_report, title)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("fault", ["black-hole", "proxy-disabled"])
def test_cache_survives_a_three_minute_outage(
    stack: Stack,
    settings: DrillSettings,
    tmp_path: Path,
    cache_report: DrillReport,
    fault: str,
) -> None:
    t = SURVIVE_TRUE
    with cache_rig(stack, settings, tmp_path, t) as rig:
        title = (
            f"{fault}: 3-minute outage, PM2 restart at {t.restarts_at_s[0]:g} s, TTL 300 s: "
            "runs on cached creds"
        )
        _survive(rig, cache_report, title, fault)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_cache_expires_in_a_six_minute_outage(
    stack: Stack, settings: DrillSettings, tmp_path: Path, cache_report: DrillReport
) -> None:
    t = EXPIRE_TRUE
    with cache_rig(stack, settings, tmp_path, t) as rig:
        _expire(rig, cache_report, "6-minute outage, TTL 300 s: the cache expires, fails loudly")
