"""The server's digest of a company's stored rows (what a backup's restore is verified by) agrees
with the canonical digest on what it claims: equal stored rows give equal digests, whatever the
order they were written in, the company or the session's settings; any changed byte (in any
Buffer form, in a legacy twin, in creds or a timestamp) changes it, also where the canonical
digest cannot see it; and the canonical digest recorded beside it is what the files give."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from resilience.authstate import pgraw
from resilience.authstate.dataset import generate
from resilience.authstate.naming import company_dir_name
from resilience.authstate.pgconn import Conn
from resilience.authstate.pgdigest import stored_digests
from resilience.authstate.pgstore import PgAuthStore
from resilience.authstate.view import view_of
from resilience.backup.manifest import BackupManifest
from resilience.backup.take import dump_with_manifest
from resilience.backup.verify import compare, stored_rows_digests
from resilience.config import Settings
from resilience.drill.stack import Stack
from resilience.errors import DataError
from resilience.files.export import export_company
from resilience.files.importer import read_directory

pytestmark = pytest.mark.stack

Raw = tuple[tuple[Any, ...] | None, list[tuple[Any, ...]]]
# the older reviver's form, which no writer of ours produces: written here by hand
OLD_FORM_REF = ("app-state-sync-key", "AAAAOldForm")
OLD_FORM = {"keyData": {"buffer": True, "value": base64.b64encode(b"\x01\x02\x03").decode()}}


@pytest.fixture
def other(store: PgAuthStore) -> Iterator[str]:
    cid = f"t_{uuid.uuid4().hex[:12]}"
    yield cid
    pgraw.delete_company(store.conn, cid)


def _seed(store: PgAuthStore, company: str) -> Raw:
    """Creds and keys with Buffers as arrays and as base64, legacy twins (newer and older
    than their `pre-key`), one value in the older reviver's form; the rows as stored."""
    data = generate(company, 120, legacy=6)
    pgraw.insert_raw(store.conn, company, data.creds, data.rows())
    store.conn.execute(
        "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value) VALUES (%s, %s, %s, %s)",
        (company, *OLD_FORM_REF, json.dumps(OLD_FORM)),
    )
    creds, keys = pgraw.raw_company(store.conn, company)
    texts = [k[2] for k in keys]
    assert any('"data": [' in t for t in texts) and any('"data": "' in t for t in texts)
    assert any(k[0] == "pre" for k in keys)
    return creds, keys


def _put(store: PgAuthStore, company: str, raw: Raw) -> tuple[str, str]:
    """Write `raw` as `company`'s rows; (stored digest, canonical digest)."""
    with store.conn.transaction():
        pgraw.replace_company_raw(store.conn, company, raw[0], raw[1])
    canonical = view_of(company, store.load_creds(company), store.records(company)).digest()
    return stored_digests(store.conn)[company], canonical.digest


