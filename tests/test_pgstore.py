"""PgAuthStore against the stack's PostgreSQL: the service's read/write semantics and TTLs; the
peer probe of its connects against the real server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from psycopg.types.json import Jsonb

from resilience.authstate import pgconn, pgraw
from resilience.authstate.codec import canonical
from resilience.authstate.dataset import generate
from resilience.authstate.pgconn import Conn, DbLink, connect
from resilience.authstate.pgstore import BATCH_SIZE, PgAuthStore
from resilience.authstate.view import view_of
from resilience.chaos import faults
from resilience.chaos.toxiproxy import ToxiproxyClient
from resilience.drill.stack import Stack
from resilience.errors import DataError, InputError
from resilience.files.export import export_company
from resilience.infra.pgpeer import PeerVerdict, probe_peer, tcp_target

pytestmark = pytest.mark.stack


@pytest.fixture
def conn(stack: Stack) -> Iterator[Conn]:
    with connect(stack.endpoints.service_dsn) as c:
        yield c


@pytest.fixture
def company(conn: Conn) -> Iterator[str]:
    cid = f"t_{uuid.uuid4().hex[:12]}"
    yield cid
    pgraw.delete_company(conn, cid)


def test_creds_round_trip_in_service_encoding(conn: Conn, company: str) -> None:
    store = PgAuthStore(conn)
    assert store.load_creds(company) is None
    creds = {"noiseKey": {"private": b"\x00\x01", "public": b"\xff"}, "registrationId": 7}
    store.save_creds(company, creds)
    assert store.load_creds(company) == creds
    raw = conn.execute("SELECT creds FROM whatsapp_auth WHERE company_id=%s", (company,)).fetchone()
    assert raw is not None
    assert raw[0]["noiseKey"]["private"] == {"type": "Buffer", "data": [0, 1]}


def test_set_get_delete_with_ttls_and_batches(conn: Conn, company: str) -> None:
    store = PgAuthStore(conn)
    n = BATCH_SIZE * 2 + 17
    pre = {str(i): {"private": bytes([i % 256]) * 32, "public": b"p"} for i in range(n)}
    upserted, deleted = store.set_keys(
        company, {"pre-key": pre, "app-state-sync-key": {"a/b+": {"k": 1}}}
    )
    assert (upserted, deleted) == (n + 1, 0)
    got = store.get_keys(company, "pre-key", ["0", "5", "missing"])
    assert got == {"0": pre["0"], "5": pre["5"]}
    rows = conn.execute(
        "SELECT key_type, expires_at - updated_at FROM whatsapp_keys WHERE company_id=%s",
        (company,),
    ).fetchall()
    ttl = {t: d for t, d in rows}
    # TTL is now()+ttl at write time: within seconds of 7 days / 14 days of updated_at
    assert abs(ttl["pre-key"] - timedelta(days=7)) < timedelta(minutes=1)
    assert abs(ttl["app-state-sync-key"] - timedelta(days=14)) < timedelta(minutes=1)
    _, deleted = store.set_keys(company, {"pre-key": {"0": None, "1": None, "nope": None}})
    assert deleted == 2
    assert store.count_keys(company) == n - 1


def test_updated_at_trigger_moves_on_update(conn: Conn, company: str) -> None:
    store = PgAuthStore(conn)
    store.set_keys(company, {"session": {"1.0": b"a"}})
    conn.execute(
        "UPDATE whatsapp_keys SET updated_at = now() - interval '40 days' WHERE company_id=%s",
        (company,),
    )
    conn.commit()
    store.set_keys(company, {"session": {"1.0": b"b"}})
    age = conn.execute(
        "SELECT now() - updated_at FROM whatsapp_keys WHERE company_id=%s", (company,)
    ).fetchone()
    assert age is not None and age[0] < timedelta(minutes=1)


def test_both_encodings_read_as_the_same_bytes(conn: Conn, company: str) -> None:
    conn.execute(
        "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value) VALUES "
        "(%s, 'session', 'a.0', %s), (%s, 'session', 'b.0', %s)",
        (
            company,
            Jsonb({"type": "Buffer", "data": [104, 105]}),
            company,
            Jsonb({"type": "Buffer", "data": "aGk="}),
        ),
    )
    conn.commit()
    got = PgAuthStore(conn).get_keys(company, "session", ["a.0", "b.0"])
    assert got == {"a.0": b"hi", "b.0": b"hi"}


def test_undecodable_value_is_a_data_error(conn: Conn, company: str) -> None:
    conn.execute(
        "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value)"
        " VALUES (%s, 'session', 'x.0', %s)",
        (company, Jsonb({"type": "Buffer", "data": "not base64!"})),
    )
    conn.commit()
    with pytest.raises(DataError):
        PgAuthStore(conn).records(company)


def test_invalid_company_is_refused_before_any_query(conn: Conn) -> None:
    with pytest.raises(InputError, match="invalid company id"):
        PgAuthStore(conn).load_creds("x'; DROP TABLE whatsapp_keys; --")


def test_dataset_seeds_exactly_and_keeps_encodings(conn: Conn, company: str) -> None:
    data = generate(company, n=300)
    store = PgAuthStore(conn)
    assert pgraw.insert_raw(store.conn, company, data.creds, data.rows()) == len(data.keys)
    records = {(r.key_type, r.key_id): r for r in store.records(company)}
    assert len(records) == len(data.keys)
    for key in data.keys:
        assert canonical(records[(key.key_type, key.key_id)].value) == canonical(key.value)
    styles = conn.execute(
        "SELECT count(*) FILTER (WHERE jsonb_typeof(value #> '{data}') = 'string'),"
        " count(*) FILTER (WHERE jsonb_typeof(value #> '{data}') = 'array')"
        " FROM whatsapp_keys WHERE company_id=%s AND key_type IN ('session','sender-key')",
        (company,),
    ).fetchone()
    assert styles is not None and styles[0] > 0 and styles[1] > 0
    assert store.load_creds(company) == data.creds


def test_deleting_a_key_deletes_its_legacy_twin(conn: Conn, company: str) -> None:
    store = PgAuthStore(conn)
    store.set_keys(company, {"pre-key": {"5": {"k": b"new"}}, "pre": {"key-5": {"k": b"old"}}})
    store.set_keys(company, {"pre": {"key-6": {"k": b"lonely"}}})
    _, deleted = store.set_keys(company, {"pre-key": {"5": None}})
    assert deleted == 2
    assert [(r.key_type, r.key_id) for r in store.records(company)] == [("pre", "key-6")]


def test_a_streamed_export_over_a_link_is_one_round_trip(
    stack: Stack, conn: Conn, company: str, tmp_path: Path
) -> None:
    """The switch's round trips: connecting, one preflight statement, one export statement,
    however many chunks the rows come in (libpq's protocol trace counts the turns)."""
    data = generate(company, 2500)  # more rows than one chunk of the stream
    pgraw.insert_raw(conn, company, data.creds, data.rows())
    with DbLink(stack.endpoints.service_dsn) as link:
        store = PgAuthStore(link.conn)
        connecting = link.round_trips
        assert 1 <= connecting <= 3  # startup, and the SCRAM exchange
        assert store.stored_bytes(company)[1] == len(data.keys)
        result = export_company(
            store, tmp_path, company, source="test", expected_rows=len(data.keys)
        )
        assert link.round_trips - connecting == 2
    assert result.digest == view_of(company, data.creds, data.keys).digest().digest


# --- the peer probe: only an outage is an outage (tests/test_pgpeer.py has the other peers) ------
def test_the_stacks_postgresql_answers_the_probe_as_postgresql(stack: Stack) -> None:
    ep = stack.endpoints
    for dsn in (ep.admin_dsn, ep.service_dsn):  # direct, and through the proxy
        where = tcp_target(dsn)
        assert where is not None
        assert probe_peer(*where).kind == "postgres"


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[PeerVerdict]:
    """Every verdict of the peer probe the library's connects ran during the test."""
    seen: list[PeerVerdict] = []

    def spy(host: str, port: int, bound: float = 5.0) -> PeerVerdict:
        verdict = probe_peer(host, port, bound)
        seen.append(verdict)
        return verdict

    monkeypatch.setattr(pgconn, "probe_peer", spy)
    return seen


def test_a_healthy_connect_is_never_probed(
    stack: Stack, probes: list[PeerVerdict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No connection of its own, no round trip: the probe waits for a connect that is slow
    (the grace made long here, so that a loaded machine cannot make this connect slow)."""
    monkeypatch.setattr(pgconn, "PEER_GRACE", 60.0)
    with connect(stack.endpoints.service_dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with DbLink(stack.endpoints.service_dsn) as link:
        assert link.conn.execute("SELECT 1").fetchone() == (1,)
    assert probes == []


def test_a_slow_postgresql_is_probed_beside_the_connect_and_connects(
    stack: Stack, probes: list[PeerVerdict]
) -> None:
    ep = stack.endpoints
    with (
        ToxiproxyClient(ep.toxiproxy_url) as toxiproxy,
        faults.latency(toxiproxy, ep.toxiproxy_proxy, 400, allowed=ep.drill_target),
    ):
        with connect(ep.service_dsn, timeout=20) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with DbLink(ep.service_dsn, timeout=20) as link:
            opened = link.conn
            connecting = link.round_trips
            assert opened.execute("SELECT 1").fetchone() == (1,)
    assert [v.kind for v in probes] == ["postgres", "postgres"]
    assert 1 <= connecting <= 3  # the probe's own connection is not the link's
