"""Local receivers for alerts: Sentry's ingest protocol and Telegram's Bot API on one loopback port.

Drills must prove that an outage raises the right Sentry event and the right Telegram message,
so the stack runs this small server and points the service's DSN and bot API URL at it. It
parses what arrives the way the real services do and records it for assertions:

* Sentry: `POST /api/<project_id>/envelope/` (the envelope format of
  https://develop.sentry.dev/sdk/envelopes/: a header line, then items, each an item-header line
  with an optional `length` and a payload) and the legacy `POST /api/<project_id>/store/`.
  Bodies may be compressed with `Content-Encoding: gzip`, `deflate` or `br`. The public key is
  taken from `X-Sentry-Auth` (or `Authorization: Sentry ...`), the `sentry_key` query parameter,
  or the envelope's `dsn` header; every key presented must equal the expected one, else 401.
* Telegram: `/bot<token>/sendMessage` and `/bot<token>/getMe`, JSON, form or query parameters,
  with Telegram's answers for a wrong token (401), an empty chat id or text (400), and so on.
* Recordings: one JSON object per line in `<record_dir>/sentry.jsonl` and `telegram.jsonl`, and
  the same lists over HTTP: `GET /_recorded/sentry`, `GET /_recorded/telegram`,
  `DELETE /_recorded` (clears both, files included). `GET /_health` answers 200. A restarted
  receiver reloads the files, so the HTTP view and the files always agree.

Secrets are never recorded: the Sentry key and the bot token are not part of any record, and
any string that still contains one (an alert text quoting the token, say) is stored with the
secret replaced by `***` and the record marked `"redacted": true`, so a test can tell that a
sender leaked it. Request lines in the log have the token and `sentry_key` masked too.

The server is `http.server.ThreadingHTTPServer` from the standard library on purpose: this is a
small test double on loopback, and a framework would add a dependency and start-up time without
adding anything the drills need. Run it detached with
`python -m resilience.drill.fakes.receivers --host 127.0.0.1 --port 0 --record-dir DIR
--ready-file F`;
after binding it writes `{"port": N, "pid": P}` to the ready file atomically, and on SIGTERM or
SIGINT it stops serving, closes its files, removes the ready file and exits 0. In tests, `serve()`
runs the same server in a thread, and `ReceiverClient` reads the recordings over HTTP.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Literal, TypedDict, cast, overload
from urllib.parse import parse_qs, unquote, urlsplit

import brotli
import httpx

from resilience.errors import (
    ConfigError,
    InputError,
    ResilienceError,
    StackError,
    VerificationError,
)

_log = logging.getLogger(__name__)

Kind = Literal["sentry", "telegram"]
KINDS: tuple[Kind, ...] = ("sentry", "telegram")

MAX_BODY_BYTES = 20 * 1024 * 1024  # Sentry's limit for a compressed envelope request
MAX_DECODED_BYTES = 50 * 1024 * 1024  # ... and for the envelope after decompression
TELEGRAM_MAX_TEXT = 4096
TELEGRAM_PARSE_MODES = frozenset({"markdown", "markdownv2", "html"})
SENTRY_KEY_ENV = "RECEIVERS_SENTRY_KEY"
TELEGRAM_TOKEN_ENV = "RECEIVERS_TELEGRAM_TOKEN"
REDACTED = "***"

_SENTRY_PATH = re.compile(r"^/api/(?P<project>\d+)/(?P<endpoint>envelope|store)/?$")
_TELEGRAM_PATH = re.compile(r"^/bot(?P<token>[^/]*)/(?P<method>[A-Za-z]+)/?$")
_TOKEN_IN_PATH = re.compile(r"/bot[^/\s?]*")
_KEY_IN_QUERY = re.compile(r"(sentry_key=)[^&\s]*")


# --------------------------------------------------------------------------------------------
# Record shapes


class SentryRecord(TypedDict, total=False):
    """One recorded Sentry item. Event fields are present for `event` and `transaction` items."""

    seq: int
    received_at: str  # ISO 8601, UTC, when the receiver got the request
    endpoint: Literal["envelope", "store"]
    project_id: str
    item_type: str  # "event", "transaction", "attachment", "session", "client_report", ...
    event_id: str | None  # 32 hex digits, as Sentry answers it
    length: int  # payload bytes
    level: str | None  # as sent; Sentry would default a missing level to "error"
    message: str | None  # the message, else the main exception's value
    exception: dict[str, str | None] | None  # main (last) exception: {"type", "value"}
    tags: dict[str, str]
    timestamp: float | str | None  # the event's own timestamp, as sent
    logger: str | None
    environment: str | None
    release: str | None
    extra: dict[str, Any]
    contexts: dict[str, Any]
    filename: str | None  # attachments
    content_type: str | None
    attachment_type: str | None
    payload: Any  # other JSON items (session, check_in, client_report, ...)
    redacted: bool  # a secret was found in the data and replaced by "***"


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


# --------------------------------------------------------------------------------------------
# Sentry envelope parsing


@dataclass(frozen=True)
class EnvelopeItem:
    """One item of an envelope: its header object and its raw payload bytes."""

    headers: dict[str, Any]
    payload: bytes

    @property
    def type(self) -> str:
        return str(self.headers["type"])


@dataclass(frozen=True)
class Envelope:
    """A parsed Sentry envelope: the envelope header object and its items in order."""

    headers: dict[str, Any]
    items: tuple[EnvelopeItem, ...]


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise InputError(f"malformed envelope: {what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise InputError(f"malformed envelope: {what} is not a JSON object")
    return value


def parse_envelope(body: bytes) -> Envelope:
    """Parse an uncompressed envelope per Sentry's grammar; raise InputError when malformed.

    `Envelope = Headers { "\\n" Item } [ "\\n" ]`, `Item = Headers "\\n" Payload`. With `length` the
    payload is exactly that many bytes, followed by a newline or the end; without it the payload
    runs to the next newline or the end. Nothing but items may follow the final newline.
    """
    newline = body.find(b"\n")
    headers = _json_object(body if newline < 0 else body[:newline], "envelope header")
    pos = len(body) if newline < 0 else newline + 1
    items: list[EnvelopeItem] = []
    while pos < len(body):
        eol = body.find(b"\n", pos)
        if eol < 0:
            raise InputError(f"malformed envelope: item header at byte {pos} has no newline")
        item_headers = _json_object(body[pos:eol], f"item header at byte {pos}")
        item_type = item_headers.get("type")
        if not isinstance(item_type, str) or not item_type:
            raise InputError(f"malformed envelope: item header at byte {pos} has no type")
        start = eol + 1
        length = item_headers.get("length")
        if length is None:
            end = body.find(b"\n", start)
            if end < 0:
                end = len(body)
        else:
            if isinstance(length, bool) or not isinstance(length, int) or length < 0:
                raise InputError(f"malformed envelope: {item_type} item has an invalid length")
            end = start + length
            if end > len(body):
                raise InputError(
                    f"malformed envelope: {item_type} item declares {length} bytes "
                    f"but only {len(body) - start} follow"
                )
            if end < len(body) and body[end] != 0x0A:
                raise InputError(
                    f"malformed envelope: {item_type} item payload is not followed by a newline"
                )
        items.append(EnvelopeItem(item_headers, body[start:end]))
        pos = end + 1
    return Envelope(headers, tuple(items))


def _inflate(data: bytes, wbits: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(data, MAX_DECODED_BYTES + 1)
    if len(out) > MAX_DECODED_BYTES:
        raise InputError(f"request body is larger than {MAX_DECODED_BYTES} bytes decompressed")
    if not inflater.eof:
        raise InputError("compressed request body is truncated")
    return out


def decode_body(body: bytes, content_encoding: str | None) -> bytes:
    """Undo `Content-Encoding` (gzip, deflate, br, identity; several in the order applied)."""
    if not content_encoding:
        return body
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    for coding in reversed(codings):
        try:
            if coding == "identity":
                continue
            if coding in ("gzip", "x-gzip"):
                body = _inflate(body, 16 + zlib.MAX_WBITS)
            elif coding == "deflate":
                try:  # RFC 9110 deflate is zlib-wrapped; some clients send raw deflate
                    body = _inflate(body, zlib.MAX_WBITS)
                except zlib.error:
                    body = _inflate(body, -zlib.MAX_WBITS)
            elif coding == "br":
                decompressor = brotli.Decompressor()
                out = decompressor.process(body, output_buffer_limit=MAX_DECODED_BYTES + 1)
                if len(out) > MAX_DECODED_BYTES:
                    raise InputError(
                        f"request body is larger than {MAX_DECODED_BYTES} bytes decompressed"
                    )
                if not decompressor.is_finished():
                    raise InputError("compressed request body is truncated")
                body = bytes(out)
            else:
                raise InputError(f"unsupported Content-Encoding {coding[:40]!r}")
        except (zlib.error, brotli.error):
            raise InputError(f"request body is not valid {coding} data") from None
    return body


def normalize_event_id(value: object) -> str | None:
    """Return an event id as Sentry answers it (32 lowercase hex digits); None when absent."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return uuid.UUID(value).hex
        except ValueError:
            pass
    raise InputError("event_id is not a UUID")


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _message_text(event: Mapping[str, Any]) -> str | None:
    for field in ("message", "logentry"):
        value = event.get(field)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, dict):
            text = _text(value.get("formatted")) or _text(value.get("message"))
            if text:
                return text
    return None


