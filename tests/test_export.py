"""export_company against the stack's PostgreSQL: layout, manifest, digests, and bad input."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from resilience.authstate import filestore, pgraw
from resilience.authstate.codec import canonical, loads
from resilience.authstate.dataset import generate
from resilience.authstate.model import KeyRecord
from resilience.authstate.naming import CREDS_FILE, company_dir_name
from resilience.authstate.pgconn import Conn, connect
from resilience.authstate.pgstore import CredsRow, PgAuthStore
from resilience.authstate.view import digest_of_keys, view_of
from resilience.drill.stack import Stack
from resilience.errors import DataError, InputError, VerificationError
from resilience.files import batch as batch_module
from resilience.files import export as export_module
from resilience.files.batch import CompanyFailure, export_all
from resilience.files.export import estimate_export_bytes, export_company, free_space_ok
from resilience.files.importer import import_company, map_directory
from resilience.files.manifest import MANIFEST_FILE, read_manifest

pytestmark = pytest.mark.stack

SOURCE = "postgresql://svc:s3cret-pw@db.example:5432/auth"
CREDS = {"noiseKey": {"private": b"\x01" * 32, "public": b"\x02" * 32}, "registrationId": 7}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _tree(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` by relative path, with its bytes."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _leftovers(root: Path) -> list[str]:
    return sorted(n for n in os.listdir(root) if n.startswith((".staging-", ".previous-")))


def _directory_digest(directory: Path, company: str) -> str:
    mapped, unmappable = map_directory(directory)
    assert unmappable == []
    creds = loads((directory / CREDS_FILE).read_bytes())
    keys = {ref: loads((directory / name).read_bytes()) for name, ref in mapped.items()}
    return digest_of_keys(company, creds, keys).digest


def _seed_small(store: PgAuthStore, company: str) -> None:
    store.save_creds(company, CREDS)
    store.set_keys(company, {"pre-key": {str(i): {"private": bytes([i]) * 32} for i in range(5)}})


def test_export_of_a_real_tenant_is_exact_and_converges(
    store: PgAuthStore, company: str, root: Path
) -> None:
    data = generate(company, 1313)
    pgraw.insert_raw(store.conn, company, data.creds, data.rows())
    messages: list[str] = []

    result = export_company(store, root, company, source=SOURCE, progress=messages.append)

    view = view_of(company, store.load_creds(company), store.records(company))
    directory = root / company_dir_name(company)
    assert result.directory == directory
    assert result.key_count == len(view.entries) == 1313 + 2  # two legacy-only pre-keys
    names = set(os.listdir(directory))
    assert names == set(view.entries) | {CREDS_FILE, MANIFEST_FILE}
    for name, entry in view.entries.items():
        assert canonical(loads((directory / name).read_bytes())) == canonical(entry.record.value)
    assert canonical(loads((directory / CREDS_FILE).read_bytes())) == canonical(data.creds)

    assert _mode(root) == 0o700
    assert _mode(directory) == 0o700
    assert {_mode(directory / n) for n in names} == {0o600}

    manifest = read_manifest(directory)
    assert manifest is not None
    assert manifest.digest == result.digest == view.digest().digest
    assert _directory_digest(directory, company) == result.digest
    assert manifest.key_count == result.key_count
    assert sum(manifest.counts_by_type.values()) == result.key_count
    assert manifest.counts_by_type == result.counts_by_type == view.counts_by_type()
    assert manifest.files == {n: (e.key_type, e.key_id) for n, e in view.entries.items()}
    assert "s3cret-pw" not in manifest.source and "***" in manifest.source
    assert result.files_written == len(names)
    assert result.bytes_written == sum((directory / n).stat().st_size for n in names)

    # the dataset's two legacy collisions: reported, newest updated_at wins
    assert len(result.collisions) == 2
    assert [c.file_name for c in manifest.collisions] == [c.file_name for c in result.collisions]
    rows = {(r.key_type, r.key_id): r for r in data.keys}
    for collision in result.collisions:
        chosen = rows[collision.chosen[:2]]
        assert len(collision.dropped) == 1
        dropped = rows[collision.dropped[0][:2]]
        assert chosen.updated_at is not None and dropped.updated_at is not None
        assert chosen.updated_at > dropped.updated_at
        on_disk = loads((directory / collision.file_name).read_bytes())
        assert canonical(on_disk) == canonical(chosen.value)
    assert any("named by 2 rows" in m for m in messages)

    # leftovers of a crashed run: an old staging dir and a previous copy go, a fresh one stays
    old, fresh = root / ".staging-crashed", root / ".staging-running"
    previous = root / f".previous-{company_dir_name(company)}-20240101T000000000000Z-abc"
    for path in (old, fresh, previous):
        path.mkdir()
    os.utime(old, (0, 0))
    again = export_company(store, root, company, source=SOURCE)
    assert _leftovers(root) == [".staging-running"]
    fresh.rmdir()
    assert again.digest == result.digest
    assert _directory_digest(directory, company) == result.digest
    assert _leftovers(root) == []
    assert sorted(os.listdir(root)) == [company_dir_name(company)]


def test_hostile_ids_stay_inside_and_come_back_exact(
    store: PgAuthStore, company: str, tmp_path: Path
) -> None:
    root = tmp_path / "deep" / "auth"
    hostile = {"../../x": b"1", "a/b": b"2", "a:b": b"3", "..": b"4", "/etc/passwd": b"5"}
    store.save_creds(company, CREDS)
    store.set_keys(company, {"session": hostile})

    result = export_company(store, root, company, source=SOURCE)

    directory = root / company_dir_name(company)
    assert sorted(_tree(tmp_path)) == sorted(
        f"deep/auth/{company_dir_name(company)}/{n}"
        for n in [
            CREDS_FILE,
            MANIFEST_FILE,
            "session-..__..__x.json",
            "session-a__b.json",
            "session-a-b.json",
            "session-...json",
            "session-__etc__passwd.json",
        ]
    )
    mapped, unmappable = map_directory(directory)
    assert unmappable == []
    assert sorted(mapped.values()) == sorted(("session", i) for i in hostile)
    assert result.key_count == len(hostile)


def test_nul_and_overlong_ids_are_refused_and_the_previous_export_kept(
    store: PgAuthStore, company: str, root: Path
) -> None:
    _seed_small(store, company)
    export_company(store, root, company, source=SOURCE)
    before = _tree(root)

    long_id = "7" * 300
    store.set_keys(company, {"session": {long_id: b"x"}})
    with pytest.raises(InputError, match=r"'session'.*'7777.*\.\.\..*bytes") as info:
        export_company(store, root, company, source=SOURCE)
    assert long_id not in str(info.value)
    assert _tree(root) == before and _leftovers(root) == []
    store.set_keys(company, {"session": {long_id: None}})

    class WithNul(PgAuthStore):
        # PostgreSQL TEXT cannot hold NUL, so such an id can only reach us from a caller: fake it
        def stream_company(self, company_id: str, **kw: Any) -> Iterator[CredsRow | KeyRecord]:
            yield from super().stream_company(company_id, **kw)
            yield KeyRecord(company_id, "session", "ab\0c", b"x")

    with pytest.raises(InputError, match="NUL"):
        export_company(WithNul(store.conn), root, company, source=SOURCE)
    assert _tree(root) == before and _leftovers(root) == []


def test_undecodable_value_is_refused_and_the_previous_export_kept(
    store: PgAuthStore, conn: Conn, company: str, root: Path
) -> None:
    _seed_small(store, company)
    export_company(store, root, company, source=SOURCE)
    before = _tree(root)
    conn.execute(
        "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value) VALUES "
        '(%s, \'session\', \'79001.0\', \'{"type": "Buffer", "data": "!!not base64"}\')',
        (company,),
    )
    with pytest.raises(DataError, match=r"session/79001\.0.*not valid base64"):
        export_company(store, root, company, source=SOURCE)
    assert _tree(root) == before and _leftovers(root) == []


def test_unknown_company_and_keys_without_creds(
    store: PgAuthStore, company: str, root: Path
) -> None:
    with pytest.raises(InputError, match=f"unknown company {company}"):
        export_company(store, root, company, source=SOURCE)
    store.set_keys(company, {"pre-key": {"1": b"x"}})
    with pytest.raises(DataError, match="no creds.*re-paired"):
        export_company(store, root, company, source=SOURCE)
    with pytest.raises(InputError, match="invalid company id"):
        export_company(store, root, "../evil", source=SOURCE)
    assert not root.exists()


def _make_immutable(path: Path) -> bool:
    """chattr +i: the one way to make a directory unwritable for root on ext4."""
    if shutil.which("chattr") is None:
        return False
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    return done.returncode == 0


def test_read_only_export_dir_is_a_clear_error(
    store: PgAuthStore, company: str, root: Path
) -> None:
    _seed_small(store, company)
    export_company(store, root, company, source=SOURCE)
    before = _tree(root)
    if os.geteuid() != 0:
        os.chmod(root, 0o500)
        locked = True
    else:
        locked = _make_immutable(root)
    if not locked:
        pytest.skip("running as root without chattr: covered by the simulated EROFS test")
    try:
        with pytest.raises(InputError, match=f"export dir {root} is not writable"):
            export_company(store, root, company, source=SOURCE)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(root)], check=True)
        os.chmod(root, 0o700)
    assert _tree(root) == before and _leftovers(root) == []


def _failing_after(monkeypatch: pytest.MonkeyPatch, good: int, err: int) -> list[str]:
    """Make the low-level file creation fail with ``err`` after ``good`` files."""
    written: list[str] = []
    real = filestore.create_file

    def create(dir_fd: int, name: str, payload: bytes, **kw: Any) -> bool:
        if len(written) >= good:
            raise OSError(err, os.strerror(err))
        same = real(dir_fd, name, payload, **kw)
        written.append(name)
        return same

    monkeypatch.setattr(filestore, "create_file", create)
    return written


def test_simulated_read_only_file_system(
    store: PgAuthStore, company: str, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root, permission bits do not stop writes; EROFS is simulated at the file write.
    _seed_small(store, company)
    export_company(store, root, company, source=SOURCE)
    before = _tree(root)
    _failing_after(monkeypatch, 0, errno.EROFS)
    with pytest.raises(InputError, match="is not writable"):
        export_company(store, root, company, source=SOURCE)
    assert _tree(root) == before and _leftovers(root) == []


def test_disk_full_mid_export_keeps_the_previous_directory(
    store: PgAuthStore, company: str, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = generate(company, 200)
    pgraw.insert_raw(store.conn, company, data.creds, data.rows())
    export_company(store, root, company, source=SOURCE)
    before = _tree(root)
    store.set_keys(company, {"session": {"79001234567.0": b"new"}})
    written = _failing_after(monkeypatch, 37, errno.ENOSPC)
    with pytest.raises(InputError, match="no space left.*previous directory is intact"):
        export_company(store, root, company, source=SOURCE)
    assert len(written) == 37  # it really failed in the middle
    assert _tree(root) == before and _leftovers(root) == []
    monkeypatch.undo()
    result = export_company(store, root, company, source=SOURCE)
    assert result.key_count == len(data.keys) - 2 + 1  # 2 legacy twins collapse, 1 new session


def test_root_that_is_a_file_is_refused(store: PgAuthStore, company: str, tmp_path: Path) -> None:
    _seed_small(store, company)
    root = tmp_path / "not-a-dir"
    root.write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        export_company(store, root, company, source=SOURCE)
    assert root.read_text() == "x"


def test_export_all_estimate_and_free_space(store: PgAuthStore, root: Path) -> None:
    companies = [f"t_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    try:
        for cid in companies:
            _seed_small(store, cid)
        batch = export_all(store, root, companies, source=SOURCE)
        assert batch.ok and batch.failures == [] and batch.exit_code == 0
        results = batch.results
        assert [r.company_id for r in results] == companies
        assert sorted(os.listdir(root)) == sorted(company_dir_name(c) for c in companies)
        for result in results:
            estimate = estimate_export_bytes(store, result.company_id)
            assert estimate >= result.bytes_written > 0
        assert free_space_ok(root, 1)[0]
        ok, free = free_space_ok(root / "missing" / "dir", 10**18)
        assert not ok and free > 0
    finally:
        for cid in companies:
            pgraw.delete_company(store.conn, cid)


def _make_undecodable(conn: Conn, company: str) -> None:
    """One key row whose value is a Buffer that does not decode: the company cannot be exported."""
    conn.execute(
        "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value) VALUES "
        '(%s, \'session\', \'79001.0\', \'{"type": "Buffer", "data": "!!not base64"}\')',
        (company,),
    )


@pytest.fixture
def new_company(store: PgAuthStore) -> Iterator[Callable[[], str]]:
    """Fresh company ids on demand; their rows are deleted afterwards."""
    made: list[str] = []

    def make() -> str:
        made.append(f"t_{uuid.uuid4().hex[:12]}")
        return made[-1]

    yield make
    for cid in made:
        pgraw.delete_company(store.conn, cid)


def test_export_all_exports_every_good_company_past_a_bad_one(
    store: PgAuthStore, conn: Conn, root: Path, new_company: Callable[[], str]
) -> None:
    first, bad, last = new_company(), new_company(), new_company()
    for cid in (first, bad, last):
        _seed_small(store, cid)
    store.set_keys(last, {"session": {"79000000009.0": b"last"}})
    export_company(store, root, bad, source=SOURCE)
    bad_before = _tree(root / company_dir_name(bad))
    _make_undecodable(conn, bad)
    messages: list[str] = []

    batch = export_all(store, root, [first, bad, last], source=SOURCE, progress=messages.append)

    assert [r.company_id for r in batch.results] == [first, last]
    for result in batch.results:
        expected = view_of(
            result.company_id,
            store.load_creds(result.company_id),
            store.records(result.company_id),
        ).digest()
        assert result.digest == expected.digest
        assert _directory_digest(result.directory, result.company_id) == expected.digest
        assert result.directory == root / company_dir_name(result.company_id)
    # the bad company failed alone, named with its reason; its previous export is kept
    (failure,) = batch.failures
    assert failure.company_id == bad
    assert failure.error == "DataError"
    assert failure.exit_code == DataError.exit_code == 4
    assert "\n" not in failure.message
    assert re.search(rf"company {bad}\b.*session/79001\.0.*not valid base64", failure.message)
    assert not batch.ok and batch.exit_code == DataError.exit_code
    assert _tree(root / company_dir_name(bad)) == bad_before
    assert sorted(os.listdir(root)) == sorted(company_dir_name(c) for c in (first, bad, last))
    # JSON-ready, and the progress names the failing company and why
    as_json = json.loads(json.dumps(batch.to_dict()))
    assert as_json["ok"] is False
    assert [e["company_id"] for e in as_json["exports"]] == [first, last]
    assert as_json["failures"] == [
        {
            "company_id": bad,
            "error": "DataError",
            "message": failure.message,
            "exit_code": 4,
        }
    ]
    failed_lines = [m for m in messages if "FAILED" in m]
    assert len(failed_lines) == 1
    assert bad in failed_lines[0] and "DataError" in failed_lines[0]
    assert "not valid base64" in failed_lines[0]
    assert any(m.startswith("2 company(ies) exported, 1 failed") and bad in m for m in messages)
    assert any(f"company {last}: " in m and "in place" in m for m in messages)
    # something was written: no message may claim otherwise
    assert not any("nothing was exported" in m for m in [*messages, failure.message])


def test_export_all_records_a_listed_company_with_an_invalid_id(
    store: PgAuthStore, root: Path, company: str
) -> None:
    _seed_small(store, company)

    class Listing(PgAuthStore):
        def companies(self) -> list[str]:
            return ["../evil", company]

    batch = export_all(Listing(store.conn), root, None, source=SOURCE)
    assert [r.company_id for r in batch.results] == [company]
    assert batch.failures == [
        CompanyFailure(
            "../evil",
            "InputError",
            batch.failures[0].message,
            InputError.exit_code,
        )
    ]
    assert "invalid company id '../evil'" in batch.failures[0].message
    assert sorted(os.listdir(root)) == [company_dir_name(company)]


def test_export_all_refuses_named_unknown_companies_before_writing(
    store: PgAuthStore, root: Path, company: str
) -> None:
    _seed_small(store, company)
    with pytest.raises(InputError, match="unknown company t_nobody_here: no creds and no keys"):
        export_all(store, root, [company, "t_nobody_here"], source=SOURCE)
    with pytest.raises(InputError, match="invalid company id"):
        export_all(store, root, [company, "../evil"], source=SOURCE)
    assert not root.exists()
    assert export_all(store, root, [], source=SOURCE).to_dict() == {
        "ok": True,
        "exports": [],
        "failures": [],
    }


def test_export_all_lets_other_exceptions_through(
    store: PgAuthStore,
    root: Path,
    new_company: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, broken = new_company(), new_company()
    for cid in (first, broken):
        _seed_small(store, cid)
    real = batch_module.export_company

    def export_or_crash(
        store: PgAuthStore, root: Path, company_id: str, **kwargs: Any
    ) -> export_module.ExportResult:
        if company_id == broken:
            raise RuntimeError("a bug, not a bad tenant")
        return real(store, root, company_id, **kwargs)

    monkeypatch.setattr(batch_module, "export_company", export_or_crash)
    with pytest.raises(RuntimeError, match="a bug"):
        export_all(store, root, [first, broken], source=SOURCE)


def test_export_leaves_a_non_autocommit_connection_idle(
    stack: Stack, company: str, root: Path
) -> None:
    with connect(stack.endpoints.service_dsn) as plain:
        store = PgAuthStore(plain)
        _seed_small(store, company)
        plain.commit()
        export_company(store, root, company, source=SOURCE)
        assert plain.info.transaction_status.name == "IDLE"


def _rewrite_manifest(directory: Path, change: Any) -> None:
    path = directory / MANIFEST_FILE
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_read_manifest_refuses_what_does_not_fit(
    store: PgAuthStore, company: str, root: Path
) -> None:
    assert read_manifest(root) is None
    _seed_small(store, company)
    directory = export_company(store, root, company, source=SOURCE).directory

    _rewrite_manifest(directory, lambda d: d["files"].update({"pre-key-1.json": ["pre-key", "2"]}))
    with pytest.raises(DataError, match="holds a key of another file"):
        read_manifest(directory)
    _rewrite_manifest(directory, lambda d: d.update(format=2))
    with pytest.raises(DataError, match="format"):
        read_manifest(directory)
    (directory / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_manifest(directory)


def test_a_file_that_does_not_read_back_as_written_fails_the_export(
    store: PgAuthStore, company: str, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read-back check is real: one flipped byte on disk stops the swap."""
    _seed_small(store, company)
    export_company(store, root, company, source=SOURCE)
    before = _tree(root)
    real = os.pread
    flipped: list[int] = []

    def corrupting(fd: int, n: int, offset: int) -> bytes:
        data = real(fd, n, offset)
        if flipped or len(data) < 4:
            return data
        flipped.append(fd)  # one file reads back with a byte flipped
        return data[:-3] + bytes([data[-3] ^ 0x01]) + data[-2:]

    monkeypatch.setattr(os, "pread", corrupting)
    with pytest.raises(
        VerificationError, match=r"does not read back as written: 1 file\(s\) differ"
    ):
        export_company(store, root, company, source=SOURCE)
    assert _tree(root) == before and _leftovers(root) == []


