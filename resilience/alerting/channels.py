"""Alert channels: Sentry (through the official SDK) and Telegram (Bot API sendMessage).

Every text sent passes a redactor first: DSN passwords and every registered secret (tokens,
keys, passwords) become `***`. A channel without configuration is a no-op that says so
(`enabled` is False); a failing channel never hides the error being reported.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import sentry_sdk

from resilience.config import Settings
from resilience.infra.redact import Redactor

if TYPE_CHECKING:
    from pydantic import SecretStr

log = logging.getLogger(__name__)


class SentryChannel:
    def __init__(self, dsn: str | None, redactor: Redactor, environment: str = "drill") -> None:
        self.redactor = redactor
        self.enabled = bool(dsn)
        self.problem: str | None = None  # why a configured channel is off
        self._client: sentry_sdk.Client | None = None
        if dsn:
            redactor.register(dsn)
            try:
                self._client = sentry_sdk.Client(
                    dsn=dsn,
                    default_integrations=False,
                    environment=environment,
                )
            except Exception as exc:  # an alert channel never stands between operator and exit
                self.enabled = False
                self.problem = (
                    f"RESILIENCE_SENTRY_DSN is not a valid Sentry DSN ({type(exc).__name__})"
                )
                log.warning("%s: Sentry events will not be sent", self.problem)

    def event(
        self,
        message: str,
        *,
        level: str = "error",
        tags: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Send one event; returns its id (None when disabled or the send failed)."""
        if self._client is None:
            return None
        scope = sentry_sdk.Scope(client=self._client)
        for key, value in (tags or {}).items():
            scope.set_tag(key, self.redactor.text(str(value)))
        event: dict[str, Any] = {
            "message": self.redactor.text(message),
            "level": level,
            "extra": self.redactor.data(dict(extra or {})),
            "logger": "baileys-resilience",
        }
        try:
            event_id = self._client.capture_event(event, scope=scope)  # type: ignore[arg-type]
            self._client.flush(timeout=5)
        except Exception as exc:  # an alert that cannot be sent must not hide the incident
            log.warning("sending the Sentry event failed: %s", type(exc).__name__)
            return None
        return event_id

    def close(self) -> None:
        if self._client is not None:
            self._client.close(timeout=5)


class TelegramChannel:
    def __init__(
        self,
        api_url: str,
        token: str | None,
        chat_id: str | None,
        redactor: Redactor,
        timeout: float = 10.0,
    ) -> None:
        self.redactor = redactor
        self.enabled = bool(token and chat_id)
        self.timeout = timeout
        self.problem: str | None = None
        #: why the last send failed (one line, no secret), and how long Telegram asked us to
        #: wait when it answered 429
        self.last_error: str | None = None
        self.retry_after: float | None = None
        if bool(token) != bool(chat_id):
            self.problem = (
                "Telegram needs both RESILIENCE_TELEGRAM_BOT_TOKEN and RESILIENCE_TELEGRAM_CHAT_ID"
            )
        self.api_url = api_url.rstrip("/")
        self._token = token
        self._chat_id = chat_id
        redactor.register(token)

    def send(self, text: str) -> bool:
        """Send one message; False when it was not sent (``last_error`` says why, and
        ``retry_after`` is set when Telegram asked to wait: a 429)."""
        self.last_error, self.retry_after = None, None
        if not self.enabled:
            return False
        try:
            response = httpx.post(
                f"{self.api_url}/bot{self._token}/sendMessage",
                json={"chat_id": self._chat_id, "text": self.redactor.text(text)},
                timeout=self.timeout,
            )
        except httpx.HTTPError as exc:
            self.last_error = f"sending failed: {type(exc).__name__}"
            log.warning("Telegram: %s", self.last_error)
            return False
        if response.status_code != 200:
            self.last_error = f"Telegram answered HTTP {response.status_code}"
            if response.status_code == 429:
                self.retry_after = _retry_after(response)
                self.last_error += f" (retry after {self.retry_after:g} s)"
            log.warning("Telegram: %s", self.last_error)
            return False
        return True


def _retry_after(response: httpx.Response) -> float:
    """The wait a 429 asks for: the Bot API's ``parameters.retry_after``, else the
    ``Retry-After`` header, else 30 s."""
    try:
        value = response.json().get("parameters", {}).get("retry_after")
        if value is not None:
            return max(0.0, float(value))
    except (ValueError, AttributeError, TypeError):
        pass
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return 30.0


@dataclass
class Alerts:
    sentry: SentryChannel
    telegram: TelegramChannel
    redactor: Redactor

    @classmethod
    def from_endpoints(
        cls,
        sentry_dsn: str | None,
        telegram_api_url: str | None,
        telegram_token: str | None,
        telegram_chat_id: str | None,
        secrets: Iterable[str | None] = (),
        timeout: float = 10.0,
    ) -> Alerts:
        redactor = Redactor()
        redactor.register(*secrets)
        return cls(
            SentryChannel(sentry_dsn, redactor),
            TelegramChannel(
                telegram_api_url or "https://api.telegram.org",
                telegram_token,
                telegram_chat_id,
                redactor,
                timeout,
            ),
            redactor,
        )

    @classmethod
    def from_settings(cls, settings: Settings, timeout: float = 10.0) -> Alerts:
        """Channels as settings name them; a channel without settings is off (and says so)."""

        def secret(value: SecretStr | None) -> str | None:
            return value.get_secret_value() if value else None

        return cls.from_endpoints(
            secret(settings.sentry_dsn),
            settings.telegram_api_url,
            secret(settings.telegram_bot_token),
            settings.telegram_chat_id,
            timeout=timeout,
        )

    def close(self) -> None:
        self.sentry.close()


def alert_warnings(settings: Settings) -> list[str]:
    """What is wrong with the configured alert channels, as warnings: an emergency proceeds
    without alerts rather than not at all."""
    alerts = Alerts.from_settings(settings)
    try:
        return [p for p in (alerts.sentry.problem, alerts.telegram.problem) if p]
    finally:
        alerts.close()


@dataclass
class Notified:
    """What one :func:`notify` did, channel by channel."""

    sentry_enabled: bool
    sentry_event: str | None
    telegram_enabled: bool
    telegram_sent: bool


def notify(
    settings: Settings,
    message: str,
    *,
    level: str = "error",
    tags: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
    telegram: bool = True,
) -> Notified:
    """One message through the configured channels: a Sentry event and, unless `telegram` is
    False, a Telegram message; every secret of the settings redacted. A channel that fails is
    logged and reported as not sent, never raised: an alert must not hide what it reports."""
    alerts = Alerts.from_settings(settings)
    alerts.redactor.register(*settings.secret_values())
    try:
        event = alerts.sentry.event(message, level=level, tags=tags, extra=extra)
        sent = alerts.telegram.send(message) if telegram else False
    finally:
        alerts.close()
    return Notified(alerts.sentry.enabled, event, alerts.telegram.enabled, sent)