def _main_exception(event: Mapping[str, Any]) -> dict[str, str | None] | None:
    exc = event.get("exception")
    values = exc.get("values") if isinstance(exc, dict) else exc
    if not isinstance(values, list) or not values or not isinstance(values[-1], dict):
        return None
    main = values[-1]  # Sentry lists a chain oldest first: the last one is what was raised
    return {"type": _text(main.get("type")), "value": _text(main.get("value"))}


def _tags(value: object) -> dict[str, str]:
    pairs: list[Any]
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list):
        pairs = [p for p in value if isinstance(p, list | tuple) and len(p) == 2]
    else:
        return {}
    return {str(k): str(v) for k, v in pairs if v is not None}


def summarize_event(event: Mapping[str, Any]) -> SentryRecord:
    """The fields of an event or transaction payload that drills assert on."""
    exception = _main_exception(event)
    message = _message_text(event) or (exception["value"] if exception else None)
    timestamp = event.get("timestamp")
    extra, contexts = event.get("extra"), event.get("contexts")
    return {
        "level": _text(event.get("level")),
        "message": message,
        "exception": exception,
        "tags": _tags(event.get("tags")),
        "timestamp": timestamp if isinstance(timestamp, int | float | str) else None,
        "logger": _text(event.get("logger")),
        "environment": _text(event.get("environment")),
        "release": _text(event.get("release")),
        "extra": extra if isinstance(extra, dict) else {},
        "contexts": contexts if isinstance(contexts, dict) else {},
    }


