"""The Telegram side of the receivers: `/bot<token>/sendMessage` and `/bot<token>/getMe`.

Alert code must cope with Telegram's answers, so the fake gives them as the Bot API does: the
`{"ok": false, "error_code": N, "description": "..."}` shape for a wrong token (401), an empty
chat id or text, an over-long text or an unknown parse mode (400), an unknown method (404).
Parameters come as JSON, form or multipart bodies or the query string, like the real API takes
them; Werkzeug's request parsing reads all of them. Accepted messages are recorded.
"""

from __future__ import annotations

import hmac
import itertools
import json
import re
import threading
import time
import zlib
from typing import Any, TypedDict
from urllib.parse import parse_qsl

from werkzeug.wrappers import Request, Response

from resilience.drill.fakes.recording import Recorder

TELEGRAM_MAX_TEXT = 4096
TELEGRAM_PARSE_MODES = frozenset({"markdown", "markdownv2", "html"})
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class TelegramRecord(TypedDict, total=False):
    """One recorded Telegram `sendMessage` call that Telegram would have accepted."""

    seq: int
    received_at: str
    method: str
    chat_id: int | str
    text: str
    parse_mode: str | None
    disable_notification: bool
    message_id: int
    date: int
    redacted: bool


class TelegramError(Exception):
    """Answer the call with Telegram's error shape."""

    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


def _params(request: Request) -> dict[str, Any]:
    """The call's parameters: query string, then the body (JSON, form or multipart)."""
    params: dict[str, Any] = request.args.to_dict()
    if not request.get_data():
        return params
    if request.is_json:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise TelegramError(400, "Bad Request: can't parse JSON object")
        params.update(data)
    elif request.mimetype in _FORM_TYPES:
        params.update(request.form.to_dict())
    else:  # no or another content type: read it as a form, Telegram's default
        params.update(parse_qsl(request.get_data(as_text=True), keep_blank_values=True))
    return params


def _chat(value: object) -> tuple[int | str, dict[str, Any]]:
    """Normalise `chat_id` as Telegram does and describe the chat; 400 when empty or unusable."""
    if isinstance(value, bool):
        raise TelegramError(400, "Bad Request: chat not found")
    if isinstance(value, int):
        chat_id: int | str = value
    else:
        text = "" if value is None else str(value).strip()
        if not text:
            raise TelegramError(400, "Bad Request: chat_id is empty")
        if re.fullmatch(r"-?\d+", text):
            chat_id = int(text)
        elif re.fullmatch(r"@[A-Za-z][A-Za-z0-9_]{3,31}", text):
            chat_id = text
        else:
            raise TelegramError(400, "Bad Request: chat not found")
    if isinstance(chat_id, str):
        fake_id = -(10**12) - zlib.crc32(chat_id.lower().encode())
        return chat_id, {"id": fake_id, "type": "channel", "username": chat_id[1:]}
    if chat_id > 0:
        return chat_id, {"id": chat_id, "type": "private", "first_name": "Drill"}
    kind = "supergroup" if str(chat_id).startswith("-100") else "group"
    return chat_id, {"id": chat_id, "type": kind, "title": "Drill chat"}


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    return str(value).strip().lower() in ("true", "1", "yes", "on")


class TelegramBot:
    """One bot of the Bot API: checks the token, answers `getMe`, records `sendMessage`."""

    def __init__(self, token: str, recorder: Recorder) -> None:
        self._token = token.encode()
        self._recorder = recorder
        bot_id = token.partition(":")[0]
        self.user = {
            "id": int(bot_id) if bot_id.isdigit() else 0,
            "is_bot": True,
            "first_name": "Resilience drill receiver",
            "username": "resilience_drill_bot",
        }
        self._message_ids = itertools.count(1)
        self._ids_lock = threading.Lock()

    def __call__(self, request: Request, token: str, method: str) -> Response:
        try:
            result = self._call(request, token, method)
        except TelegramError as exc:
            body = {"ok": False, "error_code": exc.status, "description": exc.description}
            return _json(exc.status, body)
        return _json(200, {"ok": True, "result": result})

    def _call(self, request: Request, token: str, method: str) -> dict[str, Any]:
        if request.method not in ("GET", "POST"):
            raise TelegramError(405, "Method Not Allowed")
        if not hmac.compare_digest(token.encode(), self._token):
            raise TelegramError(401, "Unauthorized")
        method = method.lower()  # Telegram's method names are case-insensitive
        if method == "getme":
            return {
                **self.user,
                "can_join_groups": True,
                "can_read_all_group_messages": False,
                "supports_inline_queries": False,
            }
        if method == "sendmessage":
            return self._send_message(_params(request))
        raise TelegramError(404, "Not Found")

    def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id, chat = _chat(params.get("chat_id"))
        raw_text = params.get("text")
        text = "" if raw_text is None else str(raw_text)
        if not text.strip():
            raise TelegramError(400, "Bad Request: message text is empty")
        if len(text) > TELEGRAM_MAX_TEXT:
            raise TelegramError(400, "Bad Request: message is too long")
        parse_mode = params.get("parse_mode")
        if parse_mode is not None and not isinstance(parse_mode, str):
            raise TelegramError(400, "Bad Request: unsupported parse_mode")
        if parse_mode and parse_mode.lower() not in TELEGRAM_PARSE_MODES:
            raise TelegramError(400, "Bad Request: unsupported parse_mode")
        with self._ids_lock:
            message_id = next(self._message_ids)
        date = int(time.time())
        self._recorder.add(
            "telegram",
            {
                "method": "sendMessage",
                "chat_id": chat_id,
                "text": text,
                "parse_mode": parse_mode or None,
                "disable_notification": _flag(params.get("disable_notification")),
                "message_id": message_id,
                "date": date,
            },
        )
        return {
            "message_id": message_id,
            "from": self.user,
            "chat": chat,
            "date": date,
            "text": text,
        }


def _json(status: int, body: Any) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")
