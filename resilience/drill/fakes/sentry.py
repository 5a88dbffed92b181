"""The Sentry side of the receivers: ingest auth, envelope and store requests, event summaries.

Drills assert on what Sentry would have received, so requests are checked the way Sentry's
ingest does: `POST /api/<project_id>/envelope/` (https://develop.sentry.dev/sdk/envelopes/) and
the legacy `POST /api/<project_id>/store/`, bodies optionally compressed (`Content-Encoding:
gzip`, `deflate` or `br`), the public key taken from `X-Sentry-Auth` (or `Authorization:
Sentry ...`), the `sentry_key` query parameter or the envelope's `dsn` header; every key
presented must equal the expected one, else 401. Envelopes are read by sentry-sdk's own parser
(`sentry_sdk.envelope`), so the fake reads them exactly as the SDK writes them; a thin reader
under it holds senders to the parts of the grammar the SDK trusts them with (declared lengths,
newlines). sentry-sdk does not decompress on the server side, so zlib and brotli do that here.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import json
import uuid
import zlib
from collections.abc import Mapping
from typing import Any, Literal, TypedDict, cast
from urllib.parse import urlsplit

import brotli
from sentry_sdk.envelope import Envelope, Item
from werkzeug.http import parse_dict_header
from werkzeug.wrappers import Request, Response

from resilience.drill.fakes.recording import Recorder
from resilience.errors import InputError

MAX_BODY_BYTES = 20 * 1024 * 1024  # Sentry's limit for a compressed envelope request
MAX_DECODED_BYTES = 50 * 1024 * 1024  # ... and for the envelope after decompression

_Stage = Literal["envelope header", "item header", "payload", "terminator"]


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
    content_type: str | None  # attachments; the envelope spec's default is octet-stream
    attachment_type: str | None
    payload: Any  # other JSON items (session, check_in, client_report, ...)
    redacted: bool  # the redactor changed something: the sender leaked a secret


# --------------------------------------------------------------------------------------------
# Request bodies


def _inflate(data: bytes, wbits: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(data, MAX_DECODED_BYTES + 1)
    if len(out) > MAX_DECODED_BYTES:
        raise InputError(f"request body is larger than {MAX_DECODED_BYTES} bytes decompressed")
    if not inflater.eof:
        raise InputError("compressed request body is truncated")
    return out


def _unbrotli(data: bytes) -> bytes:
    decompressor = brotli.Decompressor()
    out = decompressor.process(data, output_buffer_limit=MAX_DECODED_BYTES + 1)
    if len(out) > MAX_DECODED_BYTES:
        raise InputError(f"request body is larger than {MAX_DECODED_BYTES} bytes decompressed")
    if not decompressor.is_finished():
        raise InputError("compressed request body is truncated")
    return bytes(out)


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
                body = _unbrotli(body)
            else:
                raise InputError(f"unsupported Content-Encoding {coding[:40]!r}")
        except (zlib.error, brotli.error):
            raise InputError(f"request body is not valid {coding} data") from None
    return body


# --------------------------------------------------------------------------------------------
# Envelopes


class _EnvelopeReader(io.BytesIO):
    """The file sentry-sdk's `Envelope.deserialize_from` reads, holding the sender to the spec.

    The SDK reads the envelope header line, then per item a header line and either
    `read(length)` plus the rest of that line, or (without `length`) one more line. It trusts
    the sender where Sentry's ingest does not: a short or negative length, a payload not
    followed by a newline, a blank line where an item header belongs, a header that is JSON but
    no object. This reader rejects those, and notes where each item starts and how long its
    payload is (the SDK keeps event payloads only as parsed JSON).
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self._expect: _Stage = "envelope header"
        self.stage: _Stage = "envelope header"  # what was read last
        self.item_line = b""  # the last item header line
        self.starts: list[int] = []  # byte offset of each item header
        self.sizes: list[int] = []  # payload bytes of each item

    def readline(self, size: int | None = -1, /) -> bytes:
        start = self.tell()
        line = super().readline(size)
        self.stage, self._expect = self._expect, "item header"
        if self.stage == "envelope header":
            if not line.lstrip().startswith(b"{"):
                raise InputError(f"malformed envelope: {self.where} is not a valid JSON object")
        elif self.stage == "item header":
            if line:  # nothing at all is the end of the envelope
                self.starts.append(start)
                self.item_line = line
                if not line.lstrip().startswith(b"{"):
                    raise InputError(f"malformed envelope: {self.where} is not a valid JSON object")
                if not line.endswith(b"\n"):
                    raise InputError(f"malformed envelope: {self.where} has no newline")
                self._expect = "payload"
        elif self.stage == "payload":  # no `length`: the payload is the rest of the line
            self.sizes.append(len(line) - line.endswith(b"\n"))
        elif line not in (b"\n", b""):  # the newline after a payload of declared length
            raise InputError(
                f"malformed envelope: {self.item_type} item payload is not followed by a newline"
            )
        return line

    def read(self, size: object = -1, /) -> bytes:  # the SDK's read(length), nothing else
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InputError(f"malformed envelope: {self.item_type} item has an invalid length")
        data = super().read(size)
        if len(data) < size:
            raise InputError(
                f"malformed envelope: {self.item_type} item declares {size} bytes "
                f"but only {len(data)} follow"
            )
        self.sizes.append(size)
        self.stage, self._expect = "payload", "terminator"
        return data

    @property
    def where(self) -> str:
        return f"item header at byte {self.starts[-1]}" if self.starts else "envelope header"

    @property
    def item_type(self) -> str:
        """The type of the item being read, for messages (its header is valid JSON by now)."""
        with contextlib.suppress(ValueError):
            item_type = json.loads(self.item_line).get("type")
            if isinstance(item_type, str) and item_type:
                return item_type
        return "untyped"


