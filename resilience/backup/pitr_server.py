"""The cluster `backup.pitr` restores, as a server: the user it runs as (PostgreSQL refuses
root), the binaries that user can run, starting it with its log in its own directory, what it
holds (every company's key count and digest), and stopping it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from resilience.authstate.pgconn import connect
from resilience.authstate.pgstore import PgAuthStore
from resilience.authstate.view import view_of
from resilience.backup.barman import find_command
from resilience.config import Settings
from resilience.errors import ConfigError, StackError

LOG_NAME = "pitr-server.log"


def server_user() -> str | None:
    """`postgres` when we are root (PostgreSQL refuses root), else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ConfigError(
            "running as root, restored clusters run as 'postgres', which does not exist"
        ) from None
    return "postgres"


def find_pg_ctl(settings: Settings) -> str:
    if settings.pg_bindir is not None:
        candidates = [str(settings.pg_bindir / "pg_ctl")]
    else:
        candidates = sorted(
            glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
            key=lambda p: (
                int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
            ),
            reverse=True,
        )
    candidates += [p for p in [shutil.which("pg_ctl")] if p]
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    raise ConfigError(
        "pg_ctl not found: install PostgreSQL's server binaries or set RESILIENCE_PG_BINDIR"
    )


def wal_restore_command(settings: Settings, user: str | None) -> str:
    """barman-cloud-wal-restore as the server's user can run it (ConfigError otherwise)."""
    bindir = settings.barman_server_bin_dir
    candidate = (
        bindir if bindir.is_absolute() else Path.cwd() / bindir
    ) / "barman-cloud-wal-restore"
    path = (
        str(candidate) if candidate.exists() else find_command("barman-cloud-wal-restore", settings)
    )
    try:
        done = subprocess.run(
            [path, "--version"],
            user=user,
            capture_output=True,
            timeout=60,
            check=False,
            env={"PATH": "/usr/bin:/bin", "HOME": server_home(user)},
            cwd="/",
        )
        ok = done.returncode == 0
    except OSError:
        ok = False
    if not ok:
        raise ConfigError(
            f"barman-cloud-wal-restore ({path}) cannot be run by the server's user "
            f"{user or '(ourselves)'}: set RESILIENCE_BARMAN_SERVER_BIN_DIR to an install it can "
            "run (./run makes one in .tools/barman)"
        )
    return path


def server_home(user: str | None) -> str:
    if user is None:
        return os.environ.get("HOME", "/")
    return pwd.getpwnam(user).pw_dir


def _service_parts(settings: Settings) -> dict[str, Any]:
    if settings.service_dsn is None:
        raise ConfigError("verifying a restored cluster needs RESILIENCE_SERVICE_DSN")
    return conninfo_to_dict(settings.service_dsn.get_secret_value())


def restored_dsn(settings: Settings, port: int) -> str:
    """The service's role and database, on the restored cluster's port."""
    parts = _service_parts(settings)
    parts.update(host="127.0.0.1", port=str(port))
    parts.pop("hostaddr", None)
    return make_conninfo(**parts)


def start_server(
    pg_ctl: str, target: Path, user: str | None, environment: dict[str, str]
) -> subprocess.Popen[bytes]:
    """`postgres -D target` as `user` (None: ourselves), its output in the target's
    :data:`LOG_NAME`; StackError when it cannot be started."""
    env = {**environment, "HOME": server_home(user), "PGDATA": str(target)}
    postgres = str(Path(pg_ctl).parent / "postgres")
    with open(target / LOG_NAME, "ab") as log:
        try:
            return subprocess.Popen(
                [postgres, "-D", str(target)],
                user=user,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd="/",
            )
        except OSError as exc:
            raise StackError(f"cannot start the restored cluster: {exc.strerror or exc}") from None


def log_tail(target: Path, lines: int = 3) -> str:
    """The restored cluster's last FATAL or PANIC lines (else its last lines), for an error."""
    try:
        text = (target / LOG_NAME).read_text(errors="replace").splitlines()
    except OSError:
        return "(no server log)"
    fatal = [line for line in text if "FATAL" in line or "PANIC" in line]
    return " | ".join((fatal or text)[-lines:])[:500]


def company_digests(dsn: str, timeout: float) -> dict[str, dict[str, Any]]:
    """Every company's key count and set digest, as the restored cluster holds them."""
    out: dict[str, dict[str, Any]] = {}
    with connect(dsn, timeout=timeout) as conn:
        store = PgAuthStore(conn)
        for company in store.companies():
            view = view_of(company, store.load_creds(company), store.records(company))
            digest = view.digest()
            out[company] = {"keys": digest.key_count, "digest": digest.digest}
    return out


def stop_restored(settings: Settings, target: Path) -> bool:
    """Stop a restored cluster (fast shutdown); True when one was running."""
    user = server_user()
    done = subprocess.run(
        [find_pg_ctl(settings), "-D", str(target), "-m", "fast", "-w", "-t", "60", "stop"],
        user=user,
        capture_output=True,
        check=False,
        cwd="/",
    )
    return done.returncode == 0
