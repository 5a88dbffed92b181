"""bench_restore with tiny sizes against the stack: structure, finite ratios, the round-trip
check, cleanup; and the batch-durable write path the export uses. No timing is asserted."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import resilience.drill.bench.restore as bench
from resilience.authstate import filestore
from resilience.authstate.codec import loads
from resilience.authstate.filestore import FileAuthStore, make_durable
from resilience.authstate.naming import CREDS_FILE
from resilience.authstate.pgconn import Conn, connect
from resilience.authstate.pgstore import PgAuthStore
from resilience.drill.bench import bench_restore
from resilience.drill.stack import Stack
from resilience.errors import InputError, VerificationError
from resilience.files.export import ExportResult

SIZES = (50, 200)


@pytest.fixture
def conn(stack: Stack) -> Iterator[Conn]:
    with connect(stack.endpoints.admin_dsn, autocommit=True) as c:
        yield c


def _bench_companies(conn: Conn) -> set[str]:
    return {c for c in PgAuthStore(conn).companies() if c.startswith("bench_")}


def _positive_finite(x: Any) -> bool:
    return isinstance(x, float | int) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.mark.stack
def test_bench_restore_reports_every_size_and_cleans_up(
    stack: Stack, conn: Conn, tmp_path: Path
) -> None:
    before = _bench_companies(conn)
    phases: list[str] = []
    result = bench_restore(
        stack.endpoints.admin_dsn,
        work_dir=tmp_path,
        sizes=SIZES,
        repeat=1,
        progress=phases.append,
        tenants=(3, 40),
        workers=2,
    )
    json.dumps(result, allow_nan=False)  # JSON-ready, as `invoke bench` prints it
    assert result["benchmark"] == "restore"
    machine = result["machine"]
    assert machine["cpu_count"] >= 1 and machine["python"] and machine["postgres"]
    assert set(result["sizes"]) == {str(n) for n in SIZES}
    for n in SIZES:
        entry = result["sizes"][str(n)]
        assert entry["keys"] == n
        assert entry["rows"] >= n and entry["files"] >= n and entry["bytes"] > 0
        assert len(entry["digest"]) == 64
        for name in (
            "export_s", "raw_export_s", "import_s", "raw_import_s", "import_over_rows_s",
            "way_back_over_rows_s", "way_back_reading_everything_s",
        ):  # fmt: skip
            stats = entry[name]
            assert len(stats["runs"]) == 1
            assert _positive_finite(stats["median"]) and stats["min"] <= stats["median"]
        assert _positive_finite(entry["ratio_export"])
        assert _positive_finite(entry["ratio_import"])
        assert _positive_finite(entry["ratio_import_over_rows"])
        assert _positive_finite(entry["ratio_way_back_over_rows"])
        assert _positive_finite(entry["ratio_way_back_reading_everything"])
    assert result["sizes"]["200"]["bytes"] > result["sizes"]["50"]["bytes"]
    # No 100k size measured: the target is reported as not evaluated, not as met.
    assert result["targets"]["export_100k_ratio_max"] == 1.3
    assert result["targets"]["way_back_100k_ratio_max"] == 1.3
    assert result["targets"]["import_100k_ratio_max"] == 1.5
    assert result["targets"]["met"] is None and result["targets"]["met_each"] is None
    # many tenants: every company exported by the workers, beside the raw limit, with peak RSS
    many = result["tenants"]
    assert many["companies"] == 3 and many["keys_per_company"] == 40 and many["workers"] == 2
    assert many["rows"] >= 3 * 40
    assert _positive_finite(many["ratio_export_all"])
    peaks = many["peak_rss_mb"]  # each measured in a fresh process
    assert _positive_finite(peaks["one_company"]) and _positive_finite(peaks["all_companies"])
    assert any("seeding" in p for p in phases) and any("raw import" in p for p in phases)
    assert any("import over the rows" in p for p in phases)
    assert _bench_companies(conn) == before
    assert list(tmp_path.iterdir()) == []


@pytest.mark.stack
def test_bench_refuses_rounds_the_file_system_has_no_room_for(
    stack: Stack, conn: Conn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export rounds are kept until the size is done: too little room is said first."""
    asked: list[int] = []

    def no_room(root: Path, needed: int) -> tuple[bool, int]:
        asked.append(needed)
        return False, 5 * 2**20

    monkeypatch.setattr(bench, "free_space_ok", no_room)
    before = _bench_companies(conn)
    with pytest.raises(InputError, match=r"need about \d+ MiB .* 5 MiB are free"):
        bench_restore(stack.endpoints.admin_dsn, work_dir=tmp_path, sizes=(50,), repeat=2)
    assert asked and asked[0] > 2 * 2 * 50 * 4096  # two rounds of ours and raw, a block a file
    assert _bench_companies(conn) == before
    assert list(tmp_path.iterdir()) == []


