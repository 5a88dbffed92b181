"""The same stack on a Docker engine, through testcontainers.

PostgreSQL (testcontainers' `PostgresContainer`), Toxiproxy and moto's S3 server
(`DockerContainer`) run as containers with host networking, each on a port chosen free on the
host and passed to its own flags, so drills talk to 127.0.0.1 exactly as on the local stack
(Toxiproxy's proxies included: one for PostgreSQL, one per S3 region). The receivers and PM2 run
locally as in the local stack, because they are ours and need no isolation.

The engine is the one that runs, or our own dockerd (resilience.drill.stack.engine), stopped
again by `down()`. The Ryuk reaper is disabled (its image cannot be pulled everywhere): every
container carries the label `resilience.stack=<stack dir>` and `down()` removes them. Images are
official or built here (resilience.drill.stack.images, RESILIENCE_DOCKER_IMAGES).
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from resilience.chaos.toxiproxy import ToxiproxyClient
from resilience.config import DrillSettings
from resilience.drill.stack import engine as engines
from resilience.drill.stack.base import Endpoints, S3Region, Stack
from resilience.drill.stack.engine import docker_sdk
from resilience.drill.stack.images import official_images
from resilience.drill.stack.local import spawn_receivers
from resilience.drill.stack.postgres import DATABASE, SERVICE_ROLE
from resilience.drill.stack.s3 import REGIONS, create_buckets, s3_environment
from resilience.errors import StackError
from resilience.infra.pm2 import Pm2, find_pm2
from resilience.infra.processes import PidFile, free_port, stop
from resilience.infra.waiting import wait_until

_OFFICIAL = official_images()
POSTGRES_IMAGE = _OFFICIAL["postgres"]
TOXIPROXY_IMAGE = _OFFICIAL["toxiproxy"]
MOTO_IMAGE = _OFFICIAL["moto"]
LABEL = "resilience.stack"
PROXY = "postgres"
PORT_ATTEMPTS = 3
PORT_TAKEN = "port taken"


def engine_available(tools_dir: Path = Path(".tools")) -> str | None:
    """None when a Docker engine answers or one can be started here, else why not."""
    return engines.availability(tools_dir)


class DockerStack(Stack):
    name = "docker"
    controls_postgres = True

    def __init__(self, settings: DrillSettings) -> None:
        self.settings = settings
        self.dir = settings.stack_dir.resolve() / "docker"
        self.tools = settings.tools_dir.resolve()
        self._engine: engines.Engine | None = None
        self._containers: dict[str, Any] = {}
        self._ports: dict[str, int] = {}
        self._images: dict[str, str] = {}
        self._image_ids: dict[str, str] = {}
        self._endpoints: Endpoints | None = None
        self._admin_password = ""
        self._saved_env: dict[str, str | None] = {}

    @property
    def endpoints(self) -> Endpoints:
        if self._endpoints is None:
            raise StackError("the docker stack is not up in this process (it lives as long as it)")
        return self._endpoints

    @property
    def images(self) -> dict[str, str]:
        """role -> image reference and id (`ref@id`) of the running stack."""
        ids = self._image_ids
        return {role: f"{ref}@{ids.get(role, '?')}" for role, ref in self._images.items()}

    def up(self) -> Endpoints:
        if self._endpoints is not None:
            return self._endpoints
        try:
            return self._start()
        except BaseException:
            self.down()
            raise

    # --- engine -------------------------------------------------------------------------------
    def _use_engine(self) -> Any:
        self._engine = engines.acquire(self.tools, owner=self.dir)
        wanted = {"DOCKER_HOST": self._engine.host, "TESTCONTAINERS_RYUK_DISABLED": "true"}
        for name, value in wanted.items():
            self._saved_env.setdefault(name, os.environ.get(name))
            os.environ[name] = value  # for testcontainers and every docker client of this process
        from testcontainers.core.config import testcontainers_config

        testcontainers_config.ryuk_disabled = True
        return engines.client(self._engine.host)

    def _restore_env(self) -> None:
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()

    def _start(self) -> Endpoints:
        s = self.settings
        from resilience.drill.stack.images import ensure_images, image_id

        pm2 = Pm2(find_pm2(self.tools), home=self.dir / "pm2")  # before anything starts
        for sub in ("pids", "logs", "receivers", "pm2"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        client = self._use_engine()
        try:
            host = self._engine.host if self._engine else ""
            self._images = ensure_images(
                client, s.docker_images, self.tools, connect=lambda: engines.client(host)
            )
            self._image_ids = {role: image_id(client, ref) for role, ref in self._images.items()}
        finally:
            client.close()

        self._admin_password = secrets.token_urlsafe(18)
        service_password = secrets.token_urlsafe(18)
        pg_port = self._run("postgres", self._postgres, self._postgres_ready)
        self._bootstrap(service_password)
        toxiproxy_port = self._run("toxiproxy", self._toxiproxy, self._toxiproxy_ready)
        s3_port = self._run("s3", self._moto, self._moto_ready)

        toxiproxy_url = f"http://127.0.0.1:{toxiproxy_port}"
        s3_url = f"http://127.0.0.1:{s3_port}"
        regions, s3_proxies = {}, {}
        with ToxiproxyClient(toxiproxy_url) as toxiproxy:
            # port 0: Toxiproxy binds a free port itself, so none can be taken in between
            proxy = toxiproxy.create_proxy(
                PROXY, listen="127.0.0.1:0", upstream=f"127.0.0.1:{pg_port}"
            )
            for name, region in REGIONS.items():
                region_proxy = toxiproxy.create_proxy(
                    f"s3-{name}", listen="127.0.0.1:0", upstream=s3_url[7:]
                )
                url = f"http://127.0.0.1:{region_proxy.port}"
                regions[name] = S3Region(name, region, url, f"baileys-backups-{name}")
                s3_proxies[name] = f"s3-{name}"
        s3_key, s3_secret = "resilience", secrets.token_hex(16)
        create_buckets(regions.values(), s3_key, s3_secret)

        receivers_port = free_port()
        sentry_key = secrets.token_hex(16)
        bot_token = f"{secrets.randbelow(10**9)}:{secrets.token_urlsafe(24)}"
        spawn_receivers(self.dir, receivers_port, sentry_key, bot_token)
        receivers_url = f"http://127.0.0.1:{receivers_port}"
        pm2.ping()
        wait_until(
            lambda: httpx.get(f"{receivers_url}/_health", timeout=1.0).status_code < 500,
            s.startup_timeout,
            f"receivers at {receivers_url}",
        )
        self._endpoints = Endpoints(
            backend="docker",
            admin_dsn=self._admin_dsn(DATABASE),
            service_dsn=(
                f"postgresql://{SERVICE_ROLE}:{service_password}@127.0.0.1:{proxy.port}/"
                f"{DATABASE}?sslmode=disable"
            ),
            toxiproxy_url=toxiproxy_url,
            toxiproxy_proxy=PROXY,
            s3=regions,
            s3_access_key_id=s3_key,
            s3_secret_access_key=s3_secret,
            sentry_dsn=f"http://{sentry_key}@127.0.0.1:{receivers_port}/1",
            telegram_api_url=receivers_url,
            telegram_bot_token=bot_token,
            telegram_chat_id="-1001234567890",
            receivers_url=receivers_url,
            pm2_home=str(self.dir / "pm2"),
            drill_target=True,
            s3_proxies=s3_proxies,
        )
        return self._endpoints

    # --- containers ---------------------------------------------------------------------------
    def _run(self, role: str, make: Callable[[int], Any], ready: Callable[[int], bool]) -> int:
        """Start `role`'s container on a free host port; a port taken between choosing it and
        the container binding it is retried with another one. Returns the port."""
        errors = docker_sdk("docker.errors")

        for _ in range(PORT_ATTEMPTS):
            port = free_port()
            container = make(port).with_kwargs(
                network_mode="host", labels={LABEL: str(self.dir), "resilience.role": role}
            )
            container.ports = {}  # host networking: nothing to publish
            first = not self._containers
            try:
                container.start()
            except errors.APIError as exc:
                with contextlib.suppress(Exception):
                    container.stop()
                reason = str(exc.explanation or exc).splitlines()[0][:300]
                if first:  # the engine answers but cannot run a container at all
                    raise engines.EngineUnavailable(
                        f"docker backend: the Docker engine refuses to run containers: {reason}"
                    ) from None
                raise StackError(
                    f"docker backend: the {role} container did not start: {reason}"
                ) from None
            self._containers[role] = container
            outcome = wait_until(
                functools.partial(self._check, role, container, port, ready),
                self.settings.startup_timeout,
                f"{role} container on 127.0.0.1:{port}",
                interval=0.1,
            )
            if outcome != PORT_TAKEN:
                self._ports[role] = port
                return port
            with contextlib.suppress(Exception):
                container.stop()
            del self._containers[role]
        raise StackError(
            f"docker backend: the {role} container found its port taken {PORT_ATTEMPTS} times"
        )

    @staticmethod
    def _check(role: str, container: Any, port: int, ready: Callable[[int], bool]) -> Any:
        wrapped = container.get_wrapped_container()
        wrapped.reload()
        if wrapped.status in ("exited", "dead"):
            logs = wrapped.logs(tail=30).decode(errors="replace")
            if "address already in use" in logs.lower():
                return PORT_TAKEN
            last = [ln for ln in logs.splitlines() if ln.strip()][-1:] or ["(no output)"]
            raise StackError(f"docker backend: the {role} container exited: {last[0][:300]}")
        return ready(port)

    def _postgres(self, port: int) -> Any:
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:  # testcontainers < 4.15
            from testcontainers.postgres import PostgresContainer

        class HostPostgres(PostgresContainer):
            def _connect(self) -> None:  # readiness is checked from the host (DockerStack._run)
                pass

        durable = "on" if self.settings.pg_durable else "off"
        container = HostPostgres(
            self._images["postgres"],
            port=port,
            username="postgres",
            password=self._admin_password,
            dbname="postgres",
            driver=None,
        )
        return container.with_env("PGPORT", str(port)).with_command(
            [
                *("postgres", "-c", "listen_addresses=127.0.0.1", "-c", f"fsync={durable}"),
                *("-c", f"full_page_writes={durable}", "-c", "max_connections=100"),
            ]
        )

    def _admin_dsn(self, database: str) -> str:
        port = self._ports.get("postgres", 0)
        return (
            f"postgresql://postgres:{self._admin_password}@127.0.0.1:{port}/{database}"
            "?sslmode=disable"
        )

    def _postgres_ready(self, port: int) -> bool:
        import psycopg

        self._ports["postgres"] = port
        with psycopg.connect(self._admin_dsn("postgres"), connect_timeout=2):
            return True

    def _bootstrap(self, service_password: str) -> None:
        import psycopg
        from psycopg import sql

        from resilience.authstate.schema import apply_schema

        with psycopg.connect(self._admin_dsn("postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(SERVICE_ROLE), sql.Literal(service_password)
                )
            )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(DATABASE), sql.Identifier(SERVICE_ROLE)
                )
            )
        with psycopg.connect(self._admin_dsn(DATABASE)) as conn:
            apply_schema(conn, owner=SERVICE_ROLE)

    def _toxiproxy(self, port: int) -> Any:
        from testcontainers.core.container import DockerContainer

        return DockerContainer(self._images["toxiproxy"]).with_command(
            ["-host", "127.0.0.1", "-port", str(port)]
        )

    @staticmethod
    def _toxiproxy_ready(port: int) -> bool:
        with ToxiproxyClient(f"http://127.0.0.1:{port}", timeout=1.0) as client:
            return bool(client.version())

    def _moto(self, port: int) -> Any:
        from testcontainers.core.container import DockerContainer

        container = DockerContainer(self._images["moto"]).with_command(
            ["-H", "127.0.0.1", "-p", str(port)]
        )
        for name, value in s3_environment().items():
            container.with_env(name, value)
        return container.with_kwargs(entrypoint=["/usr/local/bin/moto_server"])

    @staticmethod
    def _moto_ready(port: int) -> bool:
        return httpx.get(f"http://127.0.0.1:{port}/moto-api/", timeout=1.0).status_code < 500

    # --- down and status ----------------------------------------------------------------------
    def _labelled(self, host: str) -> list[Any]:
        client = engines.client(host, timeout=30)
        try:
            return list(client.containers.list(all=True, filters={"label": f"{LABEL}={self.dir}"}))
        finally:
            client.close()

    def down(self) -> None:
        pm2_home = self.dir / "pm2"
        if (pm2_home / "pm2.pid").exists():
            with contextlib.suppress(StackError):
                Pm2(find_pm2(self.tools), home=pm2_home).kill()
        pidfile = PidFile(self.dir / "pids" / "receivers.pid")
        if pidfile.path.exists():
            stop(pidfile)
        for container in reversed(list(self._containers.values())):
            with contextlib.suppress(Exception):  # may be gone already; remove the rest
                container.stop()
        self._containers.clear()
        host = self._cleanup_host()
        if host is not None:  # leftovers, also of a crashed run or another process
            with contextlib.suppress(Exception):
                for leftover in self._labelled(host):
                    leftover.remove(force=True)
        engines.release(self._engine, self.tools, owner=self.dir)
        self._engine = None
        self._restore_env()
        self._endpoints = None
        self._ports.clear()
        for sub in ("pids", "logs", "receivers", "pm2"):  # what _start made, all stopped now
            shutil.rmtree(self.dir / sub, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.dir.rmdir()

    def _cleanup_host(self) -> str | None:
        if self._engine is not None:
            return self._engine.host
        own = engines.OwnEngine(self.tools)
        if own.running():
            return own.host
        host = engines.default_host()
        return host if host and engines.answers(host) is None else None

    def status(self) -> dict[str, Any]:
        components: dict[str, dict[str, Any]] = {}
        for role, container in self._containers.items():
            state = "?"
            with contextlib.suppress(Exception):
                wrapped = container.get_wrapped_container()
                wrapped.reload()
                state = wrapped.status
            components[role] = {
                "running": state == "running",
                "container": state,
                "port": self._ports.get(role),
            }
        return {
            "backend": "docker",
            "up": self._endpoints is not None,
            "engine": (
                {"host": self._engine.host, "ours": self._engine.ours}
                if self._engine
                else engine_available(self.tools) or "available"
            ),
            "images": self.images,
            "components": components,
            "endpoints": self._endpoints.redacted() if self._endpoints else None,
        }

    # --- faults on the server: `docker stop` / `docker kill` of the database container --------
    def stop_postgres(self) -> None:
        self._pg().stop(timeout=20)

    def kill_postgres(self) -> None:
        self._pg().kill()

    def start_postgres(self) -> None:
        self._pg().start()
        port = self._ports["postgres"]
        wait_until(
            lambda: self._postgres_ready(port),
            self.settings.startup_timeout,
            f"PostgreSQL container on 127.0.0.1:{port}",
        )

    def _pg(self) -> Any:
        if "postgres" not in self._containers:
            raise StackError("the docker stack is not up")
        return self._containers["postgres"].get_wrapped_container()
