"""What the receivers record: one list per kind, mirrored line by line to `<dir>/<kind>.jsonl`.

Drills read the recordings over HTTP, operators read the files; both must agree and neither may
hold a secret. So every record goes through the project's one `Redactor` before it is stored,
and is marked `"redacted": true` when the redactor changed anything (a sender leaked a secret).
A restarted receiver reloads the files, so numbering and history survive a restart.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

from resilience.errors import StackError
from resilience.infra.redact import Redactor

_log = logging.getLogger(__name__)

Kind = Literal["sentry", "telegram"]
KINDS: tuple[Kind, ...] = ("sentry", "telegram")


class Recorder:
    """Thread-safe lists of records per kind, mirrored to `<dir>/<kind>.jsonl` line by line."""

    def __init__(self, record_dir: Path, redactor: Redactor) -> None:
        self.record_dir = Path(record_dir)
        self.redactor = redactor
        self._lock = threading.Lock()
        self._records: dict[Kind, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
        self._seq = 0
        try:
            self.record_dir.mkdir(parents=True, exist_ok=True)
            for kind in KINDS:
                self._load(kind)
            self._files: dict[Kind, IO[str]] = {
                kind: self.path(kind).open("a", encoding="utf-8") for kind in KINDS
            }
        except OSError as exc:
            raise StackError(
                f"receivers cannot write recordings in {self.record_dir}: {exc.strerror}"
            ) from None

    def path(self, kind: Kind) -> Path:
        return self.record_dir / f"{kind}.jsonl"

    def _load(self, kind: Kind) -> None:
        path = self.path(kind)
        if not path.exists():
            return
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                record = json.loads(line)
            except ValueError:
                _log.warning("skipping unreadable line %d of %s", number, path)
                continue
            if isinstance(record, dict):
                self._records[kind].append(record)
                seq = record.get("seq")
                if isinstance(seq, int):
                    self._seq = max(self._seq, seq)

    def add(self, kind: Kind, record: Mapping[str, Any]) -> dict[str, Any]:
        """Redact, number, timestamp and store one record; return what was stored."""
        original = dict(record)
        clean: dict[str, Any] = self.redactor.data(original)
        with self._lock:
            self._seq += 1
            stored = {
                "seq": self._seq,
                "received_at": datetime.now(UTC).isoformat(),
                **clean,
                "redacted": clean != original,
            }
            handle = self._files[kind]
            handle.write(json.dumps(stored, ensure_ascii=False) + "\n")
            handle.flush()
            self._records[kind].append(stored)
        return stored

    def list(self, kind: Kind) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._records[kind]]

    def clear(self) -> None:
        """Forget every record of both kinds, files included (numbering goes on)."""
        with self._lock:
            for kind in KINDS:
                self._records[kind].clear()
                self._files[kind].seek(0)
                self._files[kind].truncate()
                self._files[kind].flush()

    def close(self) -> None:
        with self._lock:
            for handle in self._files.values():
                handle.close()