def _item_record(item: EnvelopeItem, envelope_event_id: str | None) -> SentryRecord:
    record: SentryRecord = {
        "item_type": item.type,
        "event_id": envelope_event_id,
        "length": len(item.payload),
    }
    if item.type in ("event", "transaction"):
        event = _json_object(item.payload, f"{item.type} payload")
        if record["event_id"] is None:  # the envelope header takes precedence when both exist
            record["event_id"] = normalize_event_id(event.get("event_id"))
        record.update(summarize_event(event))
    elif item.type == "attachment":
        record["filename"] = _text(item.headers.get("filename"))
        record["content_type"] = _text(item.headers.get("content_type"))
        record["attachment_type"] = _text(item.headers.get("attachment_type"))
    else:  # unknown types are kept, not rejected (the spec says skip them gracefully)
        with contextlib.suppress(ValueError):
            record["payload"] = json.loads(item.payload)
    return record


def _sentry_auth_keys(header: str | None) -> list[str]:
    """The `sentry_key` values in an `X-Sentry-Auth` / `Authorization: Sentry ...` header."""
    if not header:
        return []
    text = header.strip()
    if text[:7].lower() == "sentry ":
        text = text[7:]
    keys = []
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if sep and name.strip() == "sentry_key":
            keys.append(value.strip())
    return keys


