"""A record of every operator run: its journal as JSON and as one HTML page, under the runs dir.

`RESILIENCE_RUNS_DIR` (default `runs/` in the working directory) gets one directory per run,
named `<UTC time>-<command>[-<company>]-<short id>`, mode 0700, holding `journal.json` and
`journal.html`, both 0600 and redacted (every secret of the settings is registered). A failed,
refused or undone run is recorded too; the error carries the record's path so the task can show
it. A record that cannot be written never hides the run's own outcome: the run's result (or
error) stands and `record_error` says why there is no record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from resilience.config import Settings
from resilience.errors import ResilienceError
from resilience.infra.fsutil import atomic_write
from resilience.runs.html import render_html
from resilience.runs.journal import Journal

log = logging.getLogger(__name__)

JOURNAL_JSON = "journal.json"
JOURNAL_HTML = "journal.html"


@dataclass
class RunRecord:
    """One run being recorded: fill :attr:`journal`; :attr:`path` is set once written."""

    journal: Journal
    runs_dir: Path
    command: str
    company_id: str | None = None
    path: Path | None = None
    record_error: str | None = None

    def _name(self) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        parts = [stamp, self.command.replace(".", "-").replace(" ", "-")]
        if self.company_id:
            parts.append(self.company_id)
        parts.append(secrets.token_hex(3))
        return "-".join(parts)

    def write(self) -> Path | None:
        try:
            self.runs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory = self.runs_dir / self._name()
            directory.mkdir(mode=0o700)
            os.chmod(directory, 0o700)
            data = self.journal.to_dict()
            text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
            atomic_write(directory / JOURNAL_JSON, text.encode("utf-8"), mode=0o600)
            atomic_write(directory / JOURNAL_HTML, render_html(data).encode("utf-8"), mode=0o600)
        except OSError as exc:
            self.record_error = f"cannot write the run record in {self.runs_dir}: {exc.strerror}"
            log.warning("%s", self.record_error)
            return None
        self.path = directory
        return directory


@contextlib.contextmanager
def recorded_run(
    settings: Settings, command: str, company_id: str | None = None
) -> Iterator[RunRecord]:
    """Journal the body as one run of `command` and write the record at the end, whatever the
    outcome. A :class:`ResilienceError` leaving the body gets the record's path as `record`."""
    journal = Journal(command if company_id is None else f"{command} {company_id}")
    for secret in settings.secret_values():
        journal.register_secret(secret)
    journal.start()
    record = RunRecord(journal, settings.runs_dir.absolute(), command, company_id)
    try:
        yield record
    except BaseException as exc:
        journal.event("failure", str(exc) or type(exc).__name__, error=type(exc).__name__)
        journal.finish("aborted" if isinstance(exc, KeyboardInterrupt) else "failed", deviated=True)
        if record.write() is not None and isinstance(exc, ResilienceError):
            exc.record = record.path
        raise
    journal.finish("completed", deviated=False)
    record.write()
