"""The same stack on a Docker engine, through testcontainers.

PostgreSQL (`PostgresContainer`, psycopg driver), Toxiproxy (`ghcr.io/shopify/toxiproxy`) and
moto's S3 server as containers on one network; the receivers and PM2 run locally as in the
local stack, because they are ours and need no isolation. Without an engine, `up()` raises
StackError saying so (tests turn that into a skip with the same reason).
"""

from __future__ import annotations

import contextlib
import secrets
from typing import Any

from resilience.chaos.toxiproxy import ToxiproxyClient
from resilience.config import DrillSettings
from resilience.drill.stack.base import Endpoints, S3Region, Stack
from resilience.drill.stack.local import spawn_receivers
from resilience.drill.stack.s3 import REGIONS, create_buckets
from resilience.errors import StackError
from resilience.infra.pm2 import Pm2, find_pm2
from resilience.infra.processes import PidFile, free_port, stop
from resilience.infra.waiting import wait_until

POSTGRES_IMAGE = "postgres:15"
TOXIPROXY_IMAGE = "ghcr.io/shopify/toxiproxy:2.12.0"
MOTO_IMAGE = "motoserver/moto:5.0.28"
PROXY_PORT = 8666


def engine_available() -> str | None:
    """None when a Docker engine answers, else the reason it does not."""
    try:
        import docker

        docker.from_env().ping()  # type: ignore[attr-defined]
    except Exception as exc:
        return (
            f"no Docker engine reachable ({type(exc).__name__}); "
            "start Docker or use RESILIENCE_BACKEND=local"
        )
    return None


class DockerStack(Stack):
    name = "docker"
    controls_postgres = True

    def __init__(self, settings: DrillSettings) -> None:
        self.settings = settings
        self.dir = settings.stack_dir.resolve() / "docker"
        self._containers: list[Any] = []
        self._network: Any = None
        self._endpoints: Endpoints | None = None

    @property
    def endpoints(self) -> Endpoints:
        if self._endpoints is None:
            raise StackError("the docker stack is not up in this process (it lives as long as it)")
        return self._endpoints

    def up(self) -> Endpoints:
        if self._endpoints is not None:
            return self._endpoints
        reason = engine_available()
        if reason:
            raise StackError(f"docker backend: {reason}")
        try:
            return self._start()
        except BaseException:
            self.down()
            raise

    def _start(self) -> Endpoints:
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.network import Network
        from testcontainers.postgres import PostgresContainer

        self._network = Network().create()
        service_password = secrets.token_urlsafe(18)
        pg = (
            PostgresContainer(POSTGRES_IMAGE, username="postgres", dbname="baileys", driver=None)
            .with_network(self._network)
            .with_network_aliases("postgres")
        )
        pg.start()
        self._containers.append(pg)
        toxi = (
            DockerContainer(TOXIPROXY_IMAGE)
            .with_network(self._network)
            .with_exposed_ports(8474, PROXY_PORT)
        )
        toxi.start()
        self._containers.append(toxi)
        moto = DockerContainer(MOTO_IMAGE).with_exposed_ports(5000)
        moto.start()
        self._containers.append(moto)

        admin_dsn = pg.get_connection_url()
        import psycopg

        from resilience.authstate.schema import apply_schema
        from resilience.drill.stack.postgres import SERVICE_ROLE

        def connect() -> psycopg.Connection[Any]:
            return psycopg.connect(admin_dsn, connect_timeout=2)

        wait_until(connect, self.settings.startup_timeout, "PostgreSQL container").close()
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    psycopg.sql.Identifier(SERVICE_ROLE), psycopg.sql.Literal(service_password)
                )
            )
        with psycopg.connect(admin_dsn) as conn:
            apply_schema(conn, owner=SERVICE_ROLE)

        host = toxi.get_container_host_ip()
        toxiproxy_url = f"http://{host}:{toxi.get_exposed_port(8474)}"
        with ToxiproxyClient(toxiproxy_url) as client:
            wait_until(client.version, self.settings.startup_timeout, "toxiproxy container")
            client.create_proxy(
                "postgres", listen=f"0.0.0.0:{PROXY_PORT}", upstream="postgres:5432"
            )
        proxy_port = int(toxi.get_exposed_port(PROXY_PORT))

        s3_url = f"http://{moto.get_container_host_ip()}:{moto.get_exposed_port(5000)}"
        regions = {
            name: S3Region(name, region, s3_url, f"baileys-backups-{name}")
            for name, region in REGIONS.items()
        }

        def buckets() -> bool:
            create_buckets(regions.values(), "test", "test")
            return True

        wait_until(buckets, self.settings.startup_timeout, "moto container")

        receivers_port = free_port()
        sentry_key = secrets.token_hex(16)
        bot_token = f"{secrets.randbelow(10**9)}:{secrets.token_urlsafe(24)}"
        spawn_receivers(self.dir, receivers_port, sentry_key, bot_token)
        pm2 = Pm2(find_pm2(self.settings.tools_dir.resolve()), home=self.dir / "pm2")
        pm2.ping()
        receivers_url = f"http://127.0.0.1:{receivers_port}"
        self._endpoints = Endpoints(
            backend="docker",
            admin_dsn=admin_dsn,
            service_dsn=f"postgresql://{SERVICE_ROLE}:{service_password}@{host}:{proxy_port}/baileys",
            toxiproxy_url=toxiproxy_url,
            toxiproxy_proxy="postgres",
            s3=regions,
            s3_access_key_id="test",
            s3_secret_access_key="test",
            sentry_dsn=f"http://{sentry_key}@127.0.0.1:{receivers_port}/1",
            telegram_api_url=receivers_url,
            telegram_bot_token=bot_token,
            telegram_chat_id="-1001234567890",
            receivers_url=receivers_url,
            pm2_home=str(self.dir / "pm2"),
            drill_target=True,
        )
        return self._endpoints

    def down(self) -> None:
        pm2_home = self.dir / "pm2"
        if (pm2_home / "pm2.pid").exists():
            with contextlib.suppress(StackError):
                Pm2(find_pm2(self.settings.tools_dir.resolve()), home=pm2_home).kill()
        pidfile = PidFile(self.dir / "pids" / "receivers.pid")
        if pidfile.path.exists():
            stop(pidfile)
        for container in reversed(self._containers):
            with contextlib.suppress(Exception):  # may be gone already; remove the rest
                container.stop()
        self._containers.clear()
        if self._network is not None:
            with contextlib.suppress(Exception):  # best effort after the containers
                self._network.remove()
            self._network = None
        self._endpoints = None

    def status(self) -> dict[str, Any]:
        reason = engine_available()
        return {
            "backend": "docker",
            "up": self._endpoints is not None,
            "engine": reason or "available",
            "endpoints": self._endpoints.redacted() if self._endpoints else None,
        }

    def stop_postgres(self) -> None:
        self._pg().get_wrapped_container().stop()

    def kill_postgres(self) -> None:
        self._pg().get_wrapped_container().kill()

    def start_postgres(self) -> None:
        self._pg().get_wrapped_container().start()

    def _pg(self) -> Any:
        if not self._containers:
            raise StackError("the docker stack is not up")
        return self._containers[0]
