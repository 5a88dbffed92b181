"""A stack that already runs elsewhere (staging), described entirely by settings.

It starts nothing and so stops nothing: `down()` only forgets. Faults are refused unless the
settings mark the target as a drill target (RESILIENCE_DRILL_TARGET=true).
"""

from __future__ import annotations

from typing import Any

import psycopg

from resilience.config import DrillSettings
from resilience.drill.stack.base import Endpoints, S3Region, Stack
from resilience.drill.stack.s3 import REGIONS
from resilience.errors import ConfigError, StackError
from resilience.infra.redact import redact_dsn

REQUIRED = ("admin_dsn", "service_dsn", "toxiproxy_url")


class ExternalStack(Stack):
    name = "external"

    def __init__(self, settings: DrillSettings) -> None:
        self.settings = settings
        self._endpoints: Endpoints | None = None

    def _build(self) -> Endpoints:
        s = self.settings
        missing = [f"RESILIENCE_{f.upper()}" for f in REQUIRED if getattr(s, f) is None]
        if missing:
            raise ConfigError(f"external backend needs {', '.join(missing)}")
        assert s.admin_dsn is not None and s.service_dsn is not None and s.toxiproxy_url
        regions = {}
        for name, region in REGIONS.items():
            url = getattr(s, f"s3_endpoint_{name}")
            if url:
                regions[name] = S3Region(name, region, url, getattr(s, f"s3_bucket_{name}"))
        return Endpoints(
            backend="external",
            admin_dsn=s.admin_dsn.get_secret_value(),
            service_dsn=s.service_dsn.get_secret_value(),
            toxiproxy_url=s.toxiproxy_url,
            toxiproxy_proxy=s.toxiproxy_proxy,
            s3=regions,
            s3_access_key_id=s.s3_access_key_id.get_secret_value() if s.s3_access_key_id else "",
            s3_secret_access_key=(
                s.s3_secret_access_key.get_secret_value() if s.s3_secret_access_key else ""
            ),
            sentry_dsn=s.sentry_dsn.get_secret_value() if s.sentry_dsn else None,
            telegram_api_url=s.telegram_api_url,
            telegram_bot_token=(
                s.telegram_bot_token.get_secret_value() if s.telegram_bot_token else None
            ),
            telegram_chat_id=s.telegram_chat_id,
            drill_target=s.drill_target,
        )

    @property
    def endpoints(self) -> Endpoints:
        if self._endpoints is None:
            self._endpoints = self._build()
        return self._endpoints

    def up(self) -> Endpoints:
        endpoints = self._build()
        try:
            with psycopg.connect(endpoints.admin_dsn, connect_timeout=5):
                pass
        except psycopg.Error as exc:
            raise StackError(
                f"external PostgreSQL at {redact_dsn(endpoints.admin_dsn)} is unreachable: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
            ) from None
        self._endpoints = endpoints
        return endpoints

    def down(self) -> None:
        self._endpoints = None

    def status(self) -> dict[str, Any]:
        try:
            endpoints = self.up()
        except (ConfigError, StackError) as exc:
            return {"backend": "external", "up": False, "error": str(exc)}
        return {"backend": "external", "up": True, "endpoints": endpoints.redacted()}
