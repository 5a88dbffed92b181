"""The alert channels: Sentry's key and Telegram's bot, reached (a real test alert only when
asked)."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import httpx

from resilience.check.findings import HTTP_TIMEOUT, Finding
from resilience.config import Settings


def probe_sentry(settings: Settings, send_test: bool) -> list[Finding]:
    from resilience.alerting.channels import SentryChannel
    from resilience.infra.redact import Redactor

    if settings.sentry_dsn is None:
        return [
            Finding(
                "sentry",
                "warn",
                "RESILIENCE_SENTRY_DSN is not set: no Sentry alerts",
                "set RESILIENCE_SENTRY_DSN",
            )
        ]
    dsn = settings.sentry_dsn.get_secret_value()
    fix = "check RESILIENCE_SENTRY_DSN (Sentry: Project Settings > Client Keys)"
    parts = urlsplit(dsn)
    project = parts.path.rstrip("/").rpartition("/")[2]
    if parts.scheme not in ("http", "https") or not parts.username or not project.isdigit():
        return [Finding("sentry", "fail", "RESILIENCE_SENTRY_DSN is not a valid Sentry DSN", fix)]
    prefix = parts.path.rstrip("/").rpartition("/")[0]
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    url = f"{parts.scheme}://{netloc}{prefix}/api/{project}/envelope/"
    auth = (
        f"Sentry sentry_version=7, sentry_key={parts.username}, "
        "sentry_client=baileys-resilience-check/1"
    )
    try:  # an envelope without items: the key is checked, nothing is recorded
        response = httpx.post(
            url,
            content=b"{}\n",
            headers={"X-Sentry-Auth": auth, "Content-Type": "application/x-sentry-envelope"},
            timeout=HTTP_TIMEOUT,
        )
    except httpx.HTTPError as exc:
        return [Finding("sentry", "fail", f"cannot reach {netloc}: {type(exc).__name__}", fix)]
    if response.status_code in (401, 403):
        return [
            Finding(
                "sentry",
                "fail",
                f"{netloc} refused the DSN's key (HTTP {response.status_code})",
                fix,
            )
        ]
    if response.status_code >= 400:
        return [Finding("sentry", "fail", f"{netloc} answered HTTP {response.status_code}", fix)]
    found = f"{netloc} accepts the DSN's key (project {project})"
    if send_test:
        channel = SentryChannel(dsn, Redactor([dsn]), environment="production")
        try:
            event = channel.event(
                f"baileys-resilience check: test alert from {socket.gethostname()}", level="info"
            )
        finally:
            channel.close()
        if event is None:
            return [Finding("sentry", "fail", found + "; the test event was not sent", fix)]
        found += f"; test event {event} sent"
    return [Finding("sentry", "ok", found)]


def probe_telegram(settings: Settings, send_test: bool) -> list[Finding]:
    from resilience.alerting.channels import TelegramChannel
    from resilience.infra.redact import Redactor

    token = settings.telegram_bot_token.get_secret_value() if settings.telegram_bot_token else None
    if not token and not settings.telegram_chat_id:
        return [
            Finding(
                "telegram",
                "warn",
                "Telegram is not configured: no Telegram alerts",
                "set RESILIENCE_TELEGRAM_BOT_TOKEN and RESILIENCE_TELEGRAM_CHAT_ID",
            )
        ]
    fix = "check RESILIENCE_TELEGRAM_BOT_TOKEN and RESILIENCE_TELEGRAM_CHAT_ID"
    if not token or not settings.telegram_chat_id:
        return [Finding("telegram", "fail", "needs both the bot token and the chat id", fix)]
    api = settings.telegram_api_url.rstrip("/")
    where = urlsplit(api).netloc
    try:
        response = httpx.get(f"{api}/bot{token}/getMe", timeout=HTTP_TIMEOUT)
    except httpx.HTTPError as exc:
        return [Finding("telegram", "fail", f"cannot reach {where}: {type(exc).__name__}", fix)]
    if response.status_code != 200:
        return [
            Finding(
                "telegram",
                "fail",
                f"{where} refused the bot token (HTTP {response.status_code})",
                fix,
            )
        ]
    found = f"{where} knows the bot"
    if send_test:
        channel = TelegramChannel(
            api, token, settings.telegram_chat_id, Redactor([token]), HTTP_TIMEOUT
        )
        if not channel.send(f"baileys-resilience check: test alert from {socket.gethostname()}"):
            return [
                Finding("telegram", "fail", f"{found}; test message: {channel.last_error}", fix)
            ]
        found += "; test message sent"
    return [Finding("telegram", "ok", found)]
