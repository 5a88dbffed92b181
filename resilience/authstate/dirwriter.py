"""Filling a new, empty directory with files, overlapped with the caller's encoding.

An export of 100k keys spends about as long creating files (system calls, kernel time) as
encoding them (Python). :class:`NewDirWriter` takes ``(name, bytes)`` pairs as they are encoded
and, for a large directory, hands them through a pipe to a child Python process that creates the
files while the caller encodes the next ones: two processes, two cores, no GIL between them (a
writer thread in the same process waited for the GIL after every system call, and lowering the
interpreter's switch interval to feed it changed the whole process). A small directory is
written by the caller itself: starting a process costs more than a thousand small files.

Every file is created under its own name (``O_EXCL``, ``O_NOFOLLOW``), mode 0600, not fsynced
(the caller makes the directory durable once, see
:func:`~resilience.authstate.filestore.make_durable`), and read back through its own descriptor
before it is closed. :meth:`NewDirWriter.close` raises the first error (an :class:`OSError` as
the system gave it) or :class:`~resilience.errors.VerificationError` when a file did not read
back as written; :meth:`NewDirWriter.abort` stops the child on the caller's own error, so that
error is the one raised. Hand-written: no library overlaps file creation with encoding.

The pipe carries frames ``<name length u32><payload length u32><flags u8><name><payload>``
(flag 1: replace a file put before); the child
answers one JSON line: ``{"written": n, "differ": [...]}`` or ``{"error": {...}}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from resilience.authstate import filestore
from resilience.errors import InputError, VerificationError

#: Directories of at least this many files are written by a child process.
PROCESS_THRESHOLD = 4096
_HEADER = struct.Struct("<IIB")  # name length, payload length, flags
_REPLACE = 1  # flag: the file exists (put before): write these bytes instead
#: Bytes gathered before one write to the pipe.
_CHUNK = 1 << 18
#: The pipe's capacity asked of Linux (F_SETPIPE_SZ), so the encoder rarely waits on the child.
_PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ = 1031


class NewDirWriter:
    """Create files in ``directory`` (new and empty, nobody reads it yet); see the module text.

    :meth:`put` each file (:meth:`replace` one put before, with other bytes), then
    :meth:`close` (the names written, in put order) or, on the caller's own error,
    :meth:`abort`. ``expected``, when known, is about how many files will be put: from
    :data:`PROCESS_THRESHOLD` on, a child process writes them from the first; otherwise the
    files are held until that many have been put (then a child takes them and the rest) or
    until :meth:`close`, which writes them itself."""

    def __init__(self, directory: Path, *, expected: int | None = None) -> None:
        self.directory = Path(directory)
        self._names: list[str] = []
        self._held: dict[str, bytes] = {}  # not handed to a child (yet)
        self._child: subprocess.Popen[bytes] | None = None
        self._pending = bytearray()
        self._closed = False
        if expected is not None and expected >= PROCESS_THRESHOLD:
            self._child = _start_child(self.directory)

    def put(self, name: str, payload: bytes) -> None:
        self._names.append(name)
        self._send(name, payload, replace=False)

    def replace(self, name: str, payload: bytes) -> None:
        """Write ``payload`` instead of what was put under ``name`` before."""
        self._send(name, payload, replace=True)

    def _send(self, name: str, payload: bytes, *, replace: bool) -> None:
        if self._closed:
            raise RuntimeError("NewDirWriter used after close")
        if self._child is None:
            self._held[name] = payload
            if len(self._held) >= PROCESS_THRESHOLD:
                self._child = _start_child(self.directory)
                held, self._held = self._held, {}
                for held_name, held_payload in held.items():
                    self._frame(held_name, held_payload, replace=False)
            return
        self._frame(name, payload, replace=replace)

    def _frame(self, name: str, payload: bytes, *, replace: bool) -> None:
        raw = os.fsencode(name)
        self._pending += _HEADER.pack(len(raw), len(payload), _REPLACE if replace else 0)
        self._pending += raw
        self._pending += payload
        if len(self._pending) >= _CHUNK:
            self._flush()

    def _flush(self) -> None:
        child = self._child
        assert child is not None and child.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # the child stopped: close() says why
            child.stdin.write(self._pending)
        self._pending.clear()

    def close(self) -> list[str]:
        """Wait for every file; raise the first error, or :class:`VerificationError` when a file
        does not read back as written; else the names written, in order."""
        if self._closed:
            raise RuntimeError("NewDirWriter closed twice")
        self._closed = True
        if self._child is None:
            differ = _write_here(self.directory, self._held)
        else:
            differ = _finish_child(self._child, self._pending, self.directory)
        if differ:
            raise VerificationError(
                f"{self.directory} does not read back as written: {len(differ)} file(s) differ"
            )
        return self._names

    def abort(self) -> None:
        """Stop writing (the caller failed): the child is killed and waited for, so nothing
        writes into the directory once this returns."""
        if self._closed:
            return
        self._closed = True
        self._held.clear()
        if self._child is None:
            return
        self._child.kill()
        with contextlib.suppress(OSError):
            assert self._child.stdin is not None
            self._child.stdin.close()
        self._child.wait()
        if self._child.stdout is not None:
            self._child.stdout.close()


def _write_here(directory: Path, files: dict[str, bytes]) -> list[str]:
    """Create ``files`` in ``directory`` from this process; the names that did not read back."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return [
            name
            for name, data in files.items()
            if not filestore.create_file(dir_fd, name, data, read_back=True)
        ]
    finally:
        os.close(dir_fd)