# --------------------------------------------------------------------------------------------
# Recordings


def _scrub(value: Any, secrets: Sequence[str]) -> tuple[Any, bool]:
    """Replace every occurrence of a secret in strings (keys included); report whether any was."""
    if isinstance(value, str):
        found = False
        for secret in secrets:
            if secret in value:
                value, found = value.replace(secret, REDACTED), True
        return value, found
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        hit = False
        for key, item in value.items():
            new_key, k_hit = _scrub(key, secrets)
            out[new_key], v_hit = _scrub(item, secrets)
            hit = hit or k_hit or v_hit
        return out, hit
    if isinstance(value, list | tuple):
        items = [_scrub(v, secrets) for v in value]
        return [v for v, _ in items], any(h for _, h in items)
    return value, False


class Recorder:
    """Thread-safe lists of records per kind, mirrored to `<dir>/<kind>.jsonl` line by line."""

    def __init__(self, record_dir: Path, secrets: Sequence[str]) -> None:
        self.record_dir = Path(record_dir)
        # Longest first, so a token is replaced whole before its secret half is.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._lock = threading.Lock()
        self._records: dict[Kind, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
        self._seq = 0
        try:
            self.record_dir.mkdir(parents=True, exist_ok=True)
            for kind in KINDS:
                self._load(kind)
            self._files: dict[Kind, IO[str]] = {
                kind: self.path(kind).open("a", encoding="utf-8") for kind in KINDS
            }
        except OSError as exc:
            raise StackError(
                f"receivers cannot write recordings in {self.record_dir}: {exc.strerror}"
            ) from None

    def path(self, kind: Kind) -> Path:
        return self.record_dir / f"{kind}.jsonl"

    def _load(self, kind: Kind) -> None:
        path = self.path(kind)
        if not path.exists():
            return
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                record = json.loads(line)
            except ValueError:
                _log.warning("skipping unreadable line %d of %s", number, path)
                continue
            if isinstance(record, dict):
                self._records[kind].append(record)
                seq = record.get("seq")
                if isinstance(seq, int):
                    self._seq = max(self._seq, seq)

    def add(self, kind: Kind, record: Mapping[str, Any]) -> dict[str, Any]:
        """Scrub, number, timestamp and store one record; return what was stored."""
        clean, hit = _scrub(dict(record), self._secrets)
        with self._lock:
            self._seq += 1
            stored = {
                "seq": self._seq,
                "received_at": datetime.now(UTC).isoformat(),
                **clean,
                "redacted": hit,
            }
            handle = self._files[kind]
            handle.write(json.dumps(stored, ensure_ascii=False, sort_keys=False) + "\n")
            handle.flush()
            self._records[kind].append(stored)
        return stored

    def list(self, kind: Kind) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._records[kind]]

    def clear(self) -> None:
        with self._lock:
            for kind in KINDS:
                self._records[kind].clear()
                self._files[kind].seek(0)
                self._files[kind].truncate()
                self._files[kind].flush()

    def close(self) -> None:
        with self._lock:
            for handle in self._files.values():
                handle.close()


# --------------------------------------------------------------------------------------------
# HTTP server


