"""The stand-in service, run as a real process in a temp working directory (no PM2 here)."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from resilience.authstate.dataset import Dataset, generate
from resilience.authstate.filestore import FileAuthStore
from resilience.authstate.fingerprint import KeyFingerprint, set_digest
from resilience.authstate.naming import file_name_for, parse_file_name
from resilience.authstate.pgstore import Conn, PgAuthStore, connect
from resilience.authstate.view import view_of
from resilience.chaos import faults
from resilience.chaos.toxiproxy import ToxiproxyClient
from resilience.drill.stack import Stack
from resilience.drill.standin.service import (
    CONNECTION_OPEN_PATTERN,
    FILE_MODE_PATTERN,
    HTTP_PATTERN,
    MISSING_CREDS_PATTERN,
    POSTGRES_MODE_PATTERN,
    STOPPED_PATTERN,
    mode_from_flags,
    read_config,
)
from resilience.drill.standin.traffic import KeyWrite, Traffic
from resilience.drill.standin.writelog import WRITELOG_FILE, WriteEntry, WriteLog, read_writelog
from resilience.errors import ConfigError, DataError, InputError
from resilience.infra.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 60.0
FLAGS = ("USE_REPOSITORY_PATTERN", "USE_DATABASE_AUTH_STATE", "USE_LEGACY_SUPABASE")
T = TypeVar("T")
_AT = datetime.now(UTC)
DSN = "DATABASE_URL=postgresql://u@127.0.0.1:1/db\n"
KeyMap = dict[tuple[str, str], Any]


def poll(check: Callable[[], T | None], what: str, timeout: float = DEADLINE) -> T:
    """Call ``check`` until it returns something truthy, or fail after ``timeout`` seconds.

    Whatever ``check`` raises (a failed assertion, an HTTP error) fails the test at once."""

    def timed_out(last: Exception | None) -> NoReturn:
        pytest.fail(f"timed out waiting for {what}")

    return wait_until(check, timeout, what, on_timeout=timed_out, fatal=(Exception,))


def env_text(mode: str, company: str, **extra: str) -> str:
    flag = "false" if mode == "file" else "true"
    lines = [f"{name}={flag}" for name in FLAGS]
    lines += [f"COMPANY_ID={company}", "PORT=0"]
    lines += [f"{k}={v}" for k, v in extra.items()]
    return "# stand-in test settings\n" + "\n".join(lines) + "\n"


class Standin:
    """One stand-in process with its stdout in ``cwd/out.log``."""

    def __init__(self, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.cwd = cwd
        self.log_path = cwd / "out.log"
        environ = {
            k: v
            for k, v in os.environ.items()
            if k not in ("WRITE_INTERVAL_MS", "WRITE_SEED", "STANDIN_WRITES")
        }
        environ["PYTHONPATH"] = str(ROOT)
        environ.update(env or {})
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "resilience.drill.standin.service"],
                cwd=cwd,
                env=environ,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self._http: httpx.Client | None = None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_line(self, pattern: re.Pattern[str]) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            match = pattern.search(self.output())
            if match is None and self.proc.poll() is not None:
                pytest.fail(f"stand-in exited ({self.proc.returncode}):\n{self.output()}")
            return match

        return poll(found, f"{pattern.pattern!r} in the stand-in's log")

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            port = self.wait_line(HTTP_PATTERN)["port"]
            self._http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        return self._http

    def health(self) -> dict[str, Any]:
        response = self.http.get("/health")
        assert response.status_code == 200
        data: dict[str, Any] = response.json()
        return data

    def wait_health(self, check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        def ok() -> dict[str, Any] | None:
            assert self.proc.poll() is None, f"stand-in died:\n{self.output()}"
            data = self.health()
            return data if check(data) else None

        return poll(ok, what)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        if self._http is not None:
            self._http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"stand-in did not exit after {sig.name}:\n{self.output()}")

    def exit_code(self) -> int:
        try:
            return self.proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"stand-in did not exit by itself:\n{self.output()}")

    def final(self) -> re.Match[str]:
        match = STOPPED_PATTERN.search(self.output())
        assert match is not None, self.output()
        return match


@pytest.fixture
def standins() -> Iterator[list[Standin]]:
    """Processes started by a test; any still running at the end is killed."""
    started: list[Standin] = []
    yield started
    for standin in started:
        if standin.proc.poll() is None:
            standin.proc.kill()
            standin.proc.wait()


def digest_of(creds: Any, keys: KeyMap) -> str:
    return set_digest(creds, ((t, i, v) for (t, i), v in keys.items()))


def check_journal(entries: list[WriteEntry], initial: KeyMap, current: KeyMap) -> None:
    """Every journaled write is in ``current``, and the initial keys plus the journal replayed
    in order give exactly the keys of ``current``."""
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    expected = set(initial)
    last: dict[tuple[str, str], WriteEntry] = {}
    for entry in entries:
        ref = (entry.type, entry.id)
        last[ref] = entry
        if entry.deleted:
            expected.discard(ref)
        else:
            expected.add(ref)
    for ref, entry in last.items():
        if entry.deleted:
            assert ref not in current, f"{ref} was deleted but is present"
        else:
            assert ref in current, f"{ref} was acknowledged but is missing"
            assert KeyFingerprint.of(*ref, current[ref]) == entry.fingerprint, ref
    assert set(current) == expected


def unique_company() -> str:
    return f"standin_{uuid.uuid4().hex[:12]}"


# --- pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "mode"),
    [
        ({name: "false" for name in FLAGS}, "file"),
        ({name: " FALSE " for name in FLAGS}, "file"),
        ({**{name: "false" for name in FLAGS}, "USE_LEGACY_SUPABASE": "true"}, "postgres"),
        ({"USE_REPOSITORY_PATTERN": "false", "USE_DATABASE_AUTH_STATE": "false"}, "postgres"),
        ({"USE_DATABASE_AUTH_STATE": "false"}, "postgres"),
        ({name: "true" for name in FLAGS}, "postgres"),
        ({}, "postgres"),
    ],
)
def test_file_mode_needs_all_three_flags_false(values: dict[str, str], mode: str) -> None:
    assert mode_from_flags(values) == mode


@pytest.mark.parametrize(
    ("text", "error", "needle"),
    [
        (None, ConfigError, "no .env"),
        ("PORT=1\n", ConfigError, "COMPANY_ID is missing"),
        ("COMPANY_ID=../etc\n", InputError, "invalid company id"),
        (DSN + "COMPANY_ID=a\nPORT=http\n", ConfigError, "PORT must be a whole number"),
        (DSN + "COMPANY_ID=a\nWRITE_INTERVAL_MS=-5\n", ConfigError, "WRITE_INTERVAL_MS must not"),
        ("COMPANY_ID=a\nUSE_REPOSITORY_PATTERN=true\n", ConfigError, "DATABASE_URL is missing"),
    ],
)
def test_bad_settings_are_named(
    tmp_path: Path, text: str | None, error: type[Exception], needle: str
) -> None:
    if text is not None:
        (tmp_path / ".env").write_text(text)
    with pytest.raises(error, match=re.escape(needle)):
        read_config(tmp_path, environ={})


def test_config_reads_env_and_traffic_overrides(tmp_path: Path) -> None:
    password = "s3cret-pw"
    (tmp_path / ".env").write_text(
        env_text("postgres", "acme", DATABASE_URL=f"postgresql://u:{password}@127.0.0.1:1/db")
        + "AUTH_DIR=state\nWRITE_INTERVAL_MS=50\n"
    )
    config = read_config(tmp_path, environ={"WRITE_INTERVAL_MS": "0", "USE_LEGACY_SUPABASE": "f"})
    assert config.mode == "postgres"  # flags come from .env only
    assert config.auth_dir == tmp_path / "state"
    assert config.port == 0
    assert config.write_interval_ms == 0 and not config.traffic
    assert password not in repr(config)
    assert read_config(tmp_path, environ={"STANDIN_WRITES": "0"}).traffic is False
    assert read_config(tmp_path, environ={}).traffic is True


def run_traffic(seed: str, keys: KeyMap, batches: int) -> list[list[KeyWrite]]:
    traffic = Traffic(seed, 0, list(keys))
    out = []
    for _ in range(batches):
        batch = traffic.next_batch()
        traffic.applied(batch)
        out.append(batch)
    return out


def test_traffic_is_deterministic_and_realistic() -> None:
    dataset = generate("standin_traffic", n=200)
    keys = {(k.key_type, k.key_id): k.value for k in dataset.keys}
    first = run_traffic("seed-a", keys, 600)
    assert first == run_traffic("seed-a", keys, 600)
    assert first != run_traffic("seed-b", keys, 600)
    writes = [w for batch in first for w in batch]
    for batch in first:
        assert batch and len({w.ref for w in batch}) == len(batch)
    # Every id the service writes maps back from its Baileys file name without guessing.
    for write in writes:
        assert parse_file_name(file_name_for(write.key_type, write.key_id)) == write.ref
    ids = {t: [w.key_id for w in writes if w.key_type == t] for t in {w.key_type for w in writes}}
    assert any(re.fullmatch(r"\d+\.\d+", i) for i in ids["session"])
    assert any(re.fullmatch(r"\d+_\d+\.\d+", i) for i in ids["session"])
    assert any(re.fullmatch(r"\d+-\d+@g\.us::\d+(_\d+)?::\d+", i) for i in ids["sender-key"])
    assert any(re.fullmatch(r"\d+@g\.us::\d+(_\d+)?::\d+", i) for i in ids["sender-key"])
    assert any("/" in i for i in ids["app-state-sync-key"])
    assert any("+" in i for i in ids["app-state-sync-key"])
    for key_id in ids["app-state-sync-key"]:
        base64.b64decode(key_id, validate=True)
    assert any(i.endswith("_reverse") for i in ids["lid-mapping"])
    assert any(not i.endswith("_reverse") for i in ids["lid-mapping"])
    assert {"sender-key-memory", "app-state-sync-version", "device-list", "tctoken"} <= set(ids)
    deleted = {w.key_type for w in writes if w.deleted}
    assert {"pre-key", "session", "sender-key"} <= deleted
    # Rotated pre-keys get fresh ids; deletions remove keys that existed.
    seeded = {int(i) for t, i in keys if t == "pre-key"}
    new_pre = [int(w.key_id) for w in writes if w.key_type == "pre-key" and not w.deleted]
    assert new_pre and min(new_pre) > max(seeded)
    held = set(keys)
    for write in writes:
        if write.deleted:
            assert write.ref in held
            held.discard(write.ref)
        else:
            held.add(write.ref)


def test_journal_continues_sequence_and_survives_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / WRITELOG_FILE
    at = _AT
    journal = WriteLog(path)
    journal.append(
        [KeyWrite("session", "1.0", b"x"), KeyWrite("pre-key", "5", None)],
        mode="file",
        company="c",
        at=at,
    )
    journal.close()
    with open(path, "ab") as handle:
        handle.write(b'{"seq": 3, "torn')
    journal = WriteLog(path)
    assert journal.seq == 2
    journal.append([KeyWrite("session", "1.0", None)], mode="postgres", company="c", at=at)
    journal.close()
    assert path.read_bytes().endswith(b"}\n")  # the torn line was cut when reopened
    entries = read_writelog(path)
    assert [e.seq for e in entries] == [1, 2, 3]
    assert [e.mode for e in entries] == ["file", "file", "postgres"]
    assert entries[0].fingerprint == KeyFingerprint.of("session", "1.0", b"x")
    assert entries[1].deleted and entries[1].fingerprint is None


def test_reading_a_journal_ignores_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / WRITELOG_FILE
    journal = WriteLog(path)
    journal.append([KeyWrite("pre-key", "1", {"k": b"1"})], mode="file", company="c", at=_AT)
    journal.close()
    with open(path, "ab") as handle:
        handle.write(b'{"seq": 2, "torn')
    assert [e.seq for e in read_writelog(path)] == [1]
    path.write_bytes(b"garbage\n" + path.read_bytes())
    with pytest.raises(DataError, match="line 1 is not JSON"):
        read_writelog(path)


# --- file mode ---------------------------------------------------------------------------------


def seed_files(root: Path, company: str, n: int = 200) -> tuple[Dataset, KeyMap]:
    dataset = generate(company, n=n)
    # Legacy rows name the same files as their modern twins: a file store never has them.
    keys = {(k.key_type, k.key_id): k.value for k in dataset.keys if k.key_type != "pre"}
    FileAuthStore(root).write_all(company, dataset.creds, ((t, i, v) for (t, i), v in keys.items()))
    return dataset, keys


def read_files(root: Path, company: str) -> tuple[Any, KeyMap]:
    store = FileAuthStore(root)
    return store.read_creds(company), store.read_keys(company)


def test_file_mode_serves_writes_and_journals_them(tmp_path: Path, standins: list[Standin]) -> None:
    company = unique_company()
    dataset, initial = seed_files(tmp_path / "auth", company)
    (tmp_path / ".env").write_text(
        env_text("file", company, AUTH_DIR="auth", WRITE_INTERVAL_MS="10", WRITE_SEED="t1")
    )
    standin = Standin(tmp_path)
    standins.append(standin)
    mode_line = standin.wait_line(FILE_MODE_PATTERN)
    assert mode_line["company"] == company
    assert Path(mode_line["directory"]) == tmp_path / "auth" / f"company_{company}"
    assert int(standin.wait_line(CONNECTION_OPEN_PATTERN)["keys"]) == len(initial)
    assert POSTGRES_MODE_PATTERN.search(standin.output()) is None

    health = standin.wait_health(lambda h: h["writes_ok"] >= 40, "40 acknowledged writes")
    assert health["mode"] == "file" and health["company"] == company
    assert health["writes_failed"] == 0 and health["last_write_at"]
    assert health["pid"] == standin.proc.pid
    metrics = standin.http.get("/metrics").text
    assert f'standin_up{{company="{company}",mode="file"}} 1' in metrics
    assert f'standin_up{{company="{company}",mode="postgres"}} 0' in metrics
    assert re.search(rf'standin_writes_ok_total{{company="{company}"}} [1-9]\d*', metrics)
    assert standin.http.get("/nothing").status_code == 404

    assert standin.stop() == 0
    final = standin.final()
    creds, current = read_files(tmp_path / "auth", company)
    assert creds == dataset.creds
    entries = read_writelog(tmp_path / WRITELOG_FILE)
    assert len(entries) == int(final["ok"]) >= health["writes_ok"]
    assert {e.mode for e in entries} == {"file"} and {e.company for e in entries} == {company}
    check_journal(entries, initial, current)
    assert int(final["keys"]) == len(current)
    assert final["digest"] == digest_of(creds, current)


def check_idle_metrics(standin: Standin, health: dict[str, Any]) -> None:
    """Every metric of an idle stand-in: name, type, labels and value, as /health reports them."""
    response = standin.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = list(text_string_to_metric_families(response.text))
    assert {f.name: f.type for f in families} == {
        "standin_up": "gauge",
        "standin_writes_ok": "counter",  # exposed as standin_writes_ok_total
        "standin_writes_failed": "counter",
        "standin_keys": "gauge",
        "standin_last_write_timestamp_seconds": "gauge",
        "standin_start_time_seconds": "gauge",
    }
    company = {"company": health["company"]}
    samples = [(s.name, s.labels, s.value) for f in families for s in f.samples]
    started = datetime.fromisoformat(health["started_at"]).timestamp()
    assert samples == [
        ("standin_up", {**company, "mode": "file"}, 1.0 if health["mode"] == "file" else 0.0),
        (
            "standin_up",
            {**company, "mode": "postgres"},
            1.0 if health["mode"] == "postgres" else 0.0,
        ),
        ("standin_writes_ok_total", company, 0.0),
        ("standin_writes_failed_total", company, 0.0),
        ("standin_keys", company, float(health["key_count"])),
        ("standin_last_write_timestamp_seconds", company, 0.0),
        ("standin_start_time_seconds", company, pytest.approx(started, abs=0.001)),
    ]


def test_file_mode_idle_health_digest_equals_directory(
    tmp_path: Path, standins: list[Standin]
) -> None:
    company = unique_company()
    dataset, initial = seed_files(tmp_path / "auth", company, n=300)
    (tmp_path / ".env").write_text(env_text("file", company, AUTH_DIR="auth"))
    standin = Standin(tmp_path, env={"STANDIN_WRITES": "0"})
    standins.append(standin)
    standin.wait_line(CONNECTION_OPEN_PATTERN)
    health = standin.health()
    assert "[traffic] disabled" in standin.output()
    assert health["key_count"] == len(initial) and health["writes_ok"] == 0
    assert health["digest"] == digest_of(dataset.creds, initial)
    assert health["last_write_at"] is None
    check_idle_metrics(standin, health)
    assert standin.http.post("/health").status_code == 501
    assert standin.stop(signal.SIGINT) == 0
    assert not (tmp_path / WRITELOG_FILE).exists() or read_writelog(tmp_path / WRITELOG_FILE) == []


def test_restart_continues_the_journal(tmp_path: Path, standins: list[Standin]) -> None:
    company = unique_company()
    _, initial = seed_files(tmp_path / "auth", company, n=100)
    (tmp_path / ".env").write_text(
        env_text("file", company, AUTH_DIR="auth", WRITE_INTERVAL_MS="5", WRITE_SEED="same")
    )
    for _ in range(2):
        standin = Standin(tmp_path)
        standins.append(standin)
        standin.wait_health(lambda h: h["writes_ok"] >= 10, "10 acknowledged writes")
        assert standin.stop() == 0
    entries = read_writelog(tmp_path / WRITELOG_FILE)
    assert len({e.pid for e in entries}) == 2
    _, current = read_files(tmp_path / "auth", company)
    check_journal(entries, initial, current)  # also asserts seq runs 1..N across both runs


def test_file_mode_without_creds_exits_non_zero(tmp_path: Path, standins: list[Standin]) -> None:
    company = unique_company()
    (tmp_path / "auth").mkdir()
    (tmp_path / ".env").write_text(env_text("file", company, AUTH_DIR="auth"))
    standin = Standin(tmp_path)
    standins.append(standin)
    assert standin.exit_code() != 0
    match = MISSING_CREDS_PATTERN.search(standin.output())
    assert match is not None and match["company"] == company
    assert CONNECTION_OPEN_PATTERN.search(standin.output()) is None


def test_missing_env_file_exits_with_a_clear_line(tmp_path: Path, standins: list[Standin]) -> None:
    standin = Standin(tmp_path)
    standins.append(standin)
    assert standin.exit_code() == ConfigError.exit_code
    assert "cannot start: no .env in" in standin.output()


# --- PostgreSQL mode ----------------------------------------------------------------------------


@pytest.fixture
def admin(stack: Stack) -> Iterator[Conn]:
    conn = connect(stack.endpoints.admin_dsn, autocommit=True)
    yield conn
    conn.close()


@pytest.fixture
def pg_company(admin: Conn) -> Iterator[tuple[str, Dataset]]:
    company = unique_company()
    dataset = generate(company, n=200)
    store = PgAuthStore(admin)
    store.insert_raw(company, dataset.creds, dataset.rows())
    yield company, dataset
    store.delete_company(company)


def read_db(admin: Conn, company: str) -> tuple[Any, KeyMap]:
    """What the service sees of the database: legacy twins resolved (authstate.view)."""
    store = PgAuthStore(admin)
    creds = store.load_creds(company)
    view = view_of(company, creds, store.records(company))
    return creds, {(t, i): v for t, i, v in view.key_values()}


def pg_env(stack: Stack, company: str, **extra: str) -> str:
    return env_text("postgres", company, DATABASE_URL=stack.endpoints.service_dsn, **extra)


def assert_no_password(stack: Stack, text: str) -> None:
    password = urlsplit(stack.endpoints.service_dsn).password
    if password:
        assert password not in text


def test_postgres_mode_serves_writes_and_journals_them(
    tmp_path: Path,
    stack: Stack,
    admin: Conn,
    pg_company: tuple[str, Dataset],
    standins: list[Standin],
) -> None:
    company, dataset = pg_company
    _, initial = read_db(admin, company)
    (tmp_path / ".env").write_text(pg_env(stack, company, WRITE_INTERVAL_MS="10"))
    standin = Standin(tmp_path)
    standins.append(standin)
    assert standin.wait_line(POSTGRES_MODE_PATTERN)["company"] == company
    assert int(standin.wait_line(CONNECTION_OPEN_PATTERN)["keys"]) == len(initial)
    assert FILE_MODE_PATTERN.search(standin.output()) is None

    health = standin.wait_health(lambda h: h["writes_ok"] >= 40, "40 acknowledged writes")
    assert health["mode"] == "postgres" and health["company"] == company
    metrics = standin.http.get("/metrics").text
    assert f'standin_up{{company="{company}",mode="postgres"}} 1' in metrics

    assert standin.stop() == 0
    final = standin.final()
    creds, current = read_db(admin, company)
    assert creds == dataset.creds
    entries = read_writelog(tmp_path / WRITELOG_FILE)
    assert len(entries) == int(final["ok"]) >= health["writes_ok"]
    assert {e.mode for e in entries} == {"postgres"}
    check_journal(entries, initial, current)
    assert final["digest"] == digest_of(creds, current)
    assert int(final["keys"]) == len(current)
    assert_no_password(stack, standin.output())


def test_postgres_mode_idle_health_digest_equals_database(
    tmp_path: Path,
    stack: Stack,
    admin: Conn,
    pg_company: tuple[str, Dataset],
    standins: list[Standin],
) -> None:
    company, _ = pg_company
    (tmp_path / ".env").write_text(pg_env(stack, company, WRITE_INTERVAL_MS="0"))
    standin = Standin(tmp_path)
    standins.append(standin)
    standin.wait_line(CONNECTION_OPEN_PATTERN)
    health = standin.health()
    assert "[traffic] disabled" in standin.output()
    assert standin.stop() == 0
    creds, current = read_db(admin, company)
    assert health["key_count"] == len(current) and health["writes_ok"] == 0
    assert health["digest"] == digest_of(creds, current)


def test_postgres_mode_without_creds_exits_non_zero(
    tmp_path: Path, stack: Stack, standins: list[Standin]
) -> None:
    company = unique_company()
    (tmp_path / ".env").write_text(pg_env(stack, company))
    standin = Standin(tmp_path)
    standins.append(standin)
    assert standin.exit_code() == DataError.exit_code
    match = MISSING_CREDS_PATTERN.search(standin.output())
    assert match is not None and match["company"] == company
    assert "re-paired by QR" in standin.output()


def test_database_outage_counts_failures_and_resumes(
    tmp_path: Path,
    stack: Stack,
    admin: Conn,
    pg_company: tuple[str, Dataset],
    standins: list[Standin],
) -> None:
    company, _ = pg_company
    _, initial = read_db(admin, company)
    (tmp_path / ".env").write_text(pg_env(stack, company, WRITE_INTERVAL_MS="20"))
    standin = Standin(tmp_path)
    standins.append(standin)
    standin.wait_health(lambda h: h["writes_ok"] >= 10, "writes before the outage")
    ep = stack.endpoints
    with (
        ToxiproxyClient(ep.toxiproxy_url) as toxiproxy,
        faults.proxy_disabled(toxiproxy, ep.toxiproxy_proxy, allowed=ep.drill_target),
    ):
        during = standin.wait_health(lambda h: h["writes_failed"] >= 3, "failed writes")
        later = standin.wait_health(
            lambda h: h["writes_failed"] >= during["writes_failed"] + 3, "more failed writes"
        )
        assert later["writes_ok"] == during["writes_ok"]  # nothing acknowledged while down
        assert later["mode"] == "postgres" and later["pid"] == standin.proc.pid
    standin.wait_health(lambda h: h["writes_ok"] >= later["writes_ok"] + 10, "writes resumed")
    assert standin.stop() == 0
    output = standin.output()
    assert "key write failed" in output and "key writes resumed" in output
    assert_no_password(stack, output)
    final = standin.final()
    assert int(final["failed"]) >= later["writes_failed"]
    creds, current = read_db(admin, company)
    entries = read_writelog(tmp_path / WRITELOG_FILE)
    assert len(entries) == int(final["ok"])
    check_journal(entries, initial, current)
    assert final["digest"] == digest_of(creds, current)


def test_unwritable_journal_stops_start_up(tmp_path: Path, standins: list[Standin]) -> None:
    company = unique_company()
    seed_files(tmp_path / "auth", company, n=20)
    (tmp_path / ".env").write_text(env_text("file", company, AUTH_DIR="auth"))
    (tmp_path / WRITELOG_FILE).mkdir()  # cannot be opened for appending
    standin = Standin(tmp_path)
    standins.append(standin)
    assert standin.exit_code() != 0
    assert "cannot start" in standin.output() and WRITELOG_FILE in standin.output()
    assert CONNECTION_OPEN_PATTERN.search(standin.output()) is None