def _start_child(directory: Path) -> subprocess.Popen[bytes]:
    # the package's own parent first on the path: the child imports this very code
    package_parent = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    # the directory is opened here and its descriptor handed down: the child writes into the
    # very directory the caller made, whatever happens to its path meanwhile
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "resilience.authstate.dirwriter", str(dir_fd)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            pass_fds=(dir_fd,),
            env=env,
        )
    finally:
        os.close(dir_fd)
    assert child.stdin is not None
    with contextlib.suppress(OSError):  # Linux only; a smaller pipe only means more waits
        import fcntl

        fcntl.fcntl(child.stdin.fileno(), _F_SETPIPE_SZ, _PIPE_BYTES)
    return child


def _finish_child(child: subprocess.Popen[bytes], pending: bytearray, directory: Path) -> list[str]:
    """Send what is left, end the stream, and read the child's answer: the names that did not
    read back as written; raises the child's error."""
    assert child.stdin is not None and child.stdout is not None
    with contextlib.suppress(BrokenPipeError):  # the child stopped: its answer says why
        if pending:
            child.stdin.write(pending)
    with contextlib.suppress(BrokenPipeError):
        child.stdin.close()
    answer = child.stdout.read()
    child.stdout.close()
    code = child.wait()
    try:
        report: dict[str, Any] = json.loads(answer.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise OSError(f"the writer process for {directory} ended with code {code}") from None
    error = report.get("error")
    if isinstance(error, dict):
        if error.get("kind") == "InputError":
            raise InputError(str(error.get("message")))
        raise OSError(error.get("errno"), error.get("strerror"), error.get("name"))
    differ = report.get("differ")
    return [str(name) for name in differ] if isinstance(differ, list) else []


# --- the child ----------------------------------------------------------------------------


def _read_exact(stream: IO[bytes], size: int) -> bytes | None:
    data = stream.read(size)
    if len(data) == size:
        return data
    if not data:
        return None
    raise EOFError("the stream ended inside a frame")


def _serve(dir_fd: int, stream: IO[bytes]) -> dict[str, Any]:
    """Create a file per frame of ``stream`` in the directory open as ``dir_fd``; what the
    parent is told."""
    written = 0
    differ: list[str] = []
    name = ""
    try:
        while (header := _read_exact(stream, _HEADER.size)) is not None:
            name_len, payload_len, flags = _HEADER.unpack(header)
            body = _read_exact(stream, name_len + payload_len)
            if body is None:
                raise EOFError("the stream ended inside a frame")
            name = os.fsdecode(body[:name_len])
            if flags & _REPLACE:
                filestore.check_entry_name(name)
                os.unlink(name, dir_fd=dir_fd)
                written -= 1
            if not filestore.create_file(dir_fd, name, body[name_len:], read_back=True):
                differ.append(name)
            written += 1
    except OSError as exc:
        return {"error": {"errno": exc.errno, "strerror": exc.strerror, "name": name}}
    except InputError as exc:
        return {"error": {"kind": "InputError", "message": str(exc)}}
    except EOFError as exc:
        return {"error": {"errno": None, "strerror": str(exc), "name": name}}
    finally:
        os.close(dir_fd)
    return {"written": written, "differ": differ}


def main(argv: list[str]) -> int:
    stream = open(sys.stdin.fileno(), "rb", buffering=_CHUNK, closefd=False)  # noqa: SIM115
    report = _serve(int(argv[0]), stream)
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    return 1 if "error" in report else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