class _Reply(Exception):
    """Internal: stop handling and answer with this status and JSON body."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _tg_error(status: int, description: str) -> _Reply:
    return _Reply(status, {"ok": False, "error_code": status, "description": description})


class ReceiverServer(ThreadingHTTPServer):
    """The receivers' HTTP server; `serve()` builds one and runs it in a thread."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        recorder: Recorder,
        sentry_key: str,
        telegram_token: str,
    ) -> None:
        self.recorder = recorder
        self.sentry_key = sentry_key
        self.telegram_token = telegram_token
        self.bot_id = int(telegram_token.split(":", 1)[0]) if telegram_token[:1].isdigit() else 0
        self.message_ids = iter(range(1, 1 << 62))
        self.ids_lock = threading.Lock()
        self._serving = threading.Event()
        super().__init__(address, _Handler)

    @property
    def host(self) -> str:
        return str(self.server_address[0])

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        host = self.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver's default prints a traceback to stderr; a dropped client is not news.
        _log.debug("connection from %s ended with an error", client_address, exc_info=True)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._serving.set()
        try:
            super().serve_forever(poll_interval)
        finally:
            self._serving.clear()

    def stop(self) -> None:
        """Stop serving (if running), close the socket and the recording files; idempotent."""
        if self._serving.is_set():
            self.shutdown()
        self.server_close()
        self.recorder.close()

    def redact(self, text: str) -> str:
        text = _TOKEN_IN_PATH.sub("/bot" + REDACTED, text)
        text = _KEY_IN_QUERY.sub(r"\1" + REDACTED, text)
        for secret in (self.telegram_token, self.sentry_key):
            text = text.replace(secret, REDACTED)
        return text


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "resilience-receivers/1"
    timeout = 60  # an idle keep-alive connection must not hold a thread forever

    @property
    def srv(self) -> ReceiverServer:
        return cast(ReceiverServer, self.server)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s %s", self.address_string(), self.srv.redact(format % args))

    # -- plumbing ------------------------------------------------------------------------------

    def _send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw_length = self.headers.get("Content-Length")
        if not raw_length:
            return b""
        try:
            length = int(raw_length)
        except ValueError:
            raise _Reply(400, {"detail": "invalid Content-Length"}) from None
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            raise _Reply(413, {"detail": f"request body over {MAX_BODY_BYTES} bytes"})
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                raise _Reply(400, {"detail": "invalid chunked body"}) from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                self.close_connection = True
                raise _Reply(413, {"detail": f"request body over {MAX_BODY_BYTES} bytes"})
            chunks.append(self.rfile.read(size))
            self.rfile.readline(3)

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
            url = urlsplit(self.path)
            path = url.path
            if path.startswith("/_"):
                self._internal(path)
                return
            if match := _SENTRY_PATH.match(path):
                self._sentry(match["project"], match["endpoint"], url.query, body)
                return
            if match := _TELEGRAM_PATH.match(path):
                self._telegram(unquote(match["token"]), match["method"], url.query, body)
                return
            raise _Reply(404, {"detail": "not found"})
        except _Reply as reply:
            self._send_json(reply.status, reply.body)
        except Exception:
            _log.exception("receivers failed on %s %s", self.command, self.srv.redact(self.path))
            self._send_json(500, {"detail": "internal error in the receiver"})

    do_GET = do_POST = do_DELETE = do_PUT = _dispatch

    # -- our own endpoints ---------------------------------------------------------------------

    def _internal(self, path: str) -> None:
        path = path.rstrip("/")
        if path == "/_health" and self.command == "GET":
            self._send_json(200, {"ok": True})
        elif path in ("/_recorded/sentry", "/_recorded/telegram") and self.command == "GET":
            kind = cast(Kind, path.rsplit("/", 1)[1])
            self._send_json(200, self.srv.recorder.list(kind))
        elif path == "/_recorded" and self.command == "DELETE":
            self.srv.recorder.clear()
            self._send_json(200, {"cleared": True})
        else:
            raise _Reply(404 if self.command in ("GET", "DELETE") else 405, {"detail": "not found"})

    # -- Sentry --------------------------------------------------------------------------------

    def _check_sentry_key(self, presented: list[str]) -> None:
        if not presented:
            raise _Reply(401, {"detail": "missing authorization information"})
        expected = self.srv.sentry_key.encode()
        if not all(hmac.compare_digest(key.encode(), expected) for key in presented):
            raise _Reply(401, {"detail": "invalid public key"})

    def _sentry(self, project_id: str, endpoint: str, query: str, body: bytes) -> None:
        if self.command != "POST":
            raise _Reply(405, {"detail": "method not allowed"})
        presented = _sentry_auth_keys(self.headers.get("X-Sentry-Auth"))
        presented += _sentry_auth_keys(self.headers.get("Authorization"))
        presented += parse_qs(query).get("sentry_key", [])
        if presented:  # reject a wrong key before looking at the body
            self._check_sentry_key(presented)
        try:
            data = decode_body(body, self.headers.get("Content-Encoding"))
            if endpoint == "envelope":
                envelope = parse_envelope(data)
                dsn = envelope.headers.get("dsn")
                if isinstance(dsn, str):
                    presented.append(urlsplit(dsn).username or "")
                self._check_sentry_key(presented)
                event_id = normalize_event_id(envelope.headers.get("event_id"))
                records: list[Mapping[str, Any]] = [
                    _item_record(item, event_id) for item in envelope.items
                ]
            else:
                self._check_sentry_key(presented)
                event = _json_object(data, "store payload")
                event_id = normalize_event_id(event.get("event_id")) or uuid.uuid4().hex
                item_type = "transaction" if event.get("type") == "transaction" else "event"
                records = [
                    {
                        "item_type": item_type,
                        "event_id": event_id,
                        "length": len(data),
                        **summarize_event(event),
                    }
                ]
        except InputError as exc:
            raise _Reply(400, {"detail": str(exc)}) from None
        if event_id is None:  # no envelope header id: answer with the event item's own id
            event_id = next((r["event_id"] for r in records if r.get("event_id")), None)
        for record in records:
            self.srv.recorder.add(
                "sentry", {"endpoint": endpoint, "project_id": project_id, **record}
            )
        self._send_json(200, {"id": event_id} if event_id else {})

    # -- Telegram ------------------------------------------------------------------------------

    def _telegram_params(self, query: str, body: bytes) -> dict[str, Any]:
        params: dict[str, Any] = {k: v[0] for k, v in parse_qs(query).items()}
        content_type = self.headers.get("Content-Type", "").lower()
        if not body:
            return params
        if content_type.startswith("application/json"):
            try:
                data = json.loads(body)
            except ValueError:
                raise _tg_error(400, "Bad Request: can't parse JSON object") from None
            if not isinstance(data, dict):
                raise _tg_error(400, "Bad Request: can't parse JSON object")
            params.update(data)
        elif content_type.startswith("multipart/form-data"):
            head = f"Content-Type: {self.headers.get('Content-Type')}\r\n\r\n".encode()
            message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                payload = part.get_payload(decode=True)
                if isinstance(name, str) and isinstance(payload, bytes):
                    params[name] = payload.decode("utf-8", "replace")
        else:  # application/x-www-form-urlencoded, Telegram's default
            form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
            params.update({k: v[0] for k, v in form.items()})
        return params

    def _bot_user(self) -> dict[str, Any]:
        return {
            "id": self.srv.bot_id,
            "is_bot": True,
            "first_name": "Resilience drill receiver",
            "username": "resilience_drill_bot",
        }

    def _telegram(self, token: str, method: str, query: str, body: bytes) -> None:
        if self.command not in ("GET", "POST"):
            raise _tg_error(405, "Method Not Allowed")
        if not hmac.compare_digest(token.encode(), self.srv.telegram_token.encode()):
            raise _tg_error(401, "Unauthorized")
        method = method.lower()  # Telegram's method names are case-insensitive
        if method == "getme":
            result = {
                **self._bot_user(),
                "can_join_groups": True,
                "can_read_all_group_messages": False,
                "supports_inline_queries": False,
            }
            self._send_json(200, {"ok": True, "result": result})
            return
        if method != "sendmessage":
            raise _tg_error(404, "Not Found")
        params = self._telegram_params(query, body)
        chat_id, chat = _telegram_chat(params.get("chat_id"))
        raw_text = params.get("text")
        text = "" if raw_text is None else str(raw_text)
        if not text.strip():
            raise _tg_error(400, "Bad Request: message text is empty")
        if len(text) > TELEGRAM_MAX_TEXT:
            raise _tg_error(400, "Bad Request: message is too long")
        parse_mode = params.get("parse_mode")
        if parse_mode is not None and not isinstance(parse_mode, str):
            raise _tg_error(400, "Bad Request: unsupported parse_mode")
        if parse_mode and parse_mode.lower() not in TELEGRAM_PARSE_MODES:
            raise _tg_error(400, "Bad Request: unsupported parse_mode")
        silent = _telegram_bool(params.get("disable_notification"))
        with self.srv.ids_lock:
            message_id = next(self.srv.message_ids)
        date = int(time.time())
        self.srv.recorder.add(
            "telegram",
            {
                "method": "sendMessage",
                "chat_id": chat_id,
                "text": text,
                "parse_mode": parse_mode or None,
                "disable_notification": silent,
                "message_id": message_id,
                "date": date,
            },
        )
        result = {
            "message_id": message_id,
            "from": self._bot_user(),
            "chat": chat,
            "date": date,
            "text": text,
        }
        self._send_json(200, {"ok": True, "result": result})


