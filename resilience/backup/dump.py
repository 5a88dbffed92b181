"""pg_dump and pg_restore, as the backups use them.

Before a dump the client's major version must be at least the server's: an older pg_dump once
produced near-empty files that were reported as success (docs/domain.md §9). No password goes on
a command line (`ps` shows those): it travels in `PGPASSWORD`. A dump runs inside a snapshot we
export (`pg_dump --snapshot`), so the row counts and key digests we record describe exactly the
rows in the file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from resilience.authstate.schema import TABLES
from resilience.errors import ConfigError, DataError, ResilienceError
from resilience.infra.redact import Redactor

#: The auth tables (docs/domain.md §2); a setting may ask for the whole database instead.
AUTH_TABLES = TABLES
_VERSION_RE = re.compile(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?")


def find_tool(name: str) -> Path:
    """The newest PostgreSQL installation's `name` (Debian keeps them in /usr/lib/postgresql/N),
    else `name` on PATH."""
    installs = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if installs:
        return installs[-1]
    found = shutil.which(name)
    if found is None:
        raise ConfigError(
            f"{name} not found: install PostgreSQL's client (apt-get install postgresql-client)"
        )
    return Path(found)


def tool_major(tool: Path) -> int:
    done = subprocess.run([str(tool), "--version"], capture_output=True, text=True, check=False)
    match = _VERSION_RE.search(done.stdout)
    if done.returncode != 0 or match is None:
        raise ConfigError(f"cannot tell the version of {tool}: {done.stdout.strip()[:80]}")
    return int(match.group(1))


def check_client_version(client_major: int, server_major: int, tool: Path) -> None:
    if client_major < server_major:
        raise ConfigError(
            f"{tool} is PostgreSQL {client_major}, older than the server ({server_major}): an "
            f"older pg_dump writes near-empty dumps; install postgresql-client-{server_major}"
        )


def _connection(dsn: str) -> tuple[str, dict[str, str]]:
    """(conninfo without the password, environment carrying it) for a libpq tool."""
    params = conninfo_to_dict(dsn)
    password = params.pop("password", None)
    env = dict(os.environ)
    if password:
        env["PGPASSWORD"] = str(password)
    return make_conninfo(**{k: str(v) for k, v in params.items()}), env


def _run(argv: Sequence[str], dsn: str, what: str) -> subprocess.CompletedProcess[str]:
    conninfo, env = _connection(dsn)
    argv = [a if a != "{conninfo}" else conninfo for a in argv]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        reason = Redactor([dsn]).text(
            (done.stderr or done.stdout).strip().splitlines()[-1:][0]
            if (done.stderr or done.stdout).strip()
            else "no output"
        )
        raise ResilienceError(f"{what} failed: {reason}")
    return done


def dump(
    dsn: str, path: Path, *, snapshot: str | None = None, tables: Sequence[str] | None = AUTH_TABLES
) -> None:
    """`pg_dump -Fc` of `tables` (all when None) into `path`, inside `snapshot` when given."""
    argv = [str(find_tool("pg_dump")), "-Fc", "--no-owner", "--no-privileges", "-f", str(path)]
    if snapshot:
        argv += ["--snapshot", snapshot]
    for table in tables or ():
        argv += ["-t", table]
    argv += ["-d", "{conninfo}"]
    try:
        _run(argv, dsn, "pg_dump")
    except ResilienceError:
        path.unlink(missing_ok=True)
        raise


def archive_list(path: Path) -> list[str]:
    """`pg_restore --list` of a dump: its table of contents, or DataError when unreadable."""
    done = subprocess.run(
        [str(find_tool("pg_restore")), "--list", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise DataError(
            f"{path.name} is not a readable pg_dump archive: {done.stderr.strip()[:200]}"
        )
    return [line for line in done.stdout.splitlines() if line and not line.startswith(";")]


def check_archive(path: Path, tables: Sequence[str] = AUTH_TABLES) -> list[str]:
    """The archive lists a table and its data for each of `tables` (DataError otherwise)."""
    entries = archive_list(path)
    missing = [
        t
        for t in tables
        if not any(re.search(rf"\bTABLE DATA \S+ {re.escape(t)}\b", e) for e in entries)
        or not any(re.search(rf"\bTABLE \S+ {re.escape(t)}\b", e) for e in entries)
    ]
    if missing:
        raise DataError(f"{path.name} holds no table or data for {', '.join(missing)}")
    return entries


def restore(dsn: str, path: Path) -> None:
    """`pg_restore` the archive into the database of `dsn`, in one transaction. The auth
    tables' trigger function is created first (a `-t` dump does not hold it)."""
    from resilience.authstate.pgconn import connect, database_errors
    from resilience.authstate.schema import trigger_function_sql

    with connect(dsn) as conn, database_errors("creating the trigger function"):
        conn.execute(trigger_function_sql().encode())
        if any(" TRIGGER " in e and " whatsapp_mirror_" in e for e in archive_list(path)):
            from resilience.mirror.feed import objects_sql  # the mirror's feed was dumped

            conn.execute(objects_sql().encode())
        conn.commit()
    argv = [
        str(find_tool("pg_restore")), "--no-owner", "--no-privileges", "--single-transaction",
        "--exit-on-error", "-d", "{conninfo}", str(path),
    ]  # fmt: skip
    _run(argv, dsn, "pg_restore")
