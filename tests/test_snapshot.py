"""Snapshots against the stack's PostgreSQL: keep-N, newest, age, verified install."""

from __future__ import annotations

import json
import os
import re
import stat
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from resilience.authstate import pgraw
from resilience.authstate.dataset import generate
from resilience.authstate.naming import CREDS_FILE, company_dir_name
from resilience.authstate.pgstore import PgAuthStore
from resilience.authstate.view import view_of
from resilience.errors import DataError, InputError, VerificationError
from resilience.files.export import export_company
from resilience.files.importer import read_directory
from resilience.files.install import install_snapshot, prepare_standby, standby_name
from resilience.files.manifest import MANIFEST_FILE
from resilience.files.snapshot import (
    SNAPSHOT_FILE,
    Snapshot,
    list_snapshots,
    newest_snapshot,
    take_snapshot,
)

pytestmark = pytest.mark.stack

SOURCE = "postgresql://svc:s3cret-pw@db.example:5432/auth"


@pytest.fixture
def company(store: PgAuthStore) -> Iterator[str]:
    cid = f"t_{uuid.uuid4().hex[:12]}"
    data = generate(cid, 150)
    pgraw.insert_raw(store.conn, cid, data.creds, data.rows())
    yield cid
    pgraw.delete_company(store.conn, cid)


def _db_digest(store: PgAuthStore, company: str) -> str:
    return view_of(company, store.load_creds(company), store.records(company)).digest().digest


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_keep_n_newest_first_and_garbage_ignored(
    store: PgAuthStore, company: str, tmp_path: Path
) -> None:
    snaps = tmp_path / "snapshots"
    snaps.mkdir()
    for garbage in ["garbage", ".staging-old", "20990101T000000000000Z"]:
        (snaps / garbage).mkdir()
    digests = []
    taken = []
    for i in range(3):
        store.set_keys(company, {"session": {f"7900000000{i}.0": bytes([i]) * 50}})
        snap = take_snapshot(store, snaps, [company], keep=2, source=SOURCE)
        taken.append(snap)
        digests.append(_db_digest(store, company))
        assert snap.companies[company]["digest"] == digests[-1]
        assert snap.path.parent == snaps and snap.path.name.endswith("Z")
    listed = list_snapshots(snaps)
    assert [s.path for s in listed] == [taken[2].path, taken[1].path]
    assert not taken[0].path.exists()
    # garbage is neither listed nor pruned; no staging left by our runs
    assert {"garbage", ".staging-old", "20990101T000000000000Z"} <= set(os.listdir(snaps))
    assert [n for n in os.listdir(snaps) if n.startswith(".staging-")] == [".staging-old"]

    newest = newest_snapshot(snaps, company)
    assert newest is not None and newest.path == taken[2].path
    assert newest.companies[company]["digest"] == digests[2]
    assert newest.taken_at == taken[2].taken_at
    assert newest.age_s(newest.taken_at + timedelta(seconds=90)) == 90.0
    assert newest.age_s() >= 0
    assert newest_snapshot(snaps, "t_nobody_here") is None
    assert newest_snapshot(tmp_path / "missing", company) is None

    meta = json.loads((newest.path / SNAPSHOT_FILE).read_text())
    assert "s3cret-pw" not in json.dumps(meta)
    assert stat.S_IMODE((newest.path / company_dir_name(company)).stat().st_mode) == 0o700


def test_bad_keep_and_failed_snapshot_change_nothing(
    store: PgAuthStore, company: str, tmp_path: Path
) -> None:
    snaps = tmp_path / "snapshots"
    with pytest.raises(InputError, match="keep must be at least 1"):
        take_snapshot(store, snaps, [company], keep=0, source=SOURCE)
    first = take_snapshot(store, snaps, [company], keep=1, source=SOURCE)
    with pytest.raises(InputError, match="unknown company"):
        take_snapshot(store, snaps, [company, "t_nobody_here"], keep=1, source=SOURCE)
    # the failed run pruned nothing and left no staging behind
    assert [s.path for s in list_snapshots(snaps)] == [first.path]
    assert os.listdir(snaps) == [first.path.name]
    with pytest.raises(InputError, match="no company given"):
        take_snapshot(store, snaps, [], keep=1, source=SOURCE)


