"""Snapshots against the stack's PostgreSQL: keep-N, newest, age, verified install."""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from resilience.authstate.dataset import generate
from resilience.authstate.naming import CREDS_FILE, company_dir_name
from resilience.authstate.pgstore import PgAuthStore
from resilience.authstate.view import view_of
from resilience.errors import DataError, InputError, VerificationError
from resilience.restore.export import export_company
from resilience.restore.importer import read_directory
from resilience.restore.manifest import MANIFEST_FILE
from resilience.restore.snapshot import (
    SNAPSHOT_FILE,
    install_snapshot,
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
    store.insert_raw(cid, data.creds, data.rows())
    yield cid
    store.delete_company(cid)


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
