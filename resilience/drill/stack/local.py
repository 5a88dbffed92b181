"""The embedded stack: real local processes, started by the project itself, no Docker needed.

PostgreSQL (Debian's binaries, throwaway cluster), the real Toxiproxy server with a proxy named
`postgres` in front of it, moto's S3 server with one bucket per region, the Sentry/Telegram
receivers, and a PM2 daemon with its own PM2_HOME. Everything lives under `stack_dir`; pid files
let `down()` clean up after a crashed run, and `down()` removes what the stack created there
(:data:`CREATED`; the directory itself once nothing else is left in it).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from resilience.chaos.toxiproxy import ToxiproxyClient
from resilience.config import DrillSettings
from resilience.drill.stack.base import Endpoints, S3Region, Stack
from resilience.drill.stack.postgres import PostgresCluster
from resilience.drill.stack.s3 import REGIONS, create_buckets, s3_environment
from resilience.errors import ResilienceError, StackError
from resilience.infra.fsutil import atomic_write
from resilience.infra.pm2 import Pm2, daemon_pid, find_pm2
from resilience.infra.processes import (
    PidFile,
    accepts_connections,
    choose_port,
    free_port,
    spawn,
    stop,
    tail,
)
from resilience.infra.waiting import wait_until

PROXY = "postgres"
#: What a local stack creates in its directory, and `down()` removes: its logs, pid files, PM2
#: home, the receivers' records, PostgreSQL's data (when not under a temp dir of the server's
#: user), its state. Nothing else there is its own (the stacks of test runs in subdirectories,
#: the demo deployment of `stack.up`: :mod:`resilience.drill.demo`).
CREATED = ("logs", "pids", "pm2", "receivers", "pg", "state.json", "pg-data-root")


def find_toxiproxy(tools_dir: Path) -> Path:
    local = tools_dir / "bin" / "toxiproxy-server"
    if local.exists():
        return local
    found = shutil.which("toxiproxy-server")
    if found:
        return Path(found)
    raise StackError(
        f"toxiproxy-server not found in {local.parent}: run './run' to build it "
        "(needs 'go'; or put the v2 binary there)"
    )


class LocalStack(Stack):
    name = "local"
    controls_postgres = True

    def __init__(self, settings: DrillSettings) -> None:
        self.settings = settings
        self.dir = settings.stack_dir.resolve()
        self.tools = settings.tools_dir.resolve()
        self._endpoints: Endpoints | None = None

    # --- files ----------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def _pg_root_file(self) -> Path:
        return self.dir / "pg-data-root"

    def _pidfile(self, name: str) -> PidFile:
        return PidFile(self.dir / "pids" / f"{name}.pid")

    def _log(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    def _load_state(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        return data

    def _write_state(self, state: dict[str, Any]) -> None:
        atomic_write(self.state_file, json.dumps(state).encode())

    def _pm2(self) -> Pm2:
        return Pm2(find_pm2(self.tools), home=self.dir / "pm2")

    def _cluster(self, state: dict[str, Any]) -> PostgresCluster:
        pg = state["postgres"]
        return PostgresCluster(
            stack_dir=self.dir,
            port=pg["port"],
            data_root=Path(pg["data_root"]),
            admin_password=pg["admin_password"],
            service_password=pg["service_password"],
            durable=bool(pg.get("durable", False)),
            archive_spool=Path(pg["archive_spool"]) if pg.get("archive_spool") else None,
            archive_timeout=float(pg.get("archive_timeout", 60.0)),
        )

    # --- interface ------------------------------------------------------------------------
    @property
    def endpoints(self) -> Endpoints:
        if self._endpoints is None:
            state = self._load_state()
            if state is None:
                raise StackError(
                    f"the local stack is not up (no {self.state_file}): run './run stack.up'"
                )
            self._endpoints = _endpoints_from(state["endpoints"])
        return self._endpoints

    def up(self) -> Endpoints:
        state = self._load_state()
        if state is not None and all(c["running"] for c in self.status()["components"].values()):
            self._endpoints = _endpoints_from(state["endpoints"])
            return self._endpoints
        self.down()  # leftovers of a crashed or half-stopped run
        try:
            return self._start()
        except BaseException:
            self._stop()  # its logs stay, to read why it did not start
            raise

    def _start(self) -> Endpoints:
        s = self.settings
        timeout = s.startup_timeout
        # Check every prerequisite before starting anything.
        toxiproxy_bin = find_toxiproxy(self.tools)
        pm2 = self._pm2()
        ports = self._choose_ports()
        cluster = self._create_cluster(ports["pg"])
        sentry_key = secrets.token_hex(16)
        bot_token = f"{secrets.randbelow(10**9)}:{secrets.token_urlsafe(24)}"
        s3_key, s3_secret = "resilience", secrets.token_hex(16)
        state: dict[str, Any] = {"postgres": _postgres_state(cluster, ports["pg"])}
        self._write_state({**state, "starting": True})

        # Start the slow-to-import servers first, then do initdb while they boot.
        self._spawn_servers(ports, toxiproxy_bin, sentry_key, bot_token)
        cluster.init()
        cluster.start()
        pm2.ping()
        cluster.wait_ready(timeout)
        cluster.bootstrap()

        toxiproxy_url = f"http://127.0.0.1:{ports['toxiproxy']}"
        self._wait_http(f"{toxiproxy_url}/version", "toxiproxy", timeout)
        proxy_port = free_port()
        with ToxiproxyClient(toxiproxy_url) as toxiproxy:
            toxiproxy.create_proxy(
                PROXY, listen=f"127.0.0.1:{proxy_port}", upstream=f"127.0.0.1:{ports['pg']}"
            )
        receivers_url = f"http://127.0.0.1:{ports['receivers']}"
        self._wait_http(f"{receivers_url}/_health", "receivers", timeout)
        s3_url = f"http://127.0.0.1:{ports['s3']}"
        self._wait_http(f"{s3_url}/moto-api/", "s3", timeout)
        regions, s3_proxies, region_ports = _proxy_s3_regions(toxiproxy_url, s3_url)
        create_buckets(regions.values(), s3_key, s3_secret)

        endpoints = Endpoints(
            backend="local",
            admin_dsn=cluster.admin_dsn(),
            service_dsn=cluster.service_dsn("127.0.0.1", proxy_port),
            toxiproxy_url=toxiproxy_url,
            toxiproxy_proxy=PROXY,
            s3=regions,
            s3_access_key_id=s3_key,
            s3_secret_access_key=s3_secret,
            sentry_dsn=f"http://{sentry_key}@127.0.0.1:{ports['receivers']}/1",
            telegram_api_url=receivers_url,
            telegram_bot_token=bot_token,
            telegram_chat_id="-1001234567890",
            receivers_url=receivers_url,
            pm2_home=str(self.dir / "pm2"),
            drill_target=True,
            s3_proxies=s3_proxies,
            wal_spool=str(cluster.archive_spool) if cluster.archive_spool else None,
        )
        state["endpoints"] = asdict(endpoints)
        state["ports"] = {**ports, "proxy": proxy_port, **region_ports}
        self._write_state(state)
        self._endpoints = endpoints
        return endpoints

    def _choose_ports(self) -> dict[str, int]:
        """One port per component (the configured one, else a free one), all different."""
        s = self.settings
        ports = {
            "pg": choose_port(s.pg_port, "RESILIENCE_PG_PORT"),
            "toxiproxy": choose_port(s.toxiproxy_port, "RESILIENCE_TOXIPROXY_PORT"),
            "s3": choose_port(s.s3_port, "RESILIENCE_S3_PORT"),
            "receivers": choose_port(s.receivers_port, "RESILIENCE_RECEIVERS_PORT"),
        }
        if len(set(ports.values())) != len(ports):
            raise StackError(f"two components were given the same port: {ports}")
        return ports

    def _create_cluster(self, port: int) -> PostgresCluster:
        """The stack's directories and its PostgreSQL cluster (not initialised yet), its data
        root recorded for `down`."""
        s = self.settings
        for sub in ("pids", "logs", "receivers", "pm2"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        cluster = PostgresCluster.create(
            self.dir,
            port,
            durable=s.pg_durable,
            archive=s.pg_archive,
            archive_timeout=s.pg_archive_timeout,
        )
        # known to `down` even if a crash loses state.json: the data dir may live outside
        self._pg_root_file.write_text(str(cluster.data_root))
        return cluster

    def _spawn_servers(
        self, ports: dict[str, int], toxiproxy_bin: Path, sentry_key: str, bot_token: str
    ) -> None:
        """Start moto's S3 server, the receivers and Toxiproxy (their readiness is waited for
        later)."""
        spawn(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(ports["s3"])],
            pidfile=self._pidfile("s3"),
            log=self._log("s3"),
            env={**os.environ, **s3_environment()},
        )
        spawn_receivers(self.dir, ports["receivers"], sentry_key, bot_token)
        spawn(
            [str(toxiproxy_bin), "-host", "127.0.0.1", "-port", str(ports["toxiproxy"])],
            pidfile=self._pidfile("toxiproxy"),
            log=self._log("toxiproxy"),
        )

    def _wait_http(self, url: str, name: str, timeout: float) -> None:
        pidfile, log = self._pidfile(name), self._log(name)

        def ready() -> bool:
            if pidfile.read() is None:
                raise StackError(f"{name} exited during start: {tail(log)}")
            return httpx.get(url, timeout=1.0).status_code < 500

        wait_until(ready, timeout, f"{name} at {url}")

    def down(self) -> None:
        """Stop every process of the stack, then remove what it created in its directory."""
        self._stop()
        for name in CREATED:
            path = self.dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.dir.rmdir()  # only when nothing else is in it

    def _stop(self) -> None:
        state = self._load_state()
        self._endpoints = None
        pm2_home = self.dir / "pm2"
        if (pm2_home / "pm2.pid").exists():
            pm2 = self._pm2()
            with contextlib.suppress(ResilienceError):  # gone already? its pid is killed below
                pm2.kill()
            pid = pm2.daemon_pid()
            if pid is not None:
                _kill_quietly(pid)
        if state is not None and "postgres" in state:
            self._cluster(state).remove()
        pids = self.dir / "pids"
        if pids.is_dir():
            for pidfile in sorted(pids.glob("*.pid")):
                stop(PidFile(pidfile))
        if self._pg_root_file.exists():
            shutil.rmtree(self._pg_root_file.read_text().strip(), ignore_errors=True)
            self._pg_root_file.unlink()
        self.state_file.unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        state = self._load_state() or {}
        ports: dict[str, int] = state.get("ports", {})
        comps: dict[str, dict[str, Any]] = {}
        for name in ("postgres", "toxiproxy", "s3", "receivers"):
            pid = self._pidfile(name).read()
            port = ports.get("pg" if name == "postgres" else name)
            listening = bool(port) and accepts_connections(int(port or 0))
            comps[name] = {"running": pid is not None and listening, "pid": pid, "port": port}
        if ports.get("proxy"):
            comps["toxiproxy"]["proxy_port"] = ports["proxy"]
        pm2_pid = daemon_pid(self.dir / "pm2")
        pm2_alive = pm2_pid is not None and Path(f"/proc/{pm2_pid}").exists()
        comps["pm2"] = {"running": pm2_alive, "pid": pm2_pid if pm2_alive else None}
        up = "endpoints" in state and all(c["running"] for c in comps.values())
        result: dict[str, Any] = {"backend": "local", "up": up, "stack_dir": str(self.dir)}
        result["components"] = comps
        if up:
            result["endpoints"] = _endpoints_from(state["endpoints"]).redacted()
        return result

    # --- faults on the server process ------------------------------------------------------
    def _require_cluster(self) -> PostgresCluster:
        state = self._load_state()
        if state is None or "postgres" not in state:
            raise StackError("the local stack is not up: run './run stack.up'")
        return self._cluster(state)

    def stop_postgres(self) -> None:
        self._require_cluster().stop()

    def kill_postgres(self) -> None:
        self._require_cluster().kill()

    def start_postgres(self) -> None:
        cluster = self._require_cluster()
        cluster.start()
        cluster.wait_ready(self.settings.startup_timeout)

    def destroy_postgres(self) -> None:
        """Datacenter loss: the server stopped and its data directory deleted."""
        cluster = self._require_cluster()
        cluster.stop()
        shutil.rmtree(cluster.data_dir, ignore_errors=True)

    def rebuild_postgres(self) -> None:
        """A fresh, empty cluster in place of a lost one (same port, roles and schema), so the
        stack can be used and taken down normally after a datacenter-loss drill."""
        cluster = self._require_cluster()
        if cluster.data_dir.exists():
            return
        cluster.init()
        cluster.start()
        cluster.wait_ready(self.settings.startup_timeout)
        cluster.bootstrap()


def _endpoints_from(data: dict[str, Any]) -> Endpoints:
    s3 = {name: S3Region(**region) for name, region in data.get("s3", {}).items()}
    return Endpoints(**{**data, "s3": s3})


def _kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def spawn_receivers(stack_dir: Path, port: int, sentry_key: str, bot_token: str) -> int:
    """Start the Sentry/Telegram receivers (ours, so they run locally on every backend)."""
    record_dir = stack_dir / "receivers"
    argv = [sys.executable, "-m", "resilience.drill.fakes.receivers", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--record-dir", str(record_dir)]
    argv += ["--ready-file", str(record_dir / "ready.json")]
    # secrets go through the environment, not argv, so `ps` does not show them
    env = {**os.environ, "RECEIVERS_SENTRY_KEY": sentry_key, "RECEIVERS_TELEGRAM_TOKEN": bot_token}
    pidfile = PidFile(stack_dir / "pids" / "receivers.pid")
    return spawn(argv, pidfile=pidfile, log=stack_dir / "logs" / "receivers.log", env=env)


def _postgres_state(cluster: PostgresCluster, port: int) -> dict[str, Any]:
    """What state.json keeps of the stack's PostgreSQL."""
    return {
        "port": port,
        "data_root": str(cluster.data_root),
        "durable": cluster.durable,
        "archive_spool": str(cluster.archive_spool) if cluster.archive_spool else None,
        "archive_timeout": cluster.archive_timeout,
        "admin_password": cluster.admin_password,
        "service_password": cluster.service_password,
    }


def _proxy_s3_regions(
    toxiproxy_url: str, s3_url: str
) -> tuple[dict[str, S3Region], dict[str, str], dict[str, int]]:
    """Each region's endpoint goes through a proxy of its own, so a drill can cut one region:
    the regions, their proxies' names and the proxies' ports."""
    regions, s3_proxies, region_ports = {}, {}, {}
    with ToxiproxyClient(toxiproxy_url) as toxiproxy:
        for name, region in REGIONS.items():
            region_port = free_port()
            toxiproxy.create_proxy(
                f"s3-{name}", listen=f"127.0.0.1:{region_port}", upstream=s3_url[7:]
            )
            url = f"http://127.0.0.1:{region_port}"
            regions[name] = S3Region(name, region, url, f"baileys-backups-{name}")
            s3_proxies[name] = f"s3-{name}"
            region_ports[f"s3-{name}"] = region_port
    return regions, s3_proxies, region_ports
