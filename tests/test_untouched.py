"""What the way back tells untouched without reading it (resilience.files.untouched): a file by
its signature, a directory's names by the directory's own times, never within a clock tick."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from resilience.files import untouched
from resilience.files.untouched import file_signatures, scan_directory, untouched_files


def _directory(tmp_path: Path) -> Path:
    directory = tmp_path / "company_acme"
    directory.mkdir()
    for name in ("session-a.json", "session-b.json", "creds.json", "manifest.json"):
        (directory / name).write_bytes(b'{"v": 1}')
    (directory / ".tmp-x.json").write_bytes(b"half")
    return directory


def test_a_file_is_untouched_until_written_renamed_over_or_replaced_by_a_symlink(
    tmp_path: Path,
) -> None:
    directory = _directory(tmp_path)
    names = ["session-a.json", "session-b.json"]
    recorded = file_signatures(directory, names)
    assert untouched_files(directory, names, recorded) == set(names)
    (directory / "session-a.json").write_bytes(b'{"v": 2}')  # same size, in place
    (directory / "session-b.json").unlink()
    (directory / "session-b.json").symlink_to(directory / "creds.json")
    assert untouched_files(directory, names, recorded) == set()


def test_one_pass_maps_names_by_the_rows_and_leaves_creds_manifest_and_temp_files_out(
    tmp_path: Path,
) -> None:
    directory = _directory(tmp_path)
    rows = {"session-a.json": ["session", "a", "7"]}
    recorded = file_signatures(directory, ["session-a.json"])
    scan = scan_directory(directory, rows, recorded)
    assert scan.files == {"session-a.json": ("session", "a")}
    assert scan.unmapped == ["session-b.json"]
    assert scan.untouched == {"session-a.json"}


def test_names_created_after_the_scan_are_seen_and_a_recent_directory_is_never_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = _directory(tmp_path)
    assert not scan_directory(directory, {}, {}).unchanged_since(directory), "changed just now"
    past = time.time_ns() - 10 * untouched.RACY_NS
    os.utime(directory, ns=(past, past))  # last changed long ago (its ctime is now)
    later = time.time_ns() + 10 * untouched.RACY_NS
    monkeypatch.setattr(untouched.time, "time_ns", lambda: later)  # its ctime far behind too
    scan = scan_directory(directory, {}, {})
    assert scan.unchanged_since(directory)
    (directory / "session-c.json").write_bytes(b"{}")
    assert not scan.unchanged_since(directory), "a name created after the scan"
