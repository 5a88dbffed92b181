"""Detached local processes with pid files: start, poll for readiness, stop, and clean up leftovers.

Pid files hold the pid and the process start time from /proc, so a stale file never makes us
signal an unrelated process that reused the pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from resilience.errors import StackError
from resilience.infra.fsutil import atomic_write
from resilience.infra.waiting import wait_until

#: Where listening ports are picked: below the kernel's ephemeral range, so that no outgoing
#: connection takes a port a listener must bind again (Toxiproxy re-listens on a proxy's port
#: when it is enabled after a fault; a connection that took the port meanwhile made it fail).
LISTEN_PORTS_FROM = 20000
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_low() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, outside the ephemeral range when there is room below
    it (else the kernel picks one); the caller binds it soon after."""
    high = _ephemeral_low() - 1
    if high - LISTEN_PORTS_FROM >= 1000:
        for port in random.sample(range(LISTEN_PORTS_FROM, high + 1), 64):
            if not port_in_use(port, host):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def choose_port(configured: int, setting: str, host: str = "127.0.0.1") -> int:
    """`configured` if free (0 picks a free one); a taken port is an error naming the setting."""
    if configured == 0:
        return free_port(host)
    if port_in_use(configured, host):
        raise StackError(
            f"port {configured} on {host} is already in use: stop what listens there "
            f"(ss -ltnp 'sport = :{configured}') or set {setting}=0 to pick a free port"
        )
    return configured


def accepts_connections(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # field 22 (starttime); the command name in field 2 may contain spaces, so split after ')'
    return stat.rsplit(")", 1)[1].split()[19]


@dataclass(frozen=True)
class PidFile:
    path: Path

    def write(self, pid: int) -> None:
        record = json.dumps({"pid": pid, "start": _start_time(pid)}).encode()
        atomic_write(self.path, record, mode=0o644)

    def read(self) -> int | None:
        """The pid if that very process is still alive, else None."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        pid = int(data["pid"])
        start = _start_time(pid)
        if start is None or start != data.get("start"):
            return None
        if Path(f"/proc/{pid}/status").read_text().find("State:\tZ") >= 0:
            return None
        return pid

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def spawn(
    argv: Sequence[str],
    *,
    pidfile: PidFile,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> int:
    """Start `argv` detached in its own session, output appended to `log`; record its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                user=user,
            )
        except OSError as exc:
            raise StackError(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
    pidfile.write(proc.pid)
    return proc.pid


def stop(pidfile: PidFile, *, sig: int = signal.SIGTERM, timeout: float = 10.0) -> bool:
    """Signal the process group, wait for it to go, SIGKILL after `timeout`. True if it ran."""
    pid = pidfile.read()
    if pid is None:
        pidfile.remove()
        return False
    _signal_group(pid, sig)

    def gone() -> bool:
        _reap(pid)
        return pidfile.read() is None

    try:
        wait_until(gone, timeout, f"exit of process {pid}")
    except StackError:
        _signal_group(pid, signal.SIGKILL)
        wait_until(gone, 5.0, f"exit of process {pid} after SIGKILL")
    pidfile.remove()
    return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(os.getpgid(pid), sig)
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(pid, sig)


def _reap(pid: int) -> None:
    """Collect a child we started ourselves so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def tail(log: Path, lines: int = 5) -> str:
    """The last lines of a log, for error messages (logs hold no secrets of ours)."""
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])
