"""The way back's shortcuts (resilience.files.wayback) change nothing: a merge over a base that
records its files' hashes (files with the base's bytes not decoded, rows compared with them by
the server, rows kept not uploaded) gives the same plan, rows and digests as the merge over the
same base without them (every file and row decoded), over both Buffer forms, legacy forms,
legacy twins, floats and large integers, and every class of change on both sides."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from resilience.authstate import pgraw
from resilience.authstate.codec import Style, dumps_file
from resilience.authstate.dataset import generate
from resilience.authstate.model import KeyRecord
from resilience.authstate.naming import company_dir_name, file_name_for
from resilience.authstate.pgconn import Conn
from resilience.authstate.pgstore import PgAuthStore
from resilience.files.export import export_company
from resilience.files.importer import import_company
from resilience.files.merge import InstalledBase, record_installed
from resilience.infra.fsutil import atomic_write

pytestmark = pytest.mark.stack

NOW = datetime.now().astimezone()
#: values the quick walk leaves to the slow one, or that jsonb compares by number
ODD: dict[tuple[str, str], tuple[Any, Style]] = {
    ("session", "float.0"): ({"ratio": 0.5, "whole": 2.0}, "array"),
    ("session", "bigint.0"): ({"n": 12345678901234567890, "m": 9007199254740993}, "array"),
    ("session", "oldform.0"): ({"key": {"buffer": True, "value": "AQID"}}, "array"),
    ("session", "unpadded.0"): ({"key": {"type": "Buffer", "data": "AQI"}}, "base64"),
    ("session", "datakey.0"): ({"data": "not a buffer", "list": ["data", 1]}, "base64"),
}


def _seed(store: PgAuthStore, company: str) -> None:
    data = generate(company, 240, legacy=4)
    rows = list(data.rows())
    for (key_type, key_id), (value, style) in ODD.items():
        rows.append((KeyRecord(company, key_type, key_id, value, NOW, NOW), style))
    pgraw.insert_raw(store.conn, company, data.creds, rows)


def _change_files(directory: Path) -> None:
    """File mode: keys changed, deleted and created."""
    names = sorted(p.name for p in directory.glob("*.json") if p.name != "manifest.json")
    keys = [n for n in names if n != "creds.json"]
    for name in keys[:6]:  # changed
        atomic_write(directory / name, dumps_file({"changed": name.encode()}))
    for name in keys[6:10]:  # deleted
        (directory / name).unlink()
    atomic_write(directory / "session-79009998877.0.json", dumps_file(b"\x01" * 40))
    atomic_write(directory / "pre-key-99001.json", dumps_file({"public": b"\x02" * 32}))
    creds = json.loads((directory / "creds.json").read_bytes())
    creds["nextPreKeyId"] = 99002
    atomic_write(directory / "creds.json", json.dumps(creds).encode())


def _change_rows(conn: Conn, company: str) -> None:
    """PostgreSQL after the base: keys changed (also only in form), deleted, created, and a
    newer legacy twin; some over keys file mode changed too (conflicts)."""
    rows = conn.execute(
        "SELECT key_type, key_id FROM whatsapp_keys WHERE company_id = %s ORDER BY 1, 2",
        (company,),
    ).fetchall()
    for key_type, key_id in rows[3:9]:  # changed, half of them also in files
        conn.execute(
            "UPDATE whatsapp_keys SET value = jsonb_build_object('pg', key_id) "
            "WHERE company_id = %s AND key_type = %s AND key_id = %s",
            (company, key_type, key_id),
        )
    for key_type, key_id in rows[20:24]:  # deleted
        conn.execute(
            "DELETE FROM whatsapp_keys WHERE company_id = %s AND key_type = %s AND key_id = %s",
            (company, key_type, key_id),
        )
    # the same value, its Buffers rewritten from base64 to array form (jsonb differs)
    conn.execute(
        'UPDATE whatsapp_keys SET value = \'{"key": {"type": "Buffer", "data": [1, 2]}}\''
        " WHERE company_id = %s AND key_type = 'session' AND key_id = 'unpadded.0'",
        (company,),
    )
    store = PgAuthStore(conn)
    pgraw.insert_raw(store.conn,
        company,
        None,
        [
            (KeyRecord(company, "session", "pg-new.0", b"\x03" * 10, NOW, NOW), "array"),
            (KeyRecord(company, "pre", "key-7", {"twin": True}, NOW + timedelta(days=1), NOW),
             "array"),
        ],
    )  # fmt: skip


def _rows(conn: Conn, company: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT key_type, key_id, value::text FROM whatsapp_keys WHERE company_id = %s "
        "UNION ALL SELECT 'creds', '', creds::text FROM whatsapp_auth WHERE company_id = %s "
        "ORDER BY 1, 2",
        (company, company),
    ).fetchall()


@pytest.mark.parametrize("rows", ["as exported", "imported again"])
def test_the_shortcuts_give_the_merge_over_every_decoded_value(
    store: PgAuthStore, conn: Conn, company: str, root: Path, rows: str
) -> None:
    _seed(store, company)
    exported = export_company(store, root, company, source="test")
    fast = record_installed(root, company, "export", exported)
    assert fast.files, "the export records its plain files' hashes"
    plain = {n for n in fast.keys if n in fast.files}
    assert file_name_for("session", "float.0") not in plain
    assert file_name_for("session", "bigint.0") not in plain
    assert len(plain) > 200
    slow = replace(fast, files=None)
    if rows == "imported again":  # the bench's rows: written by an import, base64
        pgraw.delete_company(store.conn, company)
        import_company(store, root, company)
    _change_files(root / company_dir_name(company))
    _change_rows(conn, company)
    before = pgraw.raw_company(store.conn, company)

    outcomes = []
    for base in (slow, fast, slow):
        with conn.transaction():
            pgraw.replace_company_raw(store.conn, company, *before)
        result = _merge(store, root, company, base)
        outcomes.append((result, _rows(conn, company)))
    assert outcomes[0] == outcomes[1] == outcomes[2]
    merge = outcomes[1][0]["merge"]
    assert merge["conflicts_files_won"]["count"] > 0
    assert merge["kept_from_postgres"]["count"] > 0
    assert merge["deleted_in_postgres_kept_deleted"]["count"] > 0
    assert outcomes[1][0]["upserted"] > 0 and outcomes[1][0]["deleted"] > 0


def _merge(store: PgAuthStore, root: Path, company: str, base: InstalledBase) -> dict[str, Any]:
    preview = import_company(store, root, company, three_way=True, base=base, dry_run=True)
    result = import_company(store, root, company, three_way=True, base=base).to_dict()
    result.pop("duration_s")
    assert preview.digest_db == result["digest_db"]
    return result
