"""The Docker engine of the docker backend: the one that already runs, or our own `dockerd`.

An engine that answers (`DOCKER_HOST`, else the default socket) is used as it is and never
stopped by us. Where none answers, and only when the docker backend is asked for, we start our
own: data root `<tools>/docker/data` (so images built once stay cached), a short exec root under
`/run`, its socket `<tools>/docker/docker.sock`, and `--bridge=none --iptables=false
--ip-forward=false`, so it creates no bridge, adds no firewall rule and leaves no interface:
containers run with host networking. The stack that started it stops it (by pid) and unmounts
what it leaves under its roots; a later stack adopts an engine whose owner is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resilience.errors import StackError
from resilience.infra.fsutil import atomic_write
from resilience.infra.processes import PidFile, spawn, stop, tail
from resilience.infra.waiting import wait_until

DEFAULT_SOCKET = Path("/var/run/docker.sock")
ENGINE_START_TIMEOUT = 60.0
DAEMON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class EngineUnavailable(StackError):
    """No engine answers and none can be started here, or the engine refuses to run
    containers: the docker backend cannot run on this machine (tests skip with the reason)."""


@dataclass(frozen=True)
class Engine:
    """An engine that answers: its `DOCKER_HOST` URL, and whether we started it."""

    host: str
    ours: bool


def docker_sdk(module: str = "docker") -> Any:
    """docker-py (imported by name: the repository's `docker/` directory shadows it for mypy)."""
    return importlib.import_module(module)


def client(host: str, timeout: float = 60.0) -> Any:
    """A docker-py client of the engine at `host`."""
    return docker_sdk().DockerClient(base_url=host, timeout=timeout)


def answers(host: str) -> str | None:
    """None when the engine at `host` answers a ping, else why not (one line)."""
    try:
        c = client(host, timeout=3.0)
        try:
            c.ping()
        finally:
            c.close()
    except Exception as exc:  # docker-py wraps socket errors in several classes
        detail = str(exc).splitlines()[0][:160] if str(exc) else ""
        return f"{type(exc).__name__}: {detail}".rstrip(": ")
    return None


def install_hint() -> str:
    if shutil.which("apt-get"):
        return "run './run' as root (it installs Debian's docker.io) or 'apt-get install docker.io'"
    return (
        "install Docker Engine (https://docs.docker.com/engine/install/) and start it, "
        "or set DOCKER_HOST to an engine that runs"
    )


class OwnEngine:
    """Our own dockerd under `<tools_dir>/docker`."""

    def __init__(self, tools_dir: Path) -> None:
        self.dir = tools_dir.resolve() / "docker"
        self.data_root = self.dir / "data"
        self.socket = self.dir / "docker.sock"
        self.host = f"unix://{self.socket}"
        tag = hashlib.sha256(str(self.dir).encode()).hexdigest()[:10]
        # short: containerd's sockets live under it and unix socket paths are limited to 108
        self.exec_root = Path(f"/run/resilience-docker-{tag}")
        self.pidfile = PidFile(self.dir / "dockerd.pid")
        self.log = self.dir / "dockerd.log"
        self.owner_file = self.dir / "owner.json"

    # --- who started it ---------------------------------------------------------------------
    def owner(self) -> str | None:
        try:
            data = json.loads(self.owner_file.read_text())
        except (OSError, ValueError):
            return None
        value = data.get("owner")
        return str(value) if value else None

    def _set_owner(self, owner: Path) -> None:
        atomic_write(self.owner_file, json.dumps({"owner": str(owner)}).encode(), mode=0o644)

    def running(self) -> bool:
        return self.pidfile.read() is not None

    # --- start and stop ---------------------------------------------------------------------
    def argv(self, dockerd: str) -> list[str]:
        return [
            dockerd,
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.exec_root),
            "-H",
            self.host,
            "--pidfile",
            str(self.exec_root / "dockerd.pid"),
            "--bridge=none",
            "--iptables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--userland-proxy=false",
        ]

    def start(self, owner: Path, timeout: float = ENGINE_START_TIMEOUT) -> Engine:
        """Start dockerd (or adopt ours when it still runs) and wait until it answers."""
        if self.running() and answers(self.host) is None:
            previous = self.owner()
            if previous is None or previous == str(owner) or not Path(previous).exists():
                self._set_owner(owner)
            return Engine(self.host, ours=True)
        dockerd = shutil.which("dockerd", path=f"{os.environ.get('PATH', '')}:{DAEMON_PATH}")
        if dockerd is None:
            raise EngineUnavailable(
                f"docker backend: no Docker engine answers and dockerd is not installed: "
                f"{install_hint()}"
            )
        if os.geteuid() != 0:
            raise EngineUnavailable(
                "docker backend: no Docker engine answers and dockerd needs root to start one: "
                "run as root, or start Docker and set DOCKER_HOST"
            )
        self.stop()  # leftovers of a crashed run: a dead pid file, mounts, a stale socket
        for path in (self.data_root, self.exec_root):
            path.mkdir(parents=True, exist_ok=True)
        self.exec_root.chmod(0o700)
        env = {**os.environ, "PATH": f"{os.environ.get('PATH', '')}:{DAEMON_PATH}"}
        env.pop("DOCKER_HOST", None)
        self.log.write_bytes(b"")
        spawn(self.argv(dockerd), pidfile=self.pidfile, log=self.log, env=env)
        self._set_owner(owner)

        def ready() -> bool:
            if not self.running():
                raise EngineUnavailable(
                    f"docker backend: dockerd exited during start: {_reason(self.log)}"
                )
            return answers(self.host) is None

        try:
            wait_until(ready, timeout, f"dockerd at {self.socket}", interval=0.2)
        except BaseException:
            self.stop()
            raise
        return Engine(self.host, ours=True)

    def stop(self) -> bool:
        """Stop dockerd (its containerd goes with it), unmount what it left under its roots,
        remove its exec root and socket. True if it ran."""
        ran = stop(self.pidfile, timeout=30)
        for mount in reversed(sorted(_mounts_under(self.exec_root, self.data_root))):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        shutil.rmtree(self.exec_root, ignore_errors=True)
        self.socket.unlink(missing_ok=True)
        self.owner_file.unlink(missing_ok=True)
        return ran


