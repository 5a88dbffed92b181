"""The stand-in's write log (acknowledged key writes): ``writes.jsonl`` in its working directory.

One JSON object per line and per key write, appended only after the backend acknowledged the
write, then flushed and fsynced, so a drill can count exactly what the service was told was
stored. Sequence numbers continue across restarts. Values never appear, only their
:class:`~resilience.authstate.fingerprint.KeyFingerprint`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from resilience.authstate.fingerprint import KeyFingerprint
from resilience.drill.standin.traffic import KeyWrite
from resilience.errors import DataError

WRITELOG_FILE = "writes.jsonl"
_TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class WriteEntry:
    """One acknowledged key write. ``fingerprint`` is ``None`` for a deletion."""

    seq: int
    time: str
    mode: str
    company: str
    type: str
    id: str
    deleted: bool
    fingerprint: str | None
    pid: int
    # how long the write took, from the start of its batch to the database's (or the file
    # system's) answer; None in logs written before it was recorded
    latency_ms: float | None = None

    @classmethod
    def from_json(cls, data: object) -> WriteEntry:
        if not isinstance(data, dict):
            raise DataError("journal line is not a JSON object")
        try:
            return cls(
                seq=int(data["seq"]),
                time=str(data["time"]),
                mode=str(data["mode"]),
                company=str(data["company"]),
                type=str(data["type"]),
                id=str(data["id"]),
                deleted=bool(data["deleted"]),
                fingerprint=None if data["fingerprint"] is None else str(data["fingerprint"]),
                pid=int(data["pid"]),
                latency_ms=None if data.get("latency_ms") is None else float(data["latency_ms"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"journal line is malformed: {exc}") from None


def _parse_lines(raw: bytes, where: Path) -> Iterator[WriteEntry]:
    lines = raw.split(b"\n")
    # The last element is b"" after a complete line, or a torn line (a crash mid-append; the
    # journal cuts it when it is opened again): never an acknowledged entry.
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError:
            raise DataError(f"{where}: line {number} is not JSON") from None
        yield WriteEntry.from_json(data)


def read_writelog(path: Path) -> list[WriteEntry]:
    """Every complete entry of a journal file (a torn last line is ignored); ``[]`` if absent."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    return list(_parse_lines(raw, Path(path)))


def last_seq(path: Path) -> int:
    """Sequence number of the last complete entry, 0 for an empty or absent journal."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(0, size - _TAIL_BYTES)
            handle.seek(start)
            tail = handle.read()
    except FileNotFoundError:
        return 0
    if start > 0:  # drop the (probably partial) first line of the tail
        tail = tail[tail.find(b"\n") + 1 :]
    entries = list(_parse_lines(tail, Path(path)))
    if entries:
        return entries[-1].seq
    if start > 0:
        return max((e.seq for e in read_writelog(path)), default=0)
    return 0


def _drop_torn_tail(path: Path) -> None:
    """Cut a torn last line (a crash during an append: never an acknowledged entry)."""
    if not path.exists():
        return
    with open(path, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - _TAIL_BYTES)
            handle.seek(start)
            chunk = handle.read(end - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end != size:
            handle.truncate(end)
            os.fsync(handle.fileno())


class WriteLog:
    """Append-only, fsynced log of acknowledged writes; thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock = threading.Lock()
        _drop_torn_tail(self.path)
        self.seq = last_seq(self.path)
        self._fd: int | None = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
        )

    def append(
        self,
        writes: Sequence[KeyWrite],
        *,
        mode: str,
        company: str,
        at: datetime,
        latency_ms: float | None = None,
    ) -> list[WriteEntry]:
        """Journal acknowledged writes in one write + fsync; returns the entries."""
        with self.lock:
            if self._fd is None:
                raise DataError(f"journal {self.path} is closed")
            entries: list[WriteEntry] = []
            stamp = at.isoformat(timespec="milliseconds")
            for write in writes:
                self.seq += 1
                entries.append(
                    WriteEntry(
                        seq=self.seq,
                        time=stamp,
                        mode=mode,
                        company=company,
                        type=write.key_type,
                        id=write.key_id,
                        deleted=write.deleted,
                        fingerprint=None
                        if write.deleted
                        else KeyFingerprint.of(write.key_type, write.key_id, write.value),
                        pid=os.getpid(),
                        latency_ms=None if latency_ms is None else round(latency_ms, 3),
                    )
                )
            payload = b"".join(
                json.dumps(asdict(e), separators=(",", ":")).encode("utf-8") + b"\n"
                for e in entries
            )
            view = memoryview(payload)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
            return entries

    def close(self) -> None:
        with self.lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