def _telegram_chat(value: object) -> tuple[int | str, dict[str, Any]]:
    """Normalise `chat_id` as Telegram does and describe the chat; 400 when empty or unusable."""
    if isinstance(value, bool):
        raise _tg_error(400, "Bad Request: chat not found")
    if isinstance(value, int):
        chat_id: int | str = value
    else:
        text = "" if value is None else str(value).strip()
        if not text:
            raise _tg_error(400, "Bad Request: chat_id is empty")
        if re.fullmatch(r"-?\d+", text):
            chat_id = int(text)
        elif re.fullmatch(r"@[A-Za-z][A-Za-z0-9_]{3,31}", text):
            chat_id = text
        else:
            raise _tg_error(400, "Bad Request: chat not found")
    if isinstance(chat_id, str):
        fake_id = -(10**12) - zlib.crc32(chat_id.lower().encode())
        return chat_id, {"id": fake_id, "type": "channel", "username": chat_id[1:]}
    if chat_id > 0:
        return chat_id, {"id": chat_id, "type": "private", "first_name": "Drill"}
    kind = "supergroup" if str(chat_id).startswith("-100") else "group"
    return chat_id, {"id": chat_id, "type": kind, "title": "Drill chat"}


def _telegram_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    return str(value).strip().lower() in ("true", "1", "yes", "on")


