"""The way back's fast path (resilience.files.wayback_fast) changes nothing: where PostgreSQL is
as the export left it, the merge reading only the files file mode touched gives the same plan,
rows and digests as the merge reading every file and row; it steps aside (None, nothing
written) as soon as one row differs; a file rewritten in place with its size and modification
time put back is still seen as touched."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from resilience.authstate import pgraw
from resilience.authstate.codec import dumps_file
from resilience.authstate.dataset import generate
from resilience.authstate.model import KeyRecord
from resilience.authstate.naming import company_dir_name
from resilience.authstate.pgconn import Conn
from resilience.authstate.pgstore import PgAuthStore
from resilience.files.export import export_company
from resilience.files.importer import import_company
from resilience.files.merge import InstalledBase, record_installed
from resilience.files.untouched import versions_again, versions_now, versions_sum
from resilience.files.wayback import read_creds_file
from resilience.files.wayback_fast import merge_as_exported
from resilience.infra.fsutil import atomic_write
from resilience.infra.progress import NO_METERS

pytestmark = pytest.mark.stack
NOW = datetime.now().astimezone()


def _export(store: PgAuthStore, company: str, root: Path) -> InstalledBase:
    data = generate(company, 300, legacy=0)  # no legacy row: the export records versions
    pgraw.insert_raw(store.conn, company, data.creds, data.rows())
    base = record_installed(
        root, company, "export", export_company(store, root, company, source="t", versions=True)
    )
    assert base.rows is not None and len(base.rows) == len(base.keys) == 300
    assert base.stats is not None and base.stats.keys() == {*base.keys, "manifest.json"}
    return base


def _change_files(directory: Path) -> None:
    """File mode: keys changed (one to the same bytes), deleted, created; pre-keys issued."""
    keys = sorted(
        p.name for p in directory.glob("*.json") if p.name not in ("creds.json", "manifest.json")
    )
    for name in keys[:5]:
        atomic_write(directory / name, dumps_file({"changed": name.encode()}))
    (directory / keys[5]).write_bytes((directory / keys[5]).read_bytes())  # same bytes
    for name in keys[6:9]:
        (directory / name).unlink()
    atomic_write(directory / "session-79009998877.0.json", dumps_file(b"\x01" * 40))
    atomic_write(directory / "pre-key-99001.json", dumps_file({"public": b"\x02" * 32}))
    creds = json.loads((directory / "creds.json").read_bytes())
    creds["nextPreKeyId"] = 99002
    atomic_write(directory / "creds.json", json.dumps(creds).encode())


def _rows(conn: Conn, company: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT key_type, key_id, value::text FROM whatsapp_keys WHERE company_id = %s "
        "UNION ALL SELECT 'creds', '', creds::text FROM whatsapp_auth WHERE company_id = %s "
        "ORDER BY 1, 2",
        (company, company),
    ).fetchall()


def _fast(store: PgAuthStore, root: Path, company: str, base: InstalledBase) -> Any:
    company_dir = root / company_dir_name(company)
    creds = read_creds_file(company_dir)
    return merge_as_exported(store, company_dir, company, base, creds, NO_METERS, 0.0)


def _outcome(result: Any, conn: Conn, company: str) -> tuple[dict[str, Any], list[Any]]:
    out = result.to_dict()
    out.pop("duration_s")
    return out, _rows(conn, company)


@pytest.mark.parametrize("files", ["untouched", "changed in file mode"])
def test_the_fast_path_gives_the_full_merge(
    store: PgAuthStore, conn: Conn, company: str, root: Path, files: str
) -> None:
    fast = _export(store, company, root)
    full = replace(fast, rows=None, stats=None)
    if files != "untouched":
        _change_files(root / company_dir_name(company))
    before = pgraw.raw_company(store.conn, company)

    taken = _fast(store, root, company, fast)
    assert taken is not None, "PostgreSQL is as exported: the fast path is taken"
    outcomes = [_outcome(taken, conn, company)]
    for base in (full, fast):
        with conn.transaction():
            pgraw.replace_company_raw(store.conn, company, *before)
        result = import_company(store, root, company, three_way=True, base=base)
        outcomes.append(_outcome(result, conn, company))
    fast_out, full_out = outcomes[0], outcomes[1]
    if files == "untouched":  # nothing written: no form chosen
        assert fast_out[0]["buffer_form"] is None and fast_out[0]["upserted"] == 0
        fast_out[0]["buffer_form"] = full_out[0]["buffer_form"]
        outcomes[2][0]["buffer_form"] = full_out[0]["buffer_form"]
        assert fast_out[0]["merge"]["unchanged"] == 300
    else:
        merge = fast_out[0]["merge"]
        assert merge["written_from_files"]["count"] == 7  # 5 changed, 2 created
        assert merge["deleted_in_files"]["count"] == 3
        assert fast_out[0]["upserted"] == 7 and fast_out[0]["deleted"] == 3
    assert fast_out == full_out == outcomes[2]


def test_a_row_changed_since_the_export_leaves_the_merge_to_the_full_path(
    store: PgAuthStore, conn: Conn, company: str, root: Path
) -> None:
    base = _export(store, company, root)
    key_type, key_id = base.rows[sorted(base.rows)[0]][:2] if base.rows else ("", "")
    conn.execute(
        "UPDATE whatsapp_keys SET value = '{\"pg\": 1}' WHERE company_id = %s AND key_type = %s "
        "AND key_id = %s",
        (company, key_type, key_id),
    )
    before = _rows(conn, company)
    assert _fast(store, root, company, base) is None
    assert _rows(conn, company) == before, "nothing written when it steps aside"
    result = import_company(store, root, company, three_way=True, base=base)
    assert result.merge is not None and result.merge["kept_from_postgres"]["count"] == 1
    row = conn.execute(
        "SELECT value::text FROM whatsapp_keys WHERE company_id = %s AND key_type = %s "
        "AND key_id = %s",
        (company, key_type, key_id),
    ).fetchone()
    assert row == ('{"pg": 1}',), "the row PostgreSQL changed is kept, as the merge says"


def test_a_file_rewritten_in_place_with_its_size_and_mtime_put_back_is_touched(
    store: PgAuthStore, conn: Conn, company: str, root: Path
) -> None:
    base = _export(store, company, root)
    assert base.rows is not None
    directory = root / company_dir_name(company)
    name = next(n for n in sorted(base.keys) if n.startswith("pre-key-"))
    path = directory / name
    info = path.stat()
    original = path.read_bytes()
    at = original.index(b'"data":"') + len(b'"data":"')
    swapped = b"B" if original[at : at + 1] != b"B" else b"C"
    changed = original[:at] + swapped + original[at + 1 :]  # one Buffer byte: same size
    with path.open("r+b") as handle:  # as Baileys writes: in place, truncated, rewritten
        handle.truncate(0)
        handle.write(changed)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))  # a tool puts the mtime back
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (info.st_size, info.st_mtime_ns)

    result = _fast(store, root, company, base)
    assert result is not None and result.upserted == 1, "the file is read, not trusted"
    key_type, key_id, _version = base.rows[name]
    full = import_company(
        store, root, company, three_way=True, base=replace(base, rows=None, stats=None)
    )
    assert full.upserted == 0 and full.digest_db == result.digest_db
    assert conn.execute(
        "SELECT count(*) FROM whatsapp_keys WHERE company_id = %s AND key_type = %s "
        "AND key_id = %s",
        (company, key_type, key_id),
    ).fetchone() == (1,)


def test_the_server_sums_the_versions_as_python_does_over_any_id(
    store: PgAuthStore, conn: Conn, company: str
) -> None:
    ids = ["plain", "a:b:c", "ünïcødé:1", "12:3", "x" * 300, "emoji-\U0001f600"]
    rows = [(KeyRecord(company, "session", i, {"v": i}, NOW, NOW), "array") for i in ids]
    pgraw.insert_raw(store.conn, company, {"me": 1}, rows)
    with conn.transaction():
        read = conn.execute(
            "SELECT key_type, key_id, xmin::text FROM whatsapp_keys WHERE company_id = %s",
            (company,),
        ).fetchall()
        now, again = versions_now(conn, company)
        assert versions_again(conn, company) == again
    assert now == versions_sum(read) and now[0] == len(ids)
    moved = [(t, i + ("" if i != "a:b:c" else "!"), v) for t, i, v in read]
    assert versions_sum(moved) != now, "another id, another sum"