def _first_buffer(obj: Any, test: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    if isinstance(obj, dict):
        if test(obj):
            return obj
        children: Any = obj.values()
    elif isinstance(obj, list):
        children = obj
    else:
        return None
    for child in children:
        found = _first_buffer(child, test)
        if found is not None:
            return found
    return None


def _is_array(b: dict[str, Any]) -> bool:
    return b.get("type") == "Buffer" and isinstance(b.get("data"), list) and bool(b["data"])


def _is_base64(b: dict[str, Any]) -> bool:
    return b.get("type") == "Buffer" and isinstance(b.get("data"), str) and bool(b["data"])


def _is_old(b: dict[str, Any]) -> bool:
    return b.get("buffer") is True


def _flip_array(b: dict[str, Any]) -> None:
    b["data"][0] ^= 1


def _flip_base64(b: dict[str, Any]) -> None:
    key = "value" if _is_old(b) else "data"
    raw = bytearray(base64.b64decode(b[key]))
    raw[-1] ^= 1
    b[key] = base64.b64encode(bytes(raw)).decode()


def _is_any(b: dict[str, Any]) -> bool:
    return _is_array(b) or _is_base64(b)


def _flip_any(b: dict[str, Any]) -> None:
    (_flip_array if _is_array(b) else _flip_base64)(b)


def _to_base64(b: dict[str, Any]) -> None:
    b["data"] = base64.b64encode(bytes(b["data"])).decode()


def _edit_value(
    raw: Raw,
    row: Callable[[tuple[Any, ...]], bool],
    test: Callable[[dict[str, Any]], bool],
    change: Callable[[dict[str, Any]], None],
) -> Raw:
    """`raw` with the first Buffer that passes `test` in the first key row `row` picks changed."""
    keys = list(raw[1])
    for i, key in enumerate(keys):
        value = json.loads(key[2])
        found = _first_buffer(value, test) if row(key) else None
        if found is not None:
            change(found)
            keys[i] = (key[0], key[1], json.dumps(value), *key[3:])
            return raw[0], keys
    raise AssertionError("no such row in the seed")


def _plain(key: tuple[Any, ...]) -> bool:
    """Not a pre-key: never a legacy twin, so always what Baileys reads."""
    return key[0] not in ("pre", "pre-key")


def _twins(raw: Raw) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(newer, older) of a legacy `pre`/`key-N` row and its `pre-key`/`N` twin."""
    by_ref = {(k[0], k[1]): k for k in raw[1]}
    for key in raw[1]:
        twin = by_ref.get(("pre-key", key[1].removeprefix("key-")))
        if key[0] == "pre" and twin is not None:
            return (key, twin) if key[4] > twin[4] else (twin, key)
    raise AssertionError("no legacy twins in the seed")


def test_equal_stored_rows_give_equal_digests(
    stack: Stack, store: PgAuthStore, conn: Conn, company: str, other: str
) -> None:
    raw = _seed(store, company)
    first = stored_digests(conn)[company]
    assert len(first) == 64
    # the same rows under another company, written in the reverse order
    assert _put(store, other, (raw[0], raw[1][::-1]))[0] == first
    assert stored_digests(conn, [company, "t_nobody"]) == {company: first}
    assert stored_rows_digests(stack.endpoints.service_dsn, [company, other]) == {
        company: first,
        other: first,
    }
    conn.execute("SET TimeZone = 'Pacific/Chatham'")
    conn.execute("SET DateStyle = 'SQL, DMY'")
    conn.execute("SET extra_float_digits = 0")
    assert stored_digests(conn)[company] == first == stored_digests(conn)[other]
    conn.execute("RESET ALL")
    # no creds, no keys: told apart from each other and from both
    no_creds = _put(store, other, (None, raw[1]))[0]
    no_keys = _put(store, other, (raw[0], []))[0]
    assert len({first, no_creds, no_keys}) == 3


def test_any_changed_byte_in_any_buffer_form_or_legacy_twin_changes_it(
    store: PgAuthStore, company: str, other: str
) -> None:
    raw = _seed(store, company)
    stored, canonical = _put(store, other, raw)
    assert stored == stored_digests(store.conn)[company]
    newer, older = _twins(raw)
    creds_flipped = json.loads(raw[0][0]) if raw[0] else None
    assert creds_flipped is not None
    flipped = _first_buffer(creds_flipped, _is_any)
    assert flipped is not None
    _flip_any(flipped)
    expiring = next(k for k in raw[1] if k[5] is not None)
    # each: (what changed, the rows, whether the canonical digest sees it too)
    changes: list[tuple[str, Raw, bool]] = [
        ("array Buffer", _edit_value(raw, _plain, _is_array, _flip_array), True),
        ("base64 Buffer", _edit_value(raw, _plain, _is_base64, _flip_base64), True),
        (
            "older reviver's Buffer",
            _edit_value(raw, lambda k: (k[0], k[1]) == OLD_FORM_REF, _is_old, _flip_base64),
            True,
        ),
        (
            "the legacy twin Baileys reads",
            _edit_value(raw, lambda k: k == newer, _is_any, _flip_any),
            True,
        ),
        (
            "the legacy twin Baileys does not read",
            _edit_value(raw, lambda k: k == older, _is_any, _flip_any),
            False,
        ),
        (
            "an array Buffer rewritten as base64, same bytes",
            _edit_value(raw, _plain, _is_array, _to_base64),
            False,
        ),
        ("creds", ((json.dumps(creds_flipped), *raw[0][1:]), raw[1]), True),
        (
            "expires_at of a key",
            (
                raw[0],
                [
                    (*k[:5], k[5] + timedelta(microseconds=1)) if k == expiring else k
                    for k in raw[1]
                ],
            ),
            False,
        ),
        (
            "updated_at of the older twin, now the newer",
            (
                raw[0],
                [
                    (*k[:4], newer[4] + timedelta(seconds=1), k[5]) if k == older else k
                    for k in raw[1]
                ],
            ),
            True,
        ),
    ]
    seen = {stored}
    for what, rows, canonical_sees_it in changes:
        changed_stored, changed_canonical = _put(store, other, rows)
        assert changed_stored not in seen, what
        seen.add(changed_stored)
        assert (changed_canonical != canonical) == canonical_sees_it, what
    assert _put(store, other, raw) == (stored, canonical)  # and back


def test_a_backup_records_both_digests_and_the_files_give_the_canonical_one(
    stack: Stack, store: PgAuthStore, conn: Conn, company: str, root: Path, tmp_path: Path
) -> None:
    _seed(store, company)
    manifest = _manifest(stack, tmp_path)
    recorded = manifest.companies[company]
    # computed in the dump's snapshot by a connection of its own: what the rows give now
    assert recorded.stored_digest == stored_digests(conn)[company]
    assert recorded.stored_digest != recorded.digest
    assert all(c.stored_digest is not None for c in manifest.companies.values())
    export_company(store, root, company, source="test")
    files = read_directory(root / company_dir_name(company), company).digest()
    assert (files.digest, files.key_count) == (recorded.digest, recorded.key_count)


def _manifest(stack: Stack, work: Path) -> BackupManifest:
    """The manifest of a backup of the auth tables as they are (its dump is not needed)."""
    settings = Settings.model_validate({})
    return dump_with_manifest(settings, stack.endpoints.service_dsn, work, "hourly", [])[0]


def _without_stored(manifest: BackupManifest) -> BackupManifest:
    """The manifest as a backup taken before stored digests were recorded wrote it."""
    data = json.loads(manifest.to_json())
    for company in data["companies"].values():
        del company["stored_digest"]
    return BackupManifest.from_json(json.dumps(data).encode(), "old")


def test_a_restore_is_compared_by_stored_rows_and_an_old_manifest_by_decoded_keys(
    stack: Stack, store: PgAuthStore, company: str, tmp_path: Path
) -> None:
    raw = _seed(store, company)
    manifest = _manifest(stack, tmp_path)
    assert BackupManifest.from_json(manifest.to_json(), "new") == manifest
    old = _without_stored(manifest)
    assert all(c.stored_digest is None for c in old.companies.values())
    dsn = stack.endpoints.service_dsn
    new_way, old_way = compare(dsn, manifest), compare(dsn, old)
    assert (new_way.compared, old_way.compared) == ("stored rows", "decoded keys")
    assert new_way.mismatches == old_way.mismatches == []
    assert new_way.keys == old_way.keys == sum(c.key_count for c in manifest.companies.values())
    assert new_way.companies == old_way.companies == len(manifest.companies)

    # the same bytes in another Buffer form: only the stored rows tell
    with store.conn.transaction():
        pgraw.replace_company_raw(
            store.conn, company, *_edit_value(raw, _plain, _is_array, _to_base64)
        )
    differs = [f"company {company}: digest differs from the manifest"]
    assert compare(dsn, manifest).mismatches == differs
    assert compare(dsn, old).mismatches == []
    # a changed byte: both
    with store.conn.transaction():
        pgraw.replace_company_raw(
            store.conn, company, *_edit_value(raw, _plain, _is_any, _flip_any)
        )
    assert compare(dsn, manifest).mismatches == compare(dsn, old).mismatches == differs


def test_a_malformed_stored_digest_is_refused(
    stack: Stack, store: PgAuthStore, company: str, tmp_path: Path
) -> None:
    _seed(store, company)
    data = json.loads(_manifest(stack, tmp_path).to_json())
    data["companies"][company]["stored_digest"] = "not hex"
    with pytest.raises(DataError, match="company digest is malformed"):
        BackupManifest.from_json(json.dumps(data).encode(), "x")
