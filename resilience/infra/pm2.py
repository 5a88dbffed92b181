"""PM2 seen from outside: the daemon under its own PM2_HOME and the apps it manages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resilience.errors import ConfigError, StackError

if TYPE_CHECKING:
    from resilience.config import Settings


def find_pm2(tools_dir: Path) -> Path:
    local = tools_dir / "node" / "node_modules" / ".bin" / "pm2"
    if local.exists():
        return local
    found = shutil.which("pm2")
    if found:
        return Path(found)
    raise StackError(f"pm2 not found in {local.parent}: run './run' to install it (needs npm)")


def pm2_for(settings: Settings) -> Pm2:
    """The PM2 that runs the service, as settings name it (`RESILIENCE_PM2_BIN`, else `pm2` on
    PATH; `RESILIENCE_PM2_HOME`, else PM2's own default)."""
    binary = settings.pm2_bin
    if binary is None:
        found = shutil.which("pm2")
        if found is None:
            raise ConfigError("pm2 not found on PATH: install it or set RESILIENCE_PM2_BIN")
        binary = Path(found)
    elif not binary.is_file():
        raise ConfigError(f"RESILIENCE_PM2_BIN: {binary} is not a file")
    return Pm2(binary, home=settings.pm2_home)


def daemon_pid(home: Path) -> int | None:
    """Pid of the PM2 daemon of this PM2_HOME, as its pid file says (it may be gone)."""
    try:
        return int((home / "pm2.pid").read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Pm2App:
    name: str
    pid: int | None
    status: str  # online, stopped, errored, launching, ...
    restarts: int
    out_log: Path | None
    err_log: Path | None
    cwd: Path | None


@dataclass
class Pm2Call:
    """One PM2 command under way (see :meth:`Pm2.begin`)."""

    command: str
    process: subprocess.Popen[str]
    timeout: float

    def wait(self) -> str:
        """Its output once it ended; :class:`StackError` when it failed or did not end
        within the timeout (then it is killed)."""
        try:
            out, err = self.process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise StackError(
                f"pm2 {self.command} did not answer within {self.timeout:.0f} s"
            ) from None
        if self.process.returncode != 0:
            last = (err or out).strip().splitlines()[-1:]
            raise StackError(f"pm2 {self.command} failed: {' '.join(last)}")
        return out


@dataclass(frozen=True)
class Pm2:
    """One PM2 daemon, addressed by its PM2_HOME."""

    binary: Path
    home: Path | None = None  # None: the operator's default PM2_HOME (staging)
    timeout: float = 60.0

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.home is not None:
            env["PM2_HOME"] = str(self.home)
        return env

    def run(self, *args: str) -> str:
        return self.begin(*args).wait()

    def begin(self, *args: str) -> Pm2Call:
        """Start ``pm2 ARGS`` and return at once; :meth:`Pm2Call.wait` gives what :meth:`run`
        would (each PM2 command starts node, about half a second: the caller works meanwhile)."""
        process = subprocess.Popen(
            [str(self.binary), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self._env(),
        )
        return Pm2Call(args[0], process, self.timeout)

    def ping(self) -> None:
        """Start the daemon if needed and wait until it answers."""
        self.run("ping")

    def daemon_pid(self) -> int | None:
        return None if self.home is None else daemon_pid(self.home)

    def kill(self) -> None:
        """Stop every app and the daemon."""
        self.run("kill")

    def start(self, ecosystem: Path) -> None:
        """Start (or reload) the apps an ecosystem file describes."""
        self.run("start", str(ecosystem))

    def restart(self, app: str) -> None:
        self.run("restart", app)

    def stop(self, app: str) -> None:
        self.run("stop", app)

    def delete(self, app: str) -> None:
        self.run("delete", app)

    def jlist(self) -> list[dict[str, Any]]:
        """`pm2 jlist` parsed. A daemon PM2 had to start first prints its banner lines before
        the JSON, so the JSON is the last line; anything else is a StackError, not a crash."""
        lines = [line for line in self.run("jlist").splitlines() if line.strip()]
        try:
            data = json.loads(lines[-1]) if lines else []
        except ValueError:
            raise StackError("pm2 jlist did not answer with JSON: is PM2 working?") from None
        if not isinstance(data, list):
            raise StackError("pm2 jlist did not answer with a list of apps")
        return [app for app in data if isinstance(app, dict)]

    def describe(self, app: str) -> Pm2App | None:
        """The app as PM2 sees it, or None when PM2 has no such app."""
        for raw in self.jlist():
            if raw.get("name") == app:
                env = raw.get("pm2_env", {})
                return Pm2App(
                    name=app,
                    pid=raw.get("pid") or None,
                    status=str(env.get("status")),
                    restarts=int(env.get("restart_time", 0)),
                    out_log=Path(env["pm_out_log_path"]) if env.get("pm_out_log_path") else None,
                    err_log=Path(env["pm_err_log_path"]) if env.get("pm_err_log_path") else None,
                    cwd=Path(env["pm_cwd"]) if env.get("pm_cwd") else None,
                )
        return None

    def require(self, app: str) -> Pm2App:
        found = self.describe(app)
        if found is None:
            known = ", ".join(a["name"] for a in self.apps()) or "none"
            raise StackError(f"PM2 has no app named {app!r} (apps: {known})")
        return found

    def apps(self) -> list[dict[str, Any]]:
        data = self.jlist()
        return [
            {
                "name": app.get("name"),
                "pid": app.get("pid"),
                "status": app.get("pm2_env", {}).get("status"),
                "restarts": app.get("pm2_env", {}).get("restart_time"),
            }
            for app in data
        ]
