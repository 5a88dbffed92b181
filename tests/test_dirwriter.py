"""NewDirWriter: files created in a new directory, by the caller or by a child process."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from resilience.authstate import dirwriter
from resilience.authstate.dirwriter import NewDirWriter
from resilience.errors import InputError


def _files(n: int) -> dict[str, bytes]:
    # names as exports make them, non-ASCII included; payloads of many sizes
    return {f"session-{i}.é.json": (b"x" * (i % 3000)) + str(i).encode() for i in range(n)}


@pytest.mark.parametrize("count", [10, dirwriter.PROCESS_THRESHOLD + 5])
def test_every_file_is_created_0600_with_its_bytes(tmp_path: Path, count: int) -> None:
    target = tmp_path / "new"
    target.mkdir(mode=0o700)
    files = _files(count)
    writer = NewDirWriter(target, expected=count)
    assert (writer._child is not None) == (count >= dirwriter.PROCESS_THRESHOLD)
    for name, payload in files.items():
        writer.put(name, payload)
    assert writer.close() == list(files)
    assert sorted(os.listdir(target)) == sorted(files)
    for name, payload in files.items():
        path = target / name
        assert path.read_bytes() == payload
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("count", [10, dirwriter.PROCESS_THRESHOLD + 5])
def test_a_file_already_there_is_the_error_raised(tmp_path: Path, count: int) -> None:
    target = tmp_path / "new"
    target.mkdir(mode=0o700)
    (target / "session-3.é.json").write_bytes(b"not ours")
    writer = NewDirWriter(target, expected=count)
    with pytest.raises(FileExistsError):
        for name, payload in _files(count).items():
            writer.put(name, payload)
        writer.close()
    writer.abort()  # the caller's error path after a failed put is safe
    assert (target / "session-3.é.json").read_bytes() == b"not ours"


def test_the_child_stops_when_the_directory_is_gone(tmp_path: Path) -> None:
    target = tmp_path / "gone"
    target.mkdir(mode=0o700)
    writer = NewDirWriter(target, expected=dirwriter.PROCESS_THRESHOLD)
    target.rmdir()  # the child holds it open: creating files in a removed dir fails (ENOENT)
    for name, payload in _files(dirwriter.PROCESS_THRESHOLD).items():
        writer.put(name, payload)
    with pytest.raises(OSError) as caught:
        writer.close()
    assert caught.value.errno is not None
    assert writer._child is not None and writer._child.returncode == 1


def test_abort_stops_the_child_before_returning(tmp_path: Path) -> None:
    target = tmp_path / "new"
    target.mkdir(mode=0o700)
    writer = NewDirWriter(target, expected=dirwriter.PROCESS_THRESHOLD)
    for name, payload in list(_files(dirwriter.PROCESS_THRESHOLD).items())[:3000]:
        writer.put(name, payload)
    writer.abort()
    assert writer._child is not None and writer._child.poll() is not None
    before = sorted(os.listdir(target))
    assert sorted(os.listdir(target)) == before  # nothing writes any more


def test_an_unsafe_name_is_refused_by_the_child_too(tmp_path: Path) -> None:
    target = tmp_path / "new"
    target.mkdir(mode=0o700)
    writer = NewDirWriter(target, expected=dirwriter.PROCESS_THRESHOLD)
    writer.put("../escape.json", b"{}")
    with pytest.raises(InputError, match="unsafe file name"):
        writer.close()
    assert not (tmp_path / "escape.json").exists()


@pytest.mark.parametrize("count", [10, dirwriter.PROCESS_THRESHOLD + 5])
def test_replace_writes_the_new_bytes_in_place_of_the_old(tmp_path: Path, count: int) -> None:
    target = tmp_path / "new"
    target.mkdir(mode=0o700)
    files = _files(count)
    writer = NewDirWriter(target)  # size unknown: held, then a child from the threshold on
    for name, payload in files.items():
        writer.put(name, payload)
    first = next(iter(files))
    writer.replace(first, b"the winner")
    assert writer.close() == list(files)
    assert (target / first).read_bytes() == b"the winner"
    assert stat.S_IMODE((target / first).stat().st_mode) == 0o600
    assert len(os.listdir(target)) == count
