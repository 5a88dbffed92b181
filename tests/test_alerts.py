"""Alert channels against the stack's Sentry and Telegram receivers: delivered, and secret-free."""

from __future__ import annotations

import uuid

import pytest

from resilience.alerting.channels import Alerts
from resilience.config import load_settings
from resilience.drill.fakes.receivers import ReceiverClient
from resilience.drill.stack import Stack
from resilience.infra.redact import Redactor

pytestmark = pytest.mark.stack


def test_redactor_removes_dsn_passwords_and_registered_secrets() -> None:
    redactor = Redactor()
    redactor.register("tok:SECRET123", None, "ab")  # too short values are ignored, None too
    text = redactor.text("db postgresql://u:pw1234@h/db failed; token tok:SECRET123; ab")
    assert "pw1234" not in text and "SECRET123" not in text
    assert text.endswith("; ab")
    assert redactor.data({"k": ["tok:SECRET123"]}) == {"k": ["***"]}


def test_sentry_event_arrives_without_secrets(stack: Stack) -> None:
    ep = stack.endpoints
    marker = uuid.uuid4().hex
    password = "Pw" + uuid.uuid4().hex[:10]
    alerts = Alerts.from_endpoints(
        ep.sentry_dsn, ep.telegram_api_url, ep.telegram_bot_token, ep.telegram_chat_id,
        secrets=[password],
    )  # fmt: skip
    try:
        event_id = alerts.sentry.event(
            f"switch failed {marker} at postgresql://svc:{password}@db/x",
            level="warning",
            tags={"company": "acme"},
            extra={"dsn": f"postgresql://svc:{password}@db/x"},
        )
    finally:
        alerts.close()
    assert event_id
    assert ep.receivers_url is not None
    with ReceiverClient(ep.receivers_url) as receivers:
        record = receivers.wait_for("sentry", lambda r: marker in (r.get("message") or ""), 10)
    assert record["level"] == "warning"
    assert record["tags"]["company"] == "acme"
    assert password not in str(record)
    assert not record.get("redacted")  # the receiver found nothing to scrub: we did it


def test_telegram_message_arrives_and_failures_do_not_raise(stack: Stack) -> None:
    ep = stack.endpoints
    marker = uuid.uuid4().hex
    alerts = Alerts.from_endpoints(None, ep.telegram_api_url, ep.telegram_bot_token, "-100")
    assert alerts.sentry.enabled is False and alerts.sentry.event("x") is None
    assert alerts.telegram.send(f"cleanup done {marker}") is True
    assert ep.receivers_url is not None
    with ReceiverClient(ep.receivers_url) as receivers:
        record = receivers.wait_for("telegram", lambda r: marker in r.get("text", ""), 10)
    assert str(record["chat_id"]) == "-100"
    wrong = Alerts.from_endpoints(None, ep.telegram_api_url, "1:wrong-token", "-100")
    assert wrong.telegram.send("x") is False  # 401 from the Bot API: reported, not raised
    unreachable = Alerts.from_endpoints(None, "http://127.0.0.1:9", "1:abcd", "-100")
    assert unreachable.telegram.send("x") is False


def test_channels_come_from_settings_alone(stack: Stack) -> None:
    """The library reads its channels from settings; no stack is asked for its fakes."""
    ep = stack.endpoints
    assert not Alerts.from_settings(load_settings(env_file=None)).sentry.enabled
    assert not Alerts.from_settings(load_settings(env_file=None)).telegram.enabled
    assert ep.sentry_dsn and ep.telegram_bot_token and ep.telegram_chat_id
    own = load_settings(
        env_file=None,
        sentry_dsn=ep.sentry_dsn,
        telegram_api_url=ep.telegram_api_url,
        telegram_bot_token=ep.telegram_bot_token,
        telegram_chat_id=ep.telegram_chat_id,
    )
    alerts = Alerts.from_settings(own)
    assert alerts.sentry.enabled and alerts.telegram.enabled
    assert alerts.telegram.api_url == ep.telegram_api_url
    alerts.close()