@pytest.mark.stack
def test_bench_refuses_an_export_that_does_not_round_trip(
    stack: Stack, conn: Conn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = bench.export_company

    def corrupting(*args: Any, **kwargs: Any) -> ExportResult:
        result = real(*args, **kwargs)
        victim = next(p for p in sorted(result.directory.iterdir()) if p.name.startswith("pre-key"))
        os.chmod(victim, 0o600)
        victim.write_bytes(b'{"private":{"type":"Buffer","data":"AAAA"},"public":null}')
        return result

    monkeypatch.setattr(bench, "export_company", corrupting)
    before = _bench_companies(conn)
    with pytest.raises(VerificationError, match="did not round-trip"):
        bench_restore(stack.endpoints.admin_dsn, work_dir=tmp_path, sizes=(50,), repeat=1)
    assert _bench_companies(conn) == before  # cleaned up after the failure too
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("sizes", "repeat"), [((), 1), ((0,), 1), ((10, 10), 1), ((10,), 0), ((True,), 1)]
)
def test_bad_arguments_are_refused(sizes: tuple[int, ...], repeat: int, tmp_path: Path) -> None:
    with pytest.raises(InputError):
        bench_restore(
            "postgresql://nowhere.invalid/x", work_dir=tmp_path, sizes=sizes, repeat=repeat
        )


# --- durable="batch": a new directory written whole, made durable once ----------------------------

KEYS = [("pre-key", "1", {"private": b"a", "public": b"b"}), ("session", "79001.0", b"s")]


@pytest.mark.parametrize("with_syncfs", [True, False])
def test_batch_write_creates_a_private_durable_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_syncfs: bool
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync
    if not with_syncfs:
        monkeypatch.setattr(filestore, "_syncfs", lambda fd: False)

        def fsync(fd: int) -> None:
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
            real_fsync(fd)

        monkeypatch.setattr(filestore.os, "fsync", fsync)
    store = FileAuthStore(tmp_path)
    assert store.write_all("c1", {"me": b"x"}, [*KEYS, ("tctoken", "gone", None)], durable="batch")
    directory = store.company_dir("c1")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    names = sorted(p.name for p in directory.iterdir())
    assert names == [CREDS_FILE, "pre-key-1.json", "session-79001.0.json"]  # no temp files
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert loads((directory / CREDS_FILE).read_bytes()) == {"me": b"x"}
    assert store.read_keys("c1") == {(t, i): v for t, i, v in KEYS}
    if not with_syncfs:  # the fallback fsyncs every file written, then the directory
        assert sorted(Path(p).name for p in synced) == sorted([*names, directory.name])


def test_batch_write_refuses_an_existing_directory(tmp_path: Path) -> None:
    store = FileAuthStore(tmp_path)
    store.write_all("c1", {"me": b"x"}, KEYS)
    before = sorted(p.name for p in store.company_dir("c1").iterdir())
    with pytest.raises(InputError, match="already exists"):
        store.write_all("c1", {"me": b"y"}, KEYS, durable="batch")
    assert sorted(p.name for p in store.company_dir("c1").iterdir()) == before
    assert loads((store.company_dir("c1") / CREDS_FILE).read_bytes()) == {"me": b"x"}


def test_make_durable_reports_a_failed_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(fd: int) -> bool:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(filestore, "_syncfs", failing)
    with pytest.raises(OSError, match="Input/output error"):
        make_durable(tmp_path, [])


def test_the_memory_probe_reports_its_own_peak_not_its_parents() -> None:
    """Linux carries ``ru_maxrss`` across ``execve``: a probe started by a big bench process
    would report the bench's peak. The probe reads its own high-water mark instead."""
    ballast = bytearray(300 * 1024 * 1024)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # touched: resident
    code = (
        "import resource\n"
        "from resilience.drill.bench.rss_probe import _peak_kib\n"
        "print(_peak_kib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    own, inherited = (int(n) for n in done.stdout.split())
    assert inherited > 300 * 1024  # what the old probe reported
    assert own < 150 * 1024
    del ballast