def test_empty_database_is_not_snapshotted(store: PgAuthStore, tmp_path: Path) -> None:
    class Empty(PgAuthStore):
        def companies(self) -> list[str]:
            return []

    with pytest.raises(DataError, match="empty snapshot"):
        take_snapshot(Empty(store.conn), tmp_path / "s", None, keep=1, source=SOURCE)


def test_install_is_verified_and_replaces_the_directory(
    store: PgAuthStore, company: str, tmp_path: Path
) -> None:
    snaps, root = tmp_path / "snapshots", tmp_path / "auth"
    snap = take_snapshot(store, snaps, [company], keep=3, source=SOURCE)
    # an older export already in place (as after an earlier fallback) is replaced
    store.set_keys(company, {"session": {"79000000001.0": b"later"}})
    export_company(store, root, company, source=SOURCE)

    result = install_snapshot(snap, company, root)

    directory = root / company_dir_name(company)
    assert result.directory == directory
    assert _files(directory) == _files(snap.company_dir(company))
    assert result.digest == snap.companies[company]["digest"]
    assert result.key_count == snap.companies[company]["key_count"]
    assert read_directory(directory, company).digest().digest == result.digest
    assert {stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()} == {0o600}
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert MANIFEST_FILE in os.listdir(directory) and CREDS_FILE in os.listdir(directory)
    assert len(result.collisions) == 2
    assert sorted(os.listdir(root)) == [company_dir_name(company)]
    with pytest.raises(InputError, match="holds no company"):
        install_snapshot(snap, "t_nobody_here", root)


def _flip(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))


def test_corrupt_snapshot_is_refused(store: PgAuthStore, company: str, tmp_path: Path) -> None:
    snaps, root = tmp_path / "snapshots", tmp_path / "auth"
    snap = take_snapshot(store, snaps, [company], keep=3, source=SOURCE)
    export_company(store, root, company, source=SOURCE)
    before = _files(root / company_dir_name(company))
    source = snap.company_dir(company)
    key_file = next(p for p in sorted(source.iterdir()) if p.name.startswith("session-"))

    # one base64 character changed: still valid JSON and base64, different bytes
    data = key_file.read_bytes()
    at = data.index(b'"data":"') + len(b'"data":"')
    flipped = b"B" if data[at : at + 1] != b"B" else b"C"
    key_file.write_bytes(data[:at] + flipped + data[at + 1 :])
    with pytest.raises(
        VerificationError,
        match=f"snapshot {snap.path.name} of company {company} is corrupt: digest mismatch",
    ):
        install_snapshot(snap, company, root)
    assert _files(root / company_dir_name(company)) == before

    # a byte that breaks the JSON: refused the same way, naming the file
    key_file.write_bytes(data[:-1])
    with pytest.raises(VerificationError, match=f"corrupt: .*{key_file.name}"):
        install_snapshot(snap, company, root)
    key_file.write_bytes(data)
    # a missing file
    key_file.unlink()
    with pytest.raises(VerificationError, match="digest mismatch"):
        install_snapshot(snap, company, root)
    assert _files(root / company_dir_name(company)) == before
    assert sorted(os.listdir(root)) == [company_dir_name(company)]


# --- the standby copy ---------------------------------------------------------------------------


def test_a_standby_copy_is_renamed_into_place_and_the_snapshot_stays_intact(
    store: PgAuthStore, company: str, tmp_path: Path
) -> None:
    snaps, root = tmp_path / "snapshots", tmp_path / "auth"
    snap = take_snapshot(store, snaps, [company], keep=3, source=SOURCE)
    prepared = prepare_standby(snap, company, root)
    standby = root / standby_name(company)
    assert prepared.directory == standby and prepared.installed_from == "copy"
    assert _files(standby) == _files(snap.company_dir(company))
    assert stat.S_IMODE(standby.stat().st_mode) == 0o700
    inode = (standby / CREDS_FILE).stat().st_ino
    export_company(store, root, company, source=SOURCE)  # the directory in place, replaced

    set_aside: list[Path] = []
    result = install_snapshot(snap, company, root, set_aside=set_aside)

    directory = root / company_dir_name(company)
    assert result.installed_from == "standby" and result.files_written == 0
    assert (directory / CREDS_FILE).stat().st_ino == inode  # the very files, renamed
    assert result.digest == snap.companies[company]["digest"]
    assert read_directory(directory, company).digest().digest == result.digest
    assert not standby.exists() and len(set_aside) == 1
    # the service writing in file mode changes the installed copy, never the snapshot
    (directory / CREDS_FILE).write_text('{"changed": true}')
    assert _files(snap.company_dir(company))[CREDS_FILE] != b'{"changed": true}'
    again = install_snapshot(snap, company, root)  # no standby left: copied
    assert again.installed_from == "copy" and _files(directory) == _files(snap.company_dir(company))