# --------------------------------------------------------------------------------------------
# Public entry points


def serve(
    host: str,
    port: int,
    record_dir: Path | str,
    sentry_key: str,
    telegram_token: str,
) -> tuple[ReceiverServer, threading.Thread]:
    """Bind the receivers and serve them in a daemon thread; stop with `server.stop()`.

    Port 0 picks a free port (read it from `server.port`). Raises ConfigError for an empty key
    or token, StackError when the address cannot be bound or the record dir is not writable.
    """
    if not sentry_key:
        raise ConfigError("receivers need a Sentry public key (--sentry-key)")
    if not telegram_token:
        raise ConfigError("receivers need a Telegram bot token (--telegram-token)")
    if not 0 <= port <= 65535:
        raise ConfigError(f"receivers port {port} is out of range 0-65535")
    secrets = [sentry_key, telegram_token]
    token_secret = telegram_token.partition(":")[2]
    if len(token_secret) >= 8:
        secrets.append(token_secret)
    recorder = Recorder(Path(record_dir), secrets)
    try:
        server = ReceiverServer((host, port), recorder, sentry_key, telegram_token)
    except OSError as exc:
        recorder.close()
        raise StackError(
            f"receivers cannot listen on {host}:{port}: {exc.strerror or exc}; "
            "pick another port (0 picks a free one) or stop what holds it"
        ) from None
    thread = threading.Thread(target=server.serve_forever, name="receivers", daemon=True)
    thread.start()
    return server, thread


