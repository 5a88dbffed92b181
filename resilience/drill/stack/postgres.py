"""A throwaway PostgreSQL cluster from Debian's server binaries, on a loopback port.

initdb and the server refuse to run as root, so as root both run as the `postgres` user and the
data directory lives in a fresh directory under the system temp dir that this user owns (the
project tree may sit in a 0700 directory the user cannot traverse).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg

from resilience.authstate.schema import apply_schema
from resilience.backup import pitr
from resilience.errors import ConfigError, StackError
from resilience.infra.processes import PidFile, accepts_connections, spawn, stop, tail
from resilience.infra.waiting import wait_until

DATABASE = "baileys"
SERVICE_ROLE = "baileys_service"


def find_bindir() -> Path:
    """Directory holding `initdb` and `postgres` (newest Debian version first)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
        reverse=True,
    )
    found = shutil.which("postgres")
    if found:
        candidates.append(os.path.realpath(found))
    for postgres in candidates:
        bindir = Path(postgres).parent
        if (bindir / "initdb").exists():
            return bindir
    raise StackError(
        "PostgreSQL server binaries not found: run './run' (installs Debian's postgresql as root) "
        "or 'apt-get install postgresql'"
    )


def server_user() -> str | None:
    """The user the server must run as (the library's answer: `postgres` when we are root, else
    ourselves, None), its failure told with the rig's way to fix it."""
    try:
        return pitr.server_user()
    except ConfigError:
        raise StackError(
            "running as root, PostgreSQL must run as the 'postgres' user, which does not exist: "
            "'apt-get install postgresql' creates it (or 'useradd --system postgres')"
        ) from None


@dataclass
class PostgresCluster:
    """Controller for one cluster: init, start, stop (fast), kill (SIGKILL), and the DSNs."""

    stack_dir: Path
    port: int
    data_root: Path
    admin_password: str
    service_password: str
    host: str = "127.0.0.1"
    # fsync and full-page writes on: for drills that kill the server and for point-in-time
    # recovery. Off (the default) where speed matters and a crash only loses a throwaway cluster.
    durable: bool = False
    # WAL archiving (point-in-time recovery): archive_command copies each segment into this
    # spool (resilience.backup.wal), a segment switch at least every archive_timeout seconds
    archive_spool: Path | None = None
    archive_timeout: float = 60.0

    @classmethod
    def create(
        cls,
        stack_dir: Path,
        port: int,
        *,
        durable: bool = False,
        archive: bool = False,
        archive_timeout: float = 60.0,
    ) -> PostgresCluster:
        user = server_user()
        find_bindir()
        if user:
            data_root = Path(tempfile.mkdtemp(prefix="resilience-pg-"))
            info = pwd.getpwnam(user)
            os.chown(data_root, info.pw_uid, info.pw_gid)
        else:
            data_root = stack_dir / "pg"
            data_root.mkdir(parents=True, exist_ok=True)
        spool = None
        if archive:
            spool = data_root / "wal-spool"
            spool.mkdir(mode=0o700, exist_ok=True)
            if user:
                info = pwd.getpwnam(user)
                os.chown(spool, info.pw_uid, info.pw_gid)
        return cls(
            stack_dir=stack_dir,
            port=port,
            data_root=data_root,
            admin_password=secrets.token_urlsafe(18),
            service_password=secrets.token_urlsafe(18),
            durable=durable,
            archive_spool=spool,
            archive_timeout=archive_timeout,
        )

    @property
    def data_dir(self) -> Path:
        return self.data_root / "data"

    @property
    def pidfile(self) -> PidFile:
        return PidFile(self.stack_dir / "pids" / "postgres.pid")

    @property
    def log(self) -> Path:
        return self.stack_dir / "logs" / "postgres.log"

    def admin_dsn(self, database: str = DATABASE) -> str:
        return (
            f"postgresql://postgres:{self.admin_password}@{self.host}:{self.port}/{database}"
            "?sslmode=disable"
        )

    def service_dsn(self, host: str, port: int) -> str:
        return (
            f"postgresql://{SERVICE_ROLE}:{self.service_password}@{host}:{port}/{DATABASE}"
            "?sslmode=disable"
        )

    def init(self) -> None:
        """initdb with scram passwords (a wrong password fails as it would in production)."""
        user = server_user()
        pwfile = self.data_root / "pwfile"
        pwfile.write_text(self.admin_password + "\n")
        pwfile.chmod(0o600)
        if user:
            info = pwd.getpwnam(user)
            os.chown(pwfile, info.pw_uid, info.pw_gid)
        argv = [
            str(find_bindir() / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "-A",
            "scram-sha-256",
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]
        result = subprocess.run(argv, capture_output=True, text=True, user=user, check=False)
        pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise StackError(f"initdb failed: {result.stderr.strip().splitlines()[-1:]}")

    def start(self) -> None:
        if self.pidfile.read() is not None:
            return
        argv = [
            str(find_bindir() / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-k",
            str(self.data_root),
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            f"fsync={'on' if self.durable else 'off'}",
            "-c",
            f"full_page_writes={'on' if self.durable else 'off'}",
            "-c",
            "max_connections=100",
        ]
        if self.archive_spool is not None:
            from resilience.backup.wal import archive_command

            argv += ["-c", "archive_mode=on", "-c", "wal_level=replica"]
            argv += ["-c", f"archive_command={archive_command(self.archive_spool)}"]
            argv += ["-c", f"archive_timeout={max(1, round(self.archive_timeout))}s"]
        spawn(argv, pidfile=self.pidfile, log=self.log, user=server_user())

    def wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            if self.pidfile.read() is None:
                raise StackError(f"PostgreSQL exited during start: {tail(self.log)}")
            if not accepts_connections(self.port, self.host):
                return False
            with psycopg.connect(self.admin_dsn("postgres"), connect_timeout=2):
                return True

        wait_until(ready, timeout, f"PostgreSQL on {self.host}:{self.port}")

    def bootstrap(self) -> None:
        """Create the service role and database and apply the schema (docs/domain.md §2)."""
        with psycopg.connect(self.admin_dsn("postgres"), autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    psycopg.sql.Identifier(SERVICE_ROLE),
                    psycopg.sql.Literal(self.service_password),
                )
            )
            conn.execute(
                psycopg.sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    psycopg.sql.Identifier(DATABASE), psycopg.sql.Identifier(SERVICE_ROLE)
                )
            )
        with psycopg.connect(self.admin_dsn()) as conn:
            apply_schema(conn, owner=SERVICE_ROLE)

    def stop(self) -> bool:
        """Fast shutdown (SIGINT): clients are disconnected, data is flushed."""
        return stop(self.pidfile, sig=signal.SIGINT, timeout=20)

    def kill(self) -> bool:
        """Crash the server: SIGKILL to the postmaster and its backends."""
        return stop(self.pidfile, sig=signal.SIGKILL, timeout=10)

    def running(self) -> bool:
        return self.pidfile.read() is not None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data_root, ignore_errors=True)
