"""FileAuthStore: Baileys' layout, atomic 0600/0700 writes, deletes, hostile ids, strict reads."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from resilience.authstate import codec
from resilience.authstate.filestore import FileAuthStore
from resilience.errors import DataError, InputError

CID = "acme_1"
CREDS = {
    "noiseKey": {"private": b"\x01" * 32, "public": b"\x02" * 32},
    "registrationId": 4242,
    "me": {"id": "79001234567:12@s.whatsapp.net", "name": "Acme"},
}
KEYS: list[tuple[str, str, Any]] = [
    ("pre-key", "5", {"private": b"\x03" * 32, "public": b"\x04" * 33}),
    ("session", "79001234567.0", b"\x05" * 100),
    ("sender-key", "120363@g.us::79001234567::0", b"\x06" * 40),
    ("app-state-sync-key", "AAb/+x==", {"keyData": b"\x07" * 32, "timestamp": 1700000000000}),
    ("lid-mapping", "79001234567", "123456789012345"),
    ("device-list", "79001234567", ["0", "12"]),
]


@pytest.fixture
def store(tmp_path: Path) -> FileAuthStore:
    return FileAuthStore(tmp_path / "export" / "root")


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_layout_and_round_trip(store: FileAuthStore) -> None:
    assert store.write_all(CID, CREDS, KEYS) == len(KEYS)
    directory = store.company_dir(CID)
    assert directory == store.root / "company_acme_1"
    assert sorted(os.listdir(directory)) == sorted(
        [
            "creds.json",
            "pre-key-5.json",
            "session-79001234567.0.json",
            "sender-key-120363@g.us--79001234567--0.json",
            "app-state-sync-key-AAb__+x==.json",
            "lid-mapping-79001234567.json",
            "device-list-79001234567.json",
        ]
    )
    # Files hold base64 BufferJSON, exactly dumps_file's bytes.
    raw = (directory / "pre-key-5.json").read_bytes()
    assert raw == codec.dumps_file(KEYS[0][2])
    assert json.loads(raw)["private"] == {
        "type": "Buffer",
        "data": "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=",
    }
    assert store.read_creds(CID) == CREDS
    assert store.read_keys(CID) == {(t, i): v for t, i, v in KEYS}
    assert set(store.read_files(CID)) == set(os.listdir(directory)) - {"creds.json"}


def test_modes_ignore_umask(store: FileAuthStore, umask_zero: None) -> None:
    store.write_all(CID, CREDS, KEYS)
    store.write_key(CID, "pre-key", "6", {"private": b"", "public": b""})
    directory = store.company_dir(CID)
    for path in (store.root, store.root.parent, directory):
        assert _mode(path) == 0o700, path
    for name in os.listdir(directory):
        assert _mode(directory / name) == 0o600, name


def test_existing_file_gets_0600(store: FileAuthStore, umask_zero: None) -> None:
    store.write_key(CID, "pre-key", "5", b"old")
    path = store.company_dir(CID) / "pre-key-5.json"
    os.chmod(path, 0o666)
    store.write_key(CID, "pre-key", "5", b"new")
    assert _mode(path) == 0o600
    assert store.read_keys(CID) == {("pre-key", "5"): b"new"}


def test_no_temp_files_left(store: FileAuthStore) -> None:
    store.write_all(CID, CREDS, KEYS)
    store.write_key(CID, "session", "1.0", b"x")
    store.write_creds(CID, CREDS)
    leftovers = [n for n in os.listdir(store.company_dir(CID)) if not n.endswith(".json")]
    assert leftovers == []


def test_failed_write_leaves_old_file_and_no_temp(
    store: FileAuthStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write_key(CID, "pre-key", "5", b"old")

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        store.write_key(CID, "pre-key", "5", b"new")
    monkeypatch.undo()
    assert os.listdir(store.company_dir(CID)) == ["pre-key-5.json"]
    assert store.read_keys(CID) == {("pre-key", "5"): b"old"}


def test_none_deletes_like_baileys(store: FileAuthStore) -> None:
    store.write_all(CID, CREDS, KEYS)
    store.write_key(CID, "pre-key", "5", None)
    store.write_key(CID, "pre-key", "999", None)  # deleting a missing key is fine
    assert ("pre-key", "5") not in store.read_keys(CID)
    store.write_all(CID, None, [("session", "79001234567.0", None)])
    assert ("session", "79001234567.0") not in store.read_keys(CID)
    assert store.read_creds(CID) == CREDS


@pytest.mark.parametrize("key_id", ["../../etc/passwd", "/abs", "..\\x", "..", "a/../../b", ":..:"])
def test_hostile_ids_stay_inside(store: FileAuthStore, tmp_path: Path, key_id: str) -> None:
    store.write_key(CID, "session", key_id, b"x")
    directory = store.company_dir(CID)
    entries = os.listdir(directory)
    assert len(entries) == 1
    assert (directory / entries[0]).is_file()
    everything = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert everything == [directory / entries[0]]
    store.write_key(CID, "session", key_id, None)
    assert os.listdir(directory) == []


def test_unnameable_id_is_refused_and_nothing_written(store: FileAuthStore) -> None:
    with pytest.raises(InputError):
        store.write_all(CID, CREDS, [KEYS[0], ("session", "a\0b", b"x")])
    assert not store.root.exists()


def test_collision_is_refused_and_nothing_written(store: FileAuthStore) -> None:
    with pytest.raises(InputError, match="resolve collisions"):
        store.write_all(CID, CREDS, [("pre-key", "5", b"a"), ("pre", "key-5", b"b")])
    assert not store.root.exists()


def test_invalid_company_id(store: FileAuthStore) -> None:
    for bad in ["../x", "", "a/b", "x" * 51]:
        with pytest.raises(InputError):
            store.write_creds(bad, CREDS)
        with pytest.raises(InputError):
            store.read_creds(bad)
    assert not store.root.exists()


def test_reads_are_strict(store: FileAuthStore) -> None:
    with pytest.raises(DataError, match="no auth-state directory"):
        store.read_files(CID)
    assert store.read_creds(CID) is None
    store.write_key(CID, "pre-key", "5", b"x")
    assert store.read_creds(CID) is None
    directory = store.company_dir(CID)
    (directory / "notes.txt").write_text("ignored")
    (directory / ".tmp-abc").write_text("ignored")
    assert store.read_keys(CID) == {("pre-key", "5"): b"x"}

    (directory / "session-a-b.json").write_text('"x"')
    (directory / "mystery-1.json").write_text('"x"')
    with pytest.raises(DataError) as caught:
        store.read_keys(CID)
    message = str(caught.value)
    assert "2 key file(s)" in message
    assert "'session-a-b.json'" in message and "'mystery-1.json'" in message
    assert set(store.read_files(CID)) == {"pre-key-5.json", "session-a-b.json", "mystery-1.json"}


def test_corrupt_file_names_the_file_not_the_data(store: FileAuthStore) -> None:
    store.write_key(CID, "pre-key", "5", b"x")
    path = store.company_dir(CID) / "pre-key-5.json"
    path.write_text('{"private":{"type":"Buffer","data":"SECRET!!"}}')
    with pytest.raises(DataError, match=r"^pre-key-5\.json\.private:") as caught:
        store.read_keys(CID)
    assert "SECRET" not in str(caught.value)
    path.write_text('{"private":')
    with pytest.raises(DataError, match="invalid JSON"):
        store.read_files(CID)


def test_symlinks_are_not_followed(store: FileAuthStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text('"secret"')
    store.write_key(CID, "pre-key", "5", b"x")
    directory = store.company_dir(CID)
    (directory / "pre-key-6.json").symlink_to(outside)
    with pytest.raises(DataError, match="not a regular file"):
        store.read_files(CID)
    with pytest.raises(InputError, match="symbolic link"):
        store.write_key(CID, "pre-key", "6", b"y")
    assert outside.read_text() == '"secret"'
    (directory / "pre-key-6.json").unlink()
    (directory / "creds.json").symlink_to(outside)
    with pytest.raises(DataError, match="not a regular file"):
        store.read_creds(CID)


def test_array_style_input_is_written_as_base64(store: FileAuthStore) -> None:
    stored = {"private": {"type": "Buffer", "data": [1, 2, 3]}}
    store.write_key(CID, "pre-key", "7", stored)
    raw = json.loads((store.company_dir(CID) / "pre-key-7.json").read_bytes())
    assert raw == {"private": {"type": "Buffer", "data": "AQID"}}


def test_refuses_none_creds(store: FileAuthStore) -> None:
    with pytest.raises(InputError):
        store.write_creds(CID, None)


# --- SyncGroup: one syncfs shared by the threads waiting for it ----------------------------------


def test_sync_group_shares_one_syncfs_among_the_callers_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    from resilience.authstate import filestore
    from resilience.infra.waiting import wait_until

    group = filestore.SyncGroup()
    release_first = threading.Event()
    calls: list[tuple[float, float]] = []

    def fake_syncfs(fd: int) -> bool:
        started = time.monotonic()
        if not calls and not release_first.is_set():
            release_first.wait(10)
        calls.append((started, time.monotonic()))
        return True

    monkeypatch.setattr(filestore, "_syncfs", fake_syncfs)
    monkeypatch.setattr(filestore, "syncfs_available", lambda: True)
    spans: list[tuple[float, float]] = []

    def caller() -> None:
        entered = time.monotonic()
        group(tmp_path, [])
        spans.append((entered, time.monotonic()))

    first = threading.Thread(target=caller)
    first.start()
    wait_until(lambda: group._running, 5, "the first syncfs under way")
    others = [threading.Thread(target=caller) for _ in range(7)]
    for thread in others:
        thread.start()
    wait_until(lambda: len(group._cond._waiters) == 7, 5, "seven callers waiting")  # type: ignore[attr-defined]
    release_first.set()
    for thread in [first, *others]:
        thread.join(10)
    assert len(calls) == 2  # the first, then one for the seven who came while it ran
    for entered, returned in spans:  # each returned after a syncfs that began after it came
        assert any(entered <= start and end <= returned for start, end in calls)


def test_sync_group_failure_reaches_the_caller_and_the_next_tries_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resilience.authstate import filestore

    outcomes = iter([OSError(5, "Input/output error"), True])

    def flaky_syncfs(fd: int) -> bool:
        outcome = next(outcomes)
        if isinstance(outcome, OSError):
            raise outcome
        return outcome

    monkeypatch.setattr(filestore, "_syncfs", flaky_syncfs)
    monkeypatch.setattr(filestore, "syncfs_available", lambda: True)
    group = filestore.SyncGroup()
    with pytest.raises(OSError, match="Input/output error"):
        group(tmp_path, [])
    group(tmp_path, [])  # a syncfs of its own, which succeeds
    assert group._done == 2 and not group._running


def test_read_regular_file_refuses_what_is_not_one(tmp_path: Path) -> None:
    from resilience.authstate.filestore import read_regular_file

    (tmp_path / "key.json").write_bytes(b'{"a":1}' * 20000)
    assert read_regular_file(tmp_path, "key.json") == b'{"a":1}' * 20000
    os.mkfifo(tmp_path / "fifo.json")  # a FIFO does not hang the read
    with pytest.raises(DataError, match="not a regular file"):
        read_regular_file(tmp_path, "fifo.json")
    (tmp_path / "link.json").symlink_to(tmp_path / "key.json")
    with pytest.raises(DataError, match="cannot read"):
        read_regular_file(tmp_path, "link.json")
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path, "gone.json")
