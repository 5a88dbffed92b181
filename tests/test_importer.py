"""The way back against the stack's PostgreSQL: exact ids, one verified transaction, no-op rerun."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from resilience.authstate import pgimport, pgraw
from resilience.authstate.codec import canonical, dumps_file, loads
from resilience.authstate.dataset import generate
from resilience.authstate.filestore import FileAuthStore
from resilience.authstate.model import ttl_for
from resilience.authstate.naming import CREDS_FILE, company_dir_name, file_name_for
from resilience.authstate.pgconn import Conn, connect
from resilience.authstate.pgstore import PgAuthStore
from resilience.authstate.view import digest_of_keys, view_of
from resilience.drill.stack import Stack
from resilience.errors import DatabaseError, DataError, InputError, VerificationError
from resilience.files.export import export_company
from resilience.files.importer import import_company, map_directory

pytestmark = pytest.mark.stack

SOURCE = "postgresql://svc@db.example:5432/auth"
USER = "79001112233"

#: Keys the service writes while in file mode: every real id shape of Baileys 7 (docs/domain.md §3).
NEW: dict[tuple[str, str], Any] = {
    ("sender-key", f"120363123456789012@g.us::{USER}::1"): b"\x01" * 200,
    ("sender-key", f"{USER}-1600000000@g.us::79004445566_1::0"): b"\x02" * 150,
    ("sender-key-memory", f"{USER}-1600000000@g.us"): {"79004445566:0@s.whatsapp.net": True},
    ("app-state-sync-key", "++//AQID"): {"keyData": b"\x03" * 32, "timestamp": "1700000000000"},
    ("app-state-sync-key", "+/+/AA=="): {"keyData": b"\x04" * 32, "timestamp": "1700000000001"},
    ("session", f"{USER}.0"): b"\x05" * 300,
    ("session", f"{USER}_1.2"): b"\x06" * 300,
    ("session", f"{USER}_lid.0"): b"\x07" * 300,
    ("lid-mapping", USER): "123456789012345",
    ("lid-mapping", "123456789012345_reverse"): USER,
    ("pre-key", "5000"): {"private": b"\x08" * 32, "public": b"\x09" * 32},
    ("device-list", USER): ["0", "1"],
    ("tctoken", USER): {"token": b"\x0a" * 24, "timestamp": "1700000000"},
}


def _db_view_digest(store: PgAuthStore, company: str) -> str:
    return view_of(company, store.load_creds(company), store.records(company)).digest().digest


def _dir_digest(directory: Path, company: str) -> str:
    mapped, unmappable = map_directory(directory)
    assert unmappable == []
    creds = loads((directory / CREDS_FILE).read_bytes())
    keys = {ref: loads((directory / name).read_bytes()) for name, ref in mapped.items()}
    return digest_of_keys(company, creds, keys).digest


def _rows(conn: Conn, company: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT key_type, key_id, value, updated_at, expires_at FROM whatsapp_keys "
        "WHERE company_id = %s ORDER BY 1, 2",
        (company,),
    ).fetchall()


def _count(conn: Conn, company: str, key_type: str, key_id: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM whatsapp_keys WHERE company_id=%s AND key_type=%s AND key_id=%s",
        (company, key_type, key_id),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_round_trip_after_file_mode_is_exact(
    store: PgAuthStore, conn: Conn, company: str, root: Path
) -> None:
    data = generate(company, 1313)
    pgraw.insert_raw(store.conn, company, data.creds, data.rows())
    exported = export_company(store, root, company, source=SOURCE)
    directory = exported.directory
    before_view = view_of(company, store.load_creds(company), store.records(company))
    rows_by_name: dict[str, list[tuple[str, str]]] = {}
    for record in store.records(company):
        name = file_name_for(record.key_type, record.key_id)
        rows_by_name.setdefault(name, []).append((record.key_type, record.key_id))
    assert not any(file_name_for(t, i) in before_view.entries for t, i in NEW)

    # --- what the service does in file mode -------------------------------------------------
    files = FileAuthStore(root)
    for (key_type, key_id), value in NEW.items():
        files.write_key(company, key_type, key_id, value)
    entries = before_view.entries
    by_type = {
        t: [n for n, e in entries.items() if e.key_type == t and e.record.key_type == t]
        for t in ("session", "sender-key", "app-state-sync-key")
    }
    slash_key = next(n for n in by_type["app-state-sync-key"] if "/" in entries[n].key_id)
    collided = {c.file_name for c in exported.collisions}
    legacy_only = next(
        n for n, e in entries.items() if e.record.key_type == "pre" and n not in collided
    )
    changed = [by_type["session"][0], by_type["sender-key"][0], slash_key, legacy_only]
    for name in changed:
        entry = entries[name]
        files.write_key(company, entry.key_type, entry.key_id, {"changed": name.encode()})
    twin = exported.collisions[0].file_name  # a pre-key whose DB row has a legacy twin
    deleted = [twin, by_type["session"][1], by_type["sender-key"][1]]
    for name in deleted:
        files.write_key(company, entries[name].key_type, entries[name].key_id, None)
    new_creds = dict(data.creds, accountSyncCounter=2)
    files.write_creds(company, new_creds)

    # names upserted: new, changed, and those whose chosen row is a legacy row
    legacy_chosen = {n for n, e in entries.items() if e.record.key_type != e.key_type}
    upserted_names = {file_name_for(t, i) for t, i in NEW} | set(changed)
    upserted_names |= legacy_chosen - set(deleted)
    assert len(legacy_chosen) == 3  # two legacy-only pre-keys, one twin newer than its pre-key
    expected_deleted = sum(len(rows_by_name[n]) for n in deleted) + sum(
        1
        for n in set(entries) - set(deleted)
        for ref in rows_by_name[n]
        if ref != (entries[n].key_type, entries[n].key_id)
    )
    expected_dir = _dir_digest(directory, company)

    # --- dry run: the plan, nothing written -------------------------------------------------
    digest_before = _db_view_digest(store, company)
    rows_before = _rows(conn, company)
    dry = import_company(store, root, company, dry_run=True)
    assert dry.dry_run
    assert dry.upserted == len(upserted_names)
    assert dry.deleted == expected_deleted
    assert dry.digest_db == digest_before != dry.digest_dir == expected_dir
    assert dry.creds_changed
    assert _rows(conn, company) == rows_before

    # --- the import --------------------------------------------------------------------------
    result = import_company(store, root, company)
    assert result.upserted == len(upserted_names)
    assert result.deleted == expected_deleted
    assert result.removed_files == len(deleted)
    assert result.unchanged == len(entries) + len(NEW) - len(deleted) - len(upserted_names)
    assert result.digest_db == result.digest_dir == expected_dir == _db_view_digest(store, company)
    assert result.key_count == len(entries) + len(NEW) - len(deleted)
    assert canonical(store.load_creds(company)) == canonical(new_creds)

    # exact ids, not the file names' lossy forms
    for (key_type, key_id), value in NEW.items():
        got = store.get_keys(company, key_type, [key_id])
        assert canonical(got[key_id]) == canonical(value), (key_type, key_id)
    assert _count(conn, company, "sender-key", f"120363123456789012@g.us::{USER}::1") == 1
    assert _count(conn, company, "app-state-sync-key", "++//AQID") == 1
    slash_ref = (entries[slash_key].key_type, entries[slash_key].key_id)
    assert "/" in slash_ref[1] and _count(conn, company, *slash_ref) == 1
    rows = _rows(conn, company)
    assert not any(t == "sender-key" and "--" in i for t, i, *_ in rows)
    assert not any(t == "app-state-sync-key" and "__" in i for t, i, *_ in rows)
    assert not any(t == "pre" and file_name_for(t, i) in upserted_names for t, i, *_ in rows)

    # deleted keys are gone, legacy twin included
    for name in deleted:
        for key_type, key_id in rows_by_name[name]:
            assert _count(conn, company, key_type, key_id) == 0, (name, key_type, key_id)
    assert len(rows_by_name[twin]) == 2

    # TTLs of the service on every upserted row
    upserted_refs = set(NEW) | {(entries[n].key_type, entries[n].key_id) for n in changed}
    for key_type, key_id, _, updated, expires in rows:
        if (key_type, key_id) in upserted_refs:
            assert abs((expires - updated) - ttl_for(key_type)) < timedelta(minutes=1)

    # --- converged: a second import changes nothing -----------------------------------------
    rows_after = _rows(conn, company)
    again = import_company(store, root, company)
    assert (again.upserted, again.deleted, again.creds_changed) == (0, 0, False)
    assert again.unchanged == again.key_count == result.key_count
    assert again.digest_db == result.digest_db
    assert _rows(conn, company) == rows_after


def _small(store: PgAuthStore, company: str, root: Path) -> Path:
    store.save_creds(company, {"registrationId": 1, "noiseKey": {"private": b"\x01" * 32}})
    store.set_keys(
        company,
        {
            "pre-key": {str(i): {"private": bytes([i]) * 32} for i in range(1, 6)},
            "sender-key": {f"{USER}-1600000000@g.us::{USER}::0": b"s"},
        },
    )
    return export_company(store, root, company, source=SOURCE).directory


def test_unmappable_names_are_refused_and_nothing_changes(
    store: PgAuthStore, conn: Conn, company: str, root: Path
) -> None:
    directory = _small(store, company, root)
    (directory / "session-a-b__c.json").write_bytes(dumps_file(b"x"))
    FileAuthStore(root).write_key(company, "session", f"{USER}.1", b"fine")
    mapped, unmappable = map_directory(directory)
    assert unmappable == ["session-a-b__c.json"]
    assert mapped[f"session-{USER}.1.json"] == ("session", f"{USER}.1")
    assert mapped[f"sender-key-{USER}-1600000000@g.us--{USER}--0.json"] == (
        "sender-key",
        f"{USER}-1600000000@g.us::{USER}::0",
    )
    rows = _rows(conn, company)
    with pytest.raises(
        DataError, match=r"1 key file\(s\).*guessing: 'session-a-b__c\.json'; nothing"
    ):
        import_company(store, root, company)
    with pytest.raises(DataError, match="session-a-b__c"):
        import_company(store, root, company, dry_run=True)
    assert _rows(conn, company) == rows

    for i in range(11):
        (directory / f"mystery-{i}.json").write_bytes(b"{}")
    with pytest.raises(DataError, match=r"12 key file\(s\).* and 2 more; nothing was imported"):
        import_company(store, root, company)
    assert _rows(conn, company) == rows


def test_failed_verification_rolls_everything_back(
    store: PgAuthStore, conn: Conn, company: str, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _small(store, company, root)
    files = FileAuthStore(root)
    files.write_key(company, "session", f"{USER}.3", b"new")
    files.write_key(company, "pre-key", "1", None)
    files.write_creds(company, {"registrationId": 2})
    rows = _rows(conn, company)
    creds = store.load_creds(company)
    # a write path that loses one key (here a trigger on the table): the check must catch it
    with conn.transaction():
        conn.execute(
            "CREATE FUNCTION lose_one_key() RETURNS trigger AS $$ BEGIN "
            f"IF NEW.key_id = '{USER}.3' THEN RETURN NULL; END IF; RETURN NEW; END $$ "
            "LANGUAGE plpgsql"
        )
        conn.execute(
            "CREATE TRIGGER lose_one_key BEFORE INSERT ON whatsapp_keys "
            "FOR EACH ROW EXECUTE FUNCTION lose_one_key()"
        )
    try:
        with pytest.raises(VerificationError, match="holds .* key rows.*rolled back"):
            import_company(store, root, company)
    finally:
        with conn.transaction():
            conn.execute("DROP TRIGGER lose_one_key ON whatsapp_keys")
            conn.execute("DROP FUNCTION lose_one_key()")
    assert _rows(conn, company) == rows
    assert store.load_creds(company) == creds


def test_a_key_lost_by_the_direct_copy_is_caught_by_the_count(
    store: PgAuthStore, conn: Conn, company: str, root: Path
) -> None:
    """Into a company without key rows the keys go by one COPY, checked by the count: a write
    path that loses one of them (a trigger here) rolls the whole import back."""
    data = generate(company, 50)
    pgraw.insert_raw(store.conn, company, data.creds, data.rows())
    lost = next(k for k in data.keys if k.key_type == "pre-key")
    export_company(store, root, company, source=SOURCE)
    pgraw.delete_company(store.conn, company)
    with conn.transaction():
        conn.execute(
            "CREATE FUNCTION lose_one_key() RETURNS trigger AS $$ BEGIN "
            f"IF NEW.key_id = '{lost.key_id}' THEN RETURN NULL; END IF; RETURN NEW; END $$ "
            "LANGUAGE plpgsql"
        )
        conn.execute(
            "CREATE TRIGGER lose_one_key BEFORE INSERT ON whatsapp_keys "
            "FOR EACH ROW EXECUTE FUNCTION lose_one_key()"
        )
    try:
        with pytest.raises(VerificationError, match="rolled back") as caught:
            import_company(store, root, company)
        found = re.search(
            r"holds (\d+) key rows, \d+ equal to the (\d+) uploaded", str(caught.value)
        )
        assert found is not None and int(found[1]) == int(found[2]) - 1
    finally:
        with conn.transaction():
            conn.execute("DROP TRIGGER lose_one_key ON whatsapp_keys")
            conn.execute("DROP FUNCTION lose_one_key()")
    assert _rows(conn, company) == []
    assert store.load_creds(company) is None


def test_bad_input(stack: Stack, store: PgAuthStore, company: str, root: Path) -> None:
    with pytest.raises(InputError, match="no Baileys directory"):
        import_company(store, root, company)
    directory = _small(store, company, root)

    with connect(stack.endpoints.service_dsn) as plain:
        plain.execute("SELECT 1")  # an implicit transaction is now open
        with pytest.raises(InputError, match="already inside one"):
            import_company(PgAuthStore(plain), root, company)

    (directory / f"session-{USER}.9.json").write_bytes(b'{"type":"Buffer","data":"!!"}')
    with pytest.raises(DataError, match=rf"session-{USER}\.9\.json.*not valid base64"):
        import_company(store, root, company)
    (directory / f"session-{USER}.9.json").unlink()

    (directory / CREDS_FILE).unlink()
    with pytest.raises(DataError, match="no creds.json"):
        import_company(store, root, company)
    with pytest.raises(InputError, match="invalid company id"):
        import_company(store, root, "../x")
    assert company_dir_name(company) == directory.name


def test_import_into_an_empty_database_rebuilds_the_company(
    store: PgAuthStore, conn: Conn, company: str, root: Path
) -> None:
    data = generate(company, 300)
    pgraw.insert_raw(store.conn, company, data.creds, data.rows())
    exported = export_company(store, root, company, source=SOURCE)
    pgraw.delete_company(store.conn, company)  # the database was lost and rebuilt empty

    result = import_company(store, root, company)

    assert result.upserted == result.key_count == exported.key_count
    assert (result.deleted, result.unchanged, result.creds_changed) == (0, 0, True)
    assert result.digest_db == exported.digest == _db_view_digest(store, company)
    rows = _rows(conn, company)
    assert not any(t == "pre" for t, *_ in rows)  # legacy names are not re-made
    # one COPY into the table: each key with the transaction's now() plus its type's TTL, as
    # the upsert writes it, its Buffers base64 (RESILIENCE_DB_BUFFER_FORM=auto, no rows left:
    # as Baileys' BufferJSON writes them)
    assert {expires - updated - ttl_for(t) for t, _i, _v, updated, expires in rows} == {
        timedelta(0)
    }
    assert len({updated for *_, updated, _e in rows}) == 1
    pre_key = next(value for t, _i, value, *_ in rows if t == "pre-key")
    assert isinstance(pre_key["public"]["data"], str)


def test_rows_written_beside_an_import_into_an_empty_company_roll_it_back(
    stack: Stack, store: PgAuthStore, conn: Conn, company: str, root: Path, monkeypatch: Any
) -> None:
    """A key row the service writes while the keys are being copied: the COPY meets it, the
    import says so and nothing of it stays."""
    data = generate(company, 50)
    pgraw.insert_raw(store.conn, company, data.creds, data.rows())
    export_company(store, root, company, source=SOURCE)
    pgraw.delete_company(store.conn, company)
    upload = pgimport._upload_rows

    def with_a_writer(*args: Any, **kwargs: Any) -> Any:
        rows = upload(*args, **kwargs)
        first = next(rows)
        with connect(stack.endpoints.admin_dsn, autocommit=True) as other:
            other.execute(
                "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value) "
                "VALUES (%s, %s, %s, '{}')",
                (company, first[0], first[1]),
            )
        yield first
        yield from rows

    monkeypatch.setattr(pgimport, "_upload_rows", with_a_writer)
    with pytest.raises(DatabaseError, match="written by another session.*run the import again"):
        import_company(store, root, company)
    assert store.load_creds(company) is None
    assert len(_rows(conn, company)) == 1  # the other session's row, nothing of the import
