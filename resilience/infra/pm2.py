"""PM2 seen from outside: the daemon under its own PM2_HOME and the apps it manages."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from resilience.errors import ConfigError, ServiceControlError

if TYPE_CHECKING:
    from resilience.config import Settings


def find_pm2(tools_dir: Path) -> Path:
    local = tools_dir / "node" / "node_modules" / ".bin" / "pm2"
    if local.exists():
        return local
    found = shutil.which("pm2")
    if found:
        return Path(found)
    raise ServiceControlError(
        f"pm2 not found in {local.parent}: run './run' to install it (needs npm)"
    )


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


class Pending(Protocol):
    """A PM2 command under way (see :meth:`Pm2.begin`)."""

    command: str
    started: float  # time.monotonic() when it was sent

    def wait(self) -> str: ...


@dataclass
class Pm2Call:
    """One PM2 command under way as a CLI process (see :meth:`Pm2.begin`)."""

    command: str
    process: subprocess.Popen[str]
    timeout: float
    started: float = field(default_factory=time.monotonic)

    def wait(self) -> str:
        """Its output once it ended; :class:`ServiceControlError` when it failed or did not end
        within the timeout (then it is killed)."""
        try:
            out, err = self.process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise ServiceControlError(
                f"pm2 {self.command} did not answer within {self.timeout:.0f} s"
            ) from None
        if self.process.returncode != 0:
            last = (err or out).strip().splitlines()[-1:]
            raise ServiceControlError(f"pm2 {self.command} failed: {' '.join(last)}")
        return out


SESSION_SCRIPT = Path(__file__).with_name("pm2_session.js")
#: what a session carries out; anything else (start, kill, ping) still runs the CLI
SESSION_COMMANDS = frozenset({"stop", "restart", "delete", "jlist"})


def pm2_package(binary: Path) -> Path | None:
    """The pm2 npm package a ``pm2`` binary belongs to (``<package>/bin/pm2``), or None."""
    package = binary.resolve().parent.parent
    try:
        name = json.loads((package / "package.json").read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    return package if name == "pm2" else None


@dataclass
class SessionCall:
    """One command sent over a :class:`Pm2Session`."""

    command: str
    answer: Future[str]
    timeout: float
    started: float = field(default_factory=time.monotonic)

    def wait(self) -> str:
        try:
            return self.answer.result(timeout=self.timeout)
        except FutureTimeout:
            raise ServiceControlError(
                f"pm2 {self.command} did not answer within {self.timeout:.0f} s"
            ) from None


class Pm2Session:
    """One connection to the PM2 daemon, held by a small node process through pm2's own API:
    a command then costs milliseconds where the CLI starts node and loads PM2 each time (about
    0.4 s). Written here because PM2's daemon speaks only to node (its RPC has no Python client).
    It connects in the background: :meth:`begin` waits for that, and answers None when the
    session could not be had (then the caller runs the CLI)."""

    def __init__(self, package: Path, env: dict[str, str], timeout: float) -> None:
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[str, Future[str]]] = {}  # request id: command, answer
        self._lock = threading.Lock()
        self._ready: Future[bool] = Future()
        self.refused: str | None = None  # why the session could not be had
        self._process = subprocess.Popen(
            ["node", str(SESSION_SCRIPT), str(package)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, name="pm2-session", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "ready" in message:
                self.refused = None if message["ready"] else str(message.get("error"))
                self._ready.set_result(bool(message["ready"]))
                continue
            with self._lock:
                waiting = self._waiting.pop(message.get("id"), None)
            if waiting is None:
                continue
            command, answer = waiting
            if message.get("ok"):
                answer.set_result(str(message.get("out", "")))
            else:
                answer.set_exception(
                    ServiceControlError(f"pm2 {command} failed: {message.get('error')}")
                )
        # the session ended: nothing more will be answered
        if not self._ready.done():
            self.refused = "the PM2 session ended before it connected"
            self._ready.set_result(False)
        with self._lock:
            unanswered, self._waiting = self._waiting, {}
        for command, answer in unanswered.values():
            answer.set_exception(ServiceControlError(f"pm2 {command}: the session to PM2 ended"))

    def ready(self) -> bool:
        try:
            return self._ready.result(timeout=self.timeout)
        except FutureTimeout:
            self.refused = f"no connection to the PM2 daemon within {self.timeout:.0f} s"
            return False

    def begin(self, *args: str) -> SessionCall | None:
        """Send ``args`` (a command of :data:`SESSION_COMMANDS`); None without a session."""
        if args[0] not in SESSION_COMMANDS or not self.ready():
            return None
        answer: Future[str] = Future()
        request = next(self._ids)
        with self._lock:
            self._waiting[request] = (args[0], answer)
        try:
            assert self._process.stdin is not None
            self._process.stdin.write(json.dumps({"id": request, "args": list(args)}) + "\n")
            self._process.stdin.flush()
        except OSError:
            with self._lock:
                self._waiting.pop(request, None)
            return None
        return SessionCall(args[0], answer, self.timeout)

    def close(self) -> None:
        """End the session (the daemon and its apps go on)."""
        with contextlib.suppress(OSError):
            if self._process.stdin is not None:
                self._process.stdin.close()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join(timeout=5)


@dataclass(frozen=True)
class Pm2:
    """One PM2 daemon, addressed by its PM2_HOME."""

    binary: Path
    home: Path | None = None  # None: the operator's default PM2_HOME (staging)
    timeout: float = 60.0
    #: commands go through this connection when it is there (see :meth:`connected`)
    session: Pm2Session | None = field(default=None, compare=False, repr=False)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.home is not None:
            env["PM2_HOME"] = str(self.home)
        return env

    def run(self, *args: str) -> str:
        return self.begin(*args).wait()

    @contextlib.contextmanager
    def connected(self) -> Iterator[Pm2]:
        """This PM2 with one connection to its daemon, for a run that makes several calls
        (see :class:`Pm2Session`): connecting starts at once, in the background. Where node
        or the pm2 package cannot be found, or the session fails, the CLI is used as before."""
        package = pm2_package(self.binary)
        if package is None or self.session is not None or shutil.which("node") is None:
            yield self
            return
        try:
            session = Pm2Session(package, self._env(), self.timeout)
        except OSError:  # node would not start: the CLI, as without a session
            yield self
            return
        try:
            yield replace(self, session=session)
        finally:
            session.close()

    def begin(self, *args: str) -> Pending:
        """Start ``pm2 ARGS`` and return at once; its ``wait()`` gives what :meth:`run`
        would (each PM2 CLI command starts node, about half a second: the caller works
        meanwhile; through a session it takes milliseconds)."""
        if self.session is not None:
            call = self.session.begin(*args)
            if call is not None:
                return call
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
        the JSON, so the JSON is the last line; anything else is a ServiceControlError, not a
        crash."""
        lines = [line for line in self.run("jlist").splitlines() if line.strip()]
        try:
            data = json.loads(lines[-1]) if lines else []
        except ValueError:
            raise ServiceControlError(
                "pm2 jlist did not answer with JSON: is PM2 working?"
            ) from None
        if not isinstance(data, list):
            raise ServiceControlError("pm2 jlist did not answer with a list of apps")
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
            raise ServiceControlError(f"PM2 has no app named {app!r} (apps: {known})")
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
