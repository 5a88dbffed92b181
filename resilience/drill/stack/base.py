"""The one interface of every stack backend: endpoints to talk to, controls to break things."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from resilience.infra.redact import redact_dsn


@dataclass(frozen=True)
class S3Region:
    """One backup region: where to talk to and which bucket holds the backups."""

    name: str  # operator's name: "moscow", "eu"
    region: str  # S3 region id: "ru-central1", "eu-central-1"
    endpoint_url: str
    bucket: str


@dataclass(frozen=True)
class Endpoints:
    """How to reach every part of a running stack. DSNs and tokens are secrets: see `redacted()`."""

    backend: str
    admin_dsn: str  # direct to PostgreSQL, superuser or owner: seeding and verifying
    service_dsn: str  # through the Toxiproxy proxy: what the service and our tasks use
    toxiproxy_url: str
    toxiproxy_proxy: str  # name of the proxy in front of PostgreSQL
    s3: dict[str, S3Region] = field(default_factory=dict)
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    sentry_dsn: str | None = None
    telegram_api_url: str | None = None
    telegram_bot_token: str | None = None
    telegram_chat_id: str | None = None
    receivers_url: str | None = None  # base URL of the local Sentry/Telegram receivers
    pm2_home: str | None = None
    drill_target: bool = False
    # region name -> Toxiproxy proxy in front of its S3 endpoint (so a region can really be cut)
    s3_proxies: dict[str, str] = field(default_factory=dict)
    # where the server's archive_command spools WAL (a stack started with RESILIENCE_PG_ARCHIVE)
    wal_spool: str | None = None

    def redacted(self) -> dict[str, Any]:
        """A JSON-ready view with every secret replaced by `***`."""
        return {
            "backend": self.backend,
            "admin_dsn": redact_dsn(self.admin_dsn),
            "service_dsn": redact_dsn(self.service_dsn),
            "toxiproxy_url": self.toxiproxy_url,
            "toxiproxy_proxy": self.toxiproxy_proxy,
            "s3": {
                name: {"region": r.region, "endpoint_url": r.endpoint_url, "bucket": r.bucket}
                for name, r in self.s3.items()
            },
            "sentry_dsn": "***" if self.sentry_dsn else None,
            "telegram_api_url": self.telegram_api_url,
            "telegram_bot_token": "***" if self.telegram_bot_token else None,
            "receivers_url": self.receivers_url,
            "pm2_home": self.pm2_home,
            "drill_target": self.drill_target,
            "s3_proxies": dict(self.s3_proxies),
            "wal_spool": self.wal_spool,
        }


class Stack(abc.ABC):
    """A running set of services. Use as a context manager, or `up()` / `down()` by hand."""

    name: str = "abstract"
    controls_postgres: bool = False  # can stop, kill and start the server process itself

    @property
    @abc.abstractmethod
    def endpoints(self) -> Endpoints:
        """Endpoints of the running stack; raises StackError when it is not up."""

    @abc.abstractmethod
    def up(self) -> Endpoints:
        """Start (or attach to) every part and wait until each answers; idempotent."""

    @abc.abstractmethod
    def down(self) -> None:
        """Stop what this stack started and remove what it created; safe to call twice."""

    @abc.abstractmethod
    def status(self) -> dict[str, Any]:
        """Per component: running or not, where, and why not. Never contains secrets."""

    # --- faults on the database server itself (Toxiproxy faults go through resilience.chaos) ---
    def stop_postgres(self) -> None:
        raise NotImplementedError(f"{self.name} backend cannot stop PostgreSQL")

    def kill_postgres(self) -> None:
        raise NotImplementedError(f"{self.name} backend cannot kill PostgreSQL")

    def start_postgres(self) -> None:
        raise NotImplementedError(f"{self.name} backend cannot start PostgreSQL")

    def __enter__(self) -> Stack:
        self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()