def _reason(log: Path) -> str:
    """The most telling line of dockerd's log: its last error, else its last line."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "level=error" in ln or "level=fatal" in ln or "failed" in ln]
    line = (errors or lines or ["(no output)"])[-1]
    if 'msg="' in line:
        line = line.split('msg="', 1)[1].rstrip('"')
    return line[:300] or tail(log, 1)


def _mounts_under(*roots: Path) -> list[str]:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    found = []
    prefixes = [str(r) for r in roots]
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        point = fields[4].encode().decode("unicode_escape")  # mountinfo escapes as \040 etc.
        if any(point == p or point.startswith(p + "/") for p in prefixes):
            found.append(point)
    return found


def default_host() -> str | None:
    """The engine a client would use without our help: DOCKER_HOST, else the default socket."""
    host = os.environ.get("DOCKER_HOST")
    if host:
        return host
    if DEFAULT_SOCKET.exists():
        return f"unix://{DEFAULT_SOCKET}"
    return None


def acquire(tools_dir: Path, owner: Path) -> Engine:
    """An engine that answers: the one that runs (never stopped by us), else our own."""
    own = OwnEngine(tools_dir)
    host = default_host()
    if host and host != own.host:
        reason = answers(host)
        if reason is None:
            return Engine(host, ours=False)
        if os.environ.get("DOCKER_HOST"):
            raise EngineUnavailable(
                f"docker backend: DOCKER_HOST={host} does not answer ({reason}): "
                "start that engine or unset DOCKER_HOST"
            )
    return own.start(owner)


def availability(tools_dir: Path) -> str | None:
    """None when an engine answers or one could be started here; else why not (one line)."""
    own = OwnEngine(tools_dir)
    host = default_host()
    if host and host != own.host and answers(host) is None:
        return None
    if own.running() and answers(own.host) is None:
        return None
    if os.environ.get("DOCKER_HOST") and os.environ["DOCKER_HOST"] != own.host:
        return f"docker backend: DOCKER_HOST={os.environ['DOCKER_HOST']} does not answer"
    if shutil.which("dockerd", path=f"{os.environ.get('PATH', '')}:{DAEMON_PATH}") is None:
        return (
            "docker backend: no Docker engine answers and dockerd is not installed: "
            + install_hint()
        )
    if os.geteuid() != 0:
        return "docker backend: no Docker engine answers and dockerd needs root to start one"
    return None


def release(engine: Engine | None, tools_dir: Path, owner: Path) -> None:
    """Stop our engine if this owner started (or adopted) it; an engine of others is left."""
    own = OwnEngine(tools_dir)
    if engine is not None and not engine.ours:
        return
    if own.owner() in (None, str(owner)):
        with contextlib.suppress(StackError):
            own.stop()