def test_a_standby_of_another_snapshot_or_damaged_is_not_used(
    store: PgAuthStore, company: str, tmp_path: Path
) -> None:
    snaps, root = tmp_path / "snapshots", tmp_path / "auth"
    old = take_snapshot(store, snaps, [company], keep=3, source=SOURCE)
    prepare_standby(old, company, root)
    store.set_keys(company, {"session": {"79000000001.0": b"newer"}})
    new = take_snapshot(store, snaps, [company], keep=3, source=SOURCE)

    result = install_snapshot(new, company, root)  # the standby is of the older snapshot

    directory = root / company_dir_name(company)
    assert result.installed_from == "copy"
    assert read_directory(directory, company).digest().digest == new.companies[company]["digest"]
    assert not (root / standby_name(company)).exists()  # claimed and dropped

    prepare_standby(new, company, root)
    key_file = next(p for p in (root / standby_name(company)).iterdir() if "session-" in p.name)
    key_file.write_bytes(b"{not json")
    assert install_snapshot(new, company, root).installed_from == "copy"
    assert _files(directory) == _files(new.company_dir(company))
    assert sorted(os.listdir(root)) == [company_dir_name(company)]


# --- one bad tenant -----------------------------------------------------------------------------

BAD_KEY = "79001.0"


@pytest.fixture
def new_company(store: PgAuthStore) -> Iterator[Callable[[int], str]]:
    """Fresh companies of ``n`` generated keys on demand; their rows are deleted afterwards."""
    made: list[str] = []

    def make(n: int) -> str:
        cid = f"t_{uuid.uuid4().hex[:12]}"
        made.append(cid)
        data = generate(cid, n)
        pgraw.insert_raw(store.conn, cid, data.creds, data.rows())
        return cid

    yield make
    for cid in made:
        pgraw.delete_company(store.conn, cid)


def _corrupt(store: PgAuthStore, company: str) -> None:
    """One key row whose value is a Buffer that does not decode: the company cannot be exported."""
    store.conn.execute(
        "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value) VALUES "
        '(%s, \'session\', %s, \'{"type": "Buffer", "data": "!!not base64"}\')',
        (company, BAD_KEY),
    )


def _repair(store: PgAuthStore, company: str) -> None:
    store.conn.execute(
        "DELETE FROM whatsapp_keys WHERE company_id = %s AND key_type = 'session' AND key_id = %s",
        (company, BAD_KEY),
    )


def _assert_holds(snap: Snapshot, store: PgAuthStore, companies: list[str]) -> None:
    """``snap`` holds exactly ``companies``, each with the database's digest, files and all."""
    assert sorted(snap.companies) == sorted(companies)
    assert sorted(p.name for p in snap.path.iterdir() if p.is_dir()) == sorted(
        company_dir_name(c) for c in companies
    )
    for cid in companies:
        digest = _db_digest(store, cid)
        assert snap.companies[cid]["digest"] == digest
        assert read_directory(snap.company_dir(cid), cid).digest().digest == digest


def test_a_bad_company_is_left_out_and_the_others_snapshotted(
    store: PgAuthStore, company: str, new_company: Callable[[int], str], tmp_path: Path
) -> None:
    snaps, root = tmp_path / "snapshots", tmp_path / "auth"
    other, bad = new_company(40), new_company(30)
    everyone = [company, bad, other]
    before = take_snapshot(store, snaps, everyone, keep=5, source=SOURCE)
    _assert_holds(before, store, everyone)
    assert before.failed == {}
    bad_digest = _db_digest(store, bad)
    _corrupt(store, bad)
    store.set_keys(company, {"session": {"79000000001.0": b"after the first snapshot"}})

    snap = take_snapshot(store, snaps, everyone, keep=5, source=SOURCE)

    _assert_holds(snap, store, [company, other])
    assert list(snap.failed) == [bad]
    assert snap.failed[bad]["error"] == "DataError"
    message = snap.failed[bad]["message"]
    assert re.search(rf"company {bad}\b.*session/{BAD_KEY}.*not valid base64", message)
    assert "nothing was exported" not in message
    meta = json.loads((snap.path / SNAPSHOT_FILE).read_text())
    assert meta["failed"] == {bad: {"error": "DataError", "message": message}}
    assert sorted(meta["companies"]) == sorted([company, other])
    assert snap.to_dict()["failed"] == meta["failed"]
    assert [n for n in os.listdir(snaps) if n.startswith(".staging-")] == []
    # as listed from disk: the same companies and failures
    listed = list_snapshots(snaps)
    assert [s.path for s in listed] == [snap.path, before.path]
    assert listed[0].companies == snap.companies and listed[0].failed == snap.failed

    # the good companies fall back to the new snapshot, the bad one to the older one holding it
    for cid in (company, other):
        found = newest_snapshot(snaps, cid)
        assert found is not None and found.path == snap.path
        assert found.companies[cid]["digest"] == _db_digest(store, cid)
    fallback = newest_snapshot(snaps, bad)
    assert fallback is not None and fallback.path == before.path
    assert fallback.companies[bad]["digest"] == bad_digest
    installed = install_snapshot(fallback, bad, root)
    assert installed.digest == bad_digest