def parse_envelope(data: bytes) -> tuple[Envelope, list[int]]:
    """An uncompressed envelope, parsed by sentry-sdk, and each item's payload size in bytes.

    Raises InputError, saying where, when the envelope breaks the spec's grammar.
    """
    reader = _EnvelopeReader(data)
    try:
        envelope = Envelope.deserialize_from(reader)
    except ValueError:  # a line the SDK could not parse as JSON
        if reader.stage in ("envelope header", "item header"):
            raise InputError(
                f"malformed envelope: {reader.where} is not a valid JSON object"
            ) from None
        raise InputError(
            f"malformed envelope: {reader.item_type} payload is not valid JSON"
        ) from None
    for item, start in zip(envelope.items, reader.starts, strict=True):
        if not isinstance(item.type, str) or not item.type:
            raise InputError(f"malformed envelope: item header at byte {start} has no type")
        if item.type in ("event", "transaction") and not isinstance(item.payload.json, dict):
            raise InputError(f"malformed envelope: {item.type} payload is not a JSON object")
    return envelope, reader.sizes


def normalize_event_id(value: object) -> str | None:
    """Return an event id as Sentry answers it (32 lowercase hex digits); None when absent."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value).hex)
        except ValueError:
            pass
    raise InputError("event_id is not a UUID")


# --------------------------------------------------------------------------------------------
# Event summaries


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


def _item_record(item: Item, size: int, envelope_event_id: str | None) -> SentryRecord:
    item_type = str(item.type)
    record: SentryRecord = {"item_type": item_type, "event_id": envelope_event_id, "length": size}
    if item_type in ("event", "transaction"):
        event = cast(dict[str, Any], item.payload.json)  # an object: parse_envelope checked
        if record["event_id"] is None:  # the envelope header takes precedence when both exist
            record["event_id"] = normalize_event_id(event.get("event_id"))
        record.update(summarize_event(event))
    elif item_type == "attachment":
        record["filename"] = _text(item.headers.get("filename"))
        record["content_type"] = _text(item.headers.get("content_type"))
        record["attachment_type"] = _text(item.headers.get("attachment_type"))
    else:  # unknown types are kept, not rejected (the spec says skip them gracefully)
        with contextlib.suppress(ValueError):
            record["payload"] = json.loads(item.get_bytes())
    return record


# --------------------------------------------------------------------------------------------
# The endpoint


class SentryError(Exception):
    """Answer the request with this status and `{"detail": ...}`, as Sentry's ingest does."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _auth_keys(header: str | None) -> list[str]:
    """The `sentry_key` of an `X-Sentry-Auth` / `Authorization: Sentry ...` header, if any."""
    if not header:
        return []
    text = header.strip()
    if text[:7].lower() == "sentry ":
        text = text[7:]
    key = parse_dict_header(text).get("sentry_key")
    return [] if key is None else [key]


class SentryIngest:
    """`/api/<project_id>/envelope/` and `/store/`: checks the key, records every item."""

    def __init__(self, public_key: str, recorder: Recorder) -> None:
        self._key = public_key.encode()
        self._recorder = recorder

    def __call__(self, request: Request, project_id: str, endpoint: str) -> Response:
        try:
            event_id = self._ingest(request, project_id, endpoint)
        except SentryError as exc:
            return _json(exc.status, {"detail": exc.detail})
        return _json(200, {"id": event_id} if event_id else {})

    def _check(self, presented: list[str]) -> None:
        if not presented:
            raise SentryError(401, "missing authorization information")
        if not all(hmac.compare_digest(key.encode(), self._key) for key in presented):
            raise SentryError(401, "invalid public key")

    def _ingest(self, request: Request, project_id: str, endpoint: str) -> str | None:
        if request.method != "POST":
            raise SentryError(405, "method not allowed")
        presented = _auth_keys(request.headers.get("X-Sentry-Auth"))
        presented += _auth_keys(request.headers.get("Authorization"))
        presented += request.args.getlist("sentry_key")
        if presented:  # reject a wrong key before looking at the body
            self._check(presented)
        try:
            data = decode_body(request.get_data(), request.headers.get("Content-Encoding"))
            if endpoint == "envelope":
                envelope, sizes = parse_envelope(data)
                dsn = envelope.headers.get("dsn")
                if isinstance(dsn, str):
                    presented.append(urlsplit(dsn).username or "")
                self._check(presented)
                event_id = normalize_event_id(envelope.headers.get("event_id"))
                records: list[SentryRecord] = [
                    _item_record(item, size, event_id)
                    for item, size in zip(envelope.items, sizes, strict=True)
                ]
            else:
                self._check(presented)
                records = [_store_record(data)]
                event_id = records[0]["event_id"]
        except InputError as exc:
            raise SentryError(400, str(exc)) from None
        if event_id is None:  # no envelope header id: answer with the event item's own id
            event_id = next((r["event_id"] for r in records if r.get("event_id")), None)
        for record in records:
            self._recorder.add("sentry", {"endpoint": endpoint, "project_id": project_id, **record})
        return event_id


def _store_record(data: bytes) -> SentryRecord:
    try:
        event = json.loads(data)
    except ValueError:
        raise InputError("store payload is not valid JSON") from None
    if not isinstance(event, dict):
        raise InputError("store payload is not a JSON object")
    return {
        "item_type": "transaction" if event.get("type") == "transaction" else "event",
        "event_id": normalize_event_id(event.get("event_id")) or uuid.uuid4().hex,
        "length": len(data),
        **summarize_event(event),
    }


def _json(status: int, body: Any) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")