def write_ready_file(path: Path, port: int, pid: int) -> None:
    """Write `{"port": N, "pid": P}` so that a reader never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ready-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"port": port, "pid": pid}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ReceiverClient:
    """Reads and clears the receivers' recordings over HTTP; `wait_for` polls with a deadline."""

    def __init__(self, base_url: str, *, timeout: float = 5.0, poll_interval: float = 0.05) -> None:
        self.base_url = base_url.rstrip("/")
        self.poll_interval = poll_interval
        # trust_env=False: loopback traffic must not go through a proxy from the environment
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, trust_env=False)

    def __enter__(self) -> ReceiverClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str) -> Any:
        try:
            response = self._http.request(method, path)
        except httpx.HTTPError as exc:
            raise StackError(
                f"receivers at {self.base_url} cannot be reached ({type(exc).__name__}): "
                "is the stack up?"
            ) from None
        if response.status_code != 200:
            raise StackError(
                f"receivers at {self.base_url} answered {response.status_code} to {method} {path}"
            )
        return response.json()

    def healthy(self) -> bool:
        try:
            return bool(self._request("GET", "/_health").get("ok"))
        except StackError:
            return False

    def sentry_events(self) -> list[SentryRecord]:
        """Every recorded Sentry item (events, transactions, attachments, ...), oldest first."""
        return cast(list[SentryRecord], self._request("GET", "/_recorded/sentry"))

    def telegram_messages(self) -> list[TelegramRecord]:
        """Every recorded Telegram message, oldest first."""
        return cast(list[TelegramRecord], self._request("GET", "/_recorded/telegram"))

    def clear(self) -> None:
        """Forget both recordings (files included)."""
        self._request("DELETE", "/_recorded")

    @overload
    def wait_for(
        self,
        kind: Literal["sentry"],
        predicate: Callable[[SentryRecord], bool],
        timeout: float = ...,
    ) -> SentryRecord: ...

    @overload
    def wait_for(
        self,
        kind: Literal["telegram"],
        predicate: Callable[[TelegramRecord], bool],
        timeout: float = ...,
    ) -> TelegramRecord: ...

    def wait_for(self, kind: Kind, predicate: Callable[[Any], bool], timeout: float = 10.0) -> Any:
        """The first record of `kind` matching `predicate`; VerificationError after `timeout` s."""
        if kind not in KINDS:
            raise InputError(f"unknown recording kind {kind!r}: use 'sentry' or 'telegram'")
        deadline = time.monotonic() + timeout
        while True:
            records: list[Any] = (
                self.sentry_events() if kind == "sentry" else self.telegram_messages()
            )
            for record in records:
                if predicate(record):
                    return record
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise VerificationError(
                    f"no {kind} record matched within {timeout:g} s "
                    f"({len(records)} recorded, none matching)"
                )
            time.sleep(min(self.poll_interval, remaining))


# --------------------------------------------------------------------------------------------
# Detached process


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m resilience.drill.fakes.receivers",
        description="Local Sentry and Telegram Bot API receivers that record what arrives.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--record-dir", type=Path, required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument(
        "--sentry-key",
        default=os.environ.get(SENTRY_KEY_ENV, ""),
        help=f"expected Sentry public key (default: ${SENTRY_KEY_ENV})",
    )
    parser.add_argument(
        "--telegram-token",
        default=os.environ.get(TELEGRAM_TOKEN_ENV, ""),
        help=f"expected bot token (default: ${TELEGRAM_TOKEN_ENV})",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s receivers %(levelname)s %(message)s",
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server, thread = serve(
            args.host, args.port, args.record_dir, args.sentry_key, args.telegram_token
        )
    except ResilienceError as exc:
        _log.error("%s", exc)
        return exc.exit_code
    ready: Path = args.ready_file
    try:
        write_ready_file(ready, server.port, os.getpid())
        _log.info("listening on %s, recording to %s", server.url, args.record_dir)
        while not stop.wait(0.5) and thread.is_alive():
            pass
    except OSError as exc:
        _log.error("receivers cannot write the ready file %s: %s", ready, exc.strerror)
        return StackError.exit_code
    finally:
        server.stop()
        thread.join(timeout=10)
        ready.unlink(missing_ok=True)
    _log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