def test_a_company_bad_for_keep_runs_keeps_its_last_good_snapshot(
    store: PgAuthStore, company: str, new_company: Callable[[int], str], tmp_path: Path
) -> None:
    snaps = tmp_path / "snapshots"
    bad = new_company(20)
    good = take_snapshot(store, snaps, [company, bad], keep=2, source=SOURCE)
    _corrupt(store, bad)
    failed = [take_snapshot(store, snaps, [company, bad], keep=2, source=SOURCE) for _ in range(3)]
    assert all(list(s.failed) == [bad] for s in failed)
    # the newest two, plus the newest one that still holds the bad company
    assert [s.path for s in list_snapshots(snaps)] == [failed[2].path, failed[1].path, good.path]
    found = newest_snapshot(snaps, bad)
    assert found is not None and found.path == good.path
    found = newest_snapshot(snaps, company)
    assert found is not None and found.path == failed[2].path

    _repair(store, bad)
    fixed = take_snapshot(store, snaps, [company, bad], keep=2, source=SOURCE)
    _assert_holds(fixed, store, [company, bad])
    assert fixed.failed == {}
    assert [s.path for s in list_snapshots(snaps)] == [fixed.path, failed[2].path]
    found = newest_snapshot(snaps, bad)
    assert found is not None and found.path == fixed.path


def test_when_every_company_fails_nothing_is_written(
    store: PgAuthStore, company: str, new_company: Callable[[int], str], tmp_path: Path
) -> None:
    snaps = tmp_path / "snapshots"
    bad = new_company(10)
    first = take_snapshot(store, snaps, [company], keep=1, source=SOURCE)
    for cid in (company, bad):
        _corrupt(store, cid)
    with pytest.raises(DataError) as info:
        take_snapshot(store, snaps, [company, bad], keep=1, source=SOURCE)
    text = str(info.value)
    assert text.startswith("no snapshot taken, every company failed (2): ")
    for cid in (company, bad):
        assert re.search(rf"{cid} \(DataError: company {cid}\b.*not valid base64", text)
    assert "\n" not in text
    with pytest.raises(DataError, match=rf"failed \(1\): {bad} \(DataError: .*base64"):
        take_snapshot(store, snaps, [bad], keep=1, source=SOURCE)
    # nothing written, nothing pruned, no staging left behind
    assert os.listdir(snaps) == [first.path.name]
    found = newest_snapshot(snaps, company)
    assert found is not None and found.path == first.path


def test_snapshot_json_without_failed_still_loads(
    store: PgAuthStore, company: str, tmp_path: Path
) -> None:
    snaps = tmp_path / "snapshots"
    snap = take_snapshot(store, snaps, [company], keep=3, source=SOURCE)
    path = snap.path / SNAPSHOT_FILE
    meta = json.loads(path.read_text())
    assert meta["format"] == 1 and meta["failed"] == {}
    del meta["failed"]
    path.write_text(json.dumps(meta))
    (loaded,) = list_snapshots(snaps)
    assert loaded.companies == snap.companies and loaded.failed == {}
    found = newest_snapshot(snaps, company)
    assert found is not None and found.path == snap.path
    # a malformed "failed" makes the snapshot unreadable, like any other bad field
    path.write_text(json.dumps({**meta, "failed": {"t_x": {"error": 1}}}))
    assert list_snapshots(snaps) == []
