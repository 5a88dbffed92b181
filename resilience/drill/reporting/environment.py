"""Where a drill ran: Python, the OS, the backend, the PostgreSQL server, the git commit.

Everything here is best effort: a fact that cannot be read is ``unknown``, never an error (a
report must still be written). Values are redacted by the report before they are written.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import psycopg

from resilience.errors import ResilienceError
from resilience.service import gitref

UNKNOWN = "unknown"
#: Seconds allowed to connect when asking the server its version.
PROBE_TIMEOUT = 3
#: The project's work tree (the reports describe this code).
PROJECT = Path(__file__).resolve().parents[3]


def collect(*, backend: str | None = None, postgresql: str | None = None,
            repo: Path | None = PROJECT) -> dict[str, str]:  # fmt: skip
    """The environment table of a report, in the order it is shown."""
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": operating_system(),
        "backend": backend or os.environ.get("RESILIENCE_BACKEND") or "local",
        "postgresql": postgresql or UNKNOWN,
        "git commit": git_commit(repo) if repo is not None else UNKNOWN,
    }


def operating_system() -> str:
    kernel = f"{platform.system()} {platform.release()} {platform.machine()}".strip()
    try:
        pretty = platform.freedesktop_os_release().get("PRETTY_NAME", "")
    except OSError:
        pretty = ""
    return f"{pretty} ({kernel})" if pretty else kernel


def git_commit(repo: Path) -> str:
    """``<sha> (<branch>)``, with the count of changed tracked files when the tree is dirty."""
    try:
        commit = gitref.head_commit(repo)
        ref = gitref.current_ref(repo)
        dirty = gitref.is_dirty(repo)
    except (ResilienceError, OSError):
        return UNKNOWN
    shown = commit[:12] + (f" ({ref})" if ref != commit else "")
    return shown + (f", {len(dirty)} changed file(s) not committed" if dirty else "")


def postgres_version(dsn: str) -> str | None:
    """The server's version (``SHOW server_version``) or None when it cannot be reached."""
    try:
        with psycopg.connect(dsn, connect_timeout=PROBE_TIMEOUT, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except (psycopg.Error, OSError):
        return None
    return f"PostgreSQL {row[0]}" if row else None


def is_postgres_dsn(value: str) -> bool:
    return value.startswith(("postgresql://", "postgres://"))