class _Counting:
    """Meters that record what the library told them."""

    def __init__(self) -> None:
        self.started: list[tuple[str, int | None, str]] = []
        self.advanced = 0
        self.closed = 0

    def start(self, description: str, total: int | None, unit: str) -> _Counting:
        self.started.append((description, total, unit))
        return self

    def advance(self, units: int = 1) -> None:
        self.advanced += units

    def close(self) -> None:
        self.closed += 1


def test_export_and_import_count_every_key_for_the_progress_bar(
    store: PgAuthStore, company: str, root: Path
) -> None:
    _seed_small(store, company)
    exported = _Counting()
    result = export_company(store, root, company, source=SOURCE, meters=exported)
    assert exported.started == [(f"export {company}", result.key_count, "keys")]
    assert exported.advanced == result.key_count and exported.closed == 1
    pgraw.delete_company(store.conn, company)
    imported = _Counting()
    done = import_company(store, root, company, meters=imported)
    assert imported.started == [(f"import {company}", done.key_count, "keys")]
    assert imported.advanced == done.key_count and imported.closed == 1


def test_parallel_exports_into_a_new_root_all_succeed(tmp_path: Path) -> None:
    """Workers that create the same new export root at once: none may take the others' fresh
    directory for "exists and is not a directory" (a 500-company bench run failed so)."""
    import threading

    from resilience.files.staging import ensure_root

    for attempt in range(40):
        root = tmp_path / f"new-{attempt}" / "root"
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def make(
            root: Path = root,
            barrier: threading.Barrier = barrier,
            errors: list[BaseException] = errors,
        ) -> None:
            barrier.wait()
            try:
                ensure_root(root)
            except BaseException as exc:  # collected for the assertion
                errors.append(exc)

        threads = [threading.Thread(target=make) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [] and root.is_dir()
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(InputError, match="exists and is not a directory"):
        ensure_root(tmp_path / "a-file")


def _is_one_of(item: CredsRow | KeyRecord, refs: set[tuple[str, str]]) -> bool:
    return isinstance(item, KeyRecord) and (item.key_type, item.key_id) in refs


@pytest.mark.parametrize("order", ["reversed", "losers-first"])
def test_a_file_written_from_a_losing_row_is_replaced_by_the_winner(
    store: PgAuthStore, company: str, root: Path, order: str
) -> None:
    """Rows stream in no set order: when a legacy twin that loses its collision comes first,
    its file is written, then replaced by the winner's once every row is in."""
    data = generate(company, 1313)
    pgraw.insert_raw(store.conn, company, data.creds, data.rows())
    view = view_of(company, store.load_creds(company), store.records(company))
    losers = {(t, i) for c in view.collisions for t, i, _ in c.dropped}
    assert len(losers) == 2

    class Ordered(PgAuthStore):
        def stream_company(self, company_id: str, **kw: Any) -> Iterator[CredsRow | KeyRecord]:
            items = list(super().stream_company(company_id, **kw))
            if order == "reversed":
                items.reverse()
            else:
                items.sort(key=lambda r: not _is_one_of(r, losers))
            yield from items

    result = export_company(Ordered(store.conn), root, company, source=SOURCE)
    directory = root / company_dir_name(company)
    assert result.digest == view.digest().digest == _directory_digest(directory, company)
    for collision in view.collisions:
        winner = view.entries[collision.file_name].record
        on_disk = loads((directory / collision.file_name).read_bytes())
        assert canonical(on_disk) == canonical(winner.value)
    assert set(os.listdir(directory)) == set(view.entries) | {CREDS_FILE, MANIFEST_FILE}
