"""The Sentry/Telegram receivers, run as the real detached process the stack starts.

Envelopes are built by hand from the spec (and sent by the official `sentry_sdk` when it is
importable); Telegram calls are plain HTTP like every bot library makes. Everything is asserted
through HTTP against the running fake, framing (chunked bodies) and envelope grammar included.
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import brotli
import httpx
import pytest

from resilience.drill.fakes.receivers import ReceiverClient, serve
from resilience.errors import ConfigError, StackError, VerificationError
from resilience.infra.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
KEY = secrets.token_hex(16)
TOKEN = f"{secrets.randbelow(9 * 10**8) + 10**8}:{secrets.token_urlsafe(27)}"
TOKEN_SECRET = TOKEN.split(":", 1)[1]
BOT_ID = int(TOKEN.split(":", 1)[0])
CHAT = -1001234567890
READY_TIMEOUT = 30.0


@dataclass
class Receiver:
    proc: subprocess.Popen[bytes]
    port: int
    ready_file: Path
    record_dir: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_receiver(
    workdir: Path, *args: str, env: dict[str, str] | None = None, port: int = 0
) -> tuple[subprocess.Popen[bytes], Path, Path, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    ready, record_dir, log = workdir / "ready.json", workdir / "rec", workdir / "stderr.log"
    cmd = [
        sys.executable, "-m", "resilience.drill.fakes.receivers",
        "--host", "127.0.0.1", "--port", str(port),
        "--record-dir", str(record_dir), "--ready-file", str(ready), *args,
    ]  # fmt: skip
    with log.open("wb") as err:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, **(env or {})}
        )
    return proc, ready, record_dir, log


def wait_ready(proc: subprocess.Popen[bytes], ready: Path, log: Path) -> int:
    def ready_info() -> dict[str, int] | None:
        if ready.exists():  # written atomically: never seen half-written
            return dict(json.loads(ready.read_text()))
        if proc.poll() is not None:
            raise StackError(f"receiver exited with {proc.returncode}: {log.read_text()}")
        return None

    def no_ready_file(last: Exception | None) -> StackError:
        proc.kill()
        return StackError(
            f"receiver wrote no ready file within {READY_TIMEOUT} s: {log.read_text()}"
        )

    info = wait_until(ready_info, READY_TIMEOUT, "receiver", on_timeout=no_ready_file)
    assert info["pid"] == proc.pid
    return int(info["port"])


def port_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    workdir = tmp_path_factory.mktemp("receivers")
    proc, ready, record_dir, log = start_receiver(
        workdir, "--sentry-key", KEY, "--telegram-token", TOKEN
    )
    port = wait_ready(proc, ready, log)
    yield Receiver(proc, port, ready, record_dir, log)
    proc.terminate()
    assert proc.wait(timeout=30) == 0, log.read_text()
    assert not ready.exists()
    assert port_closed(port)


@pytest.fixture
def client(receiver: Receiver) -> Iterator[ReceiverClient]:
    with ReceiverClient(receiver.url) as rc:
        rc.clear()
        yield rc


@pytest.fixture(scope="module")
def http(receiver: Receiver) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=receiver.url, trust_env=False, timeout=10) as c:
        yield c


# --- helpers ----------------------------------------------------------------------------------


def envelope(
    header: dict[str, Any],
    items: list[tuple[dict[str, Any], bytes]],
    *,
    final_newline: bool = True,
) -> bytes:
    parts = [json.dumps(header).encode()]
    for item_header, payload in items:
        parts += [json.dumps(item_header).encode(), payload]
    body = b"\n".join(parts)
    return body + b"\n" if final_newline else body


def event_payload(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def compress(body: bytes, encoding: str | None) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body)
    if encoding == "br":
        return bytes(brotli.compress(body))
    if encoding == "deflate":
        return zlib.compress(body)
    if encoding == "raw-deflate":
        deflater = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return deflater.compress(body) + deflater.flush()
    return body


def post_envelope(
    http: httpx.Client,
    body: bytes,
    *,
    encoding: str | None = None,
    auth: str | None = "header",
    key: str = KEY,
    project: int = 42,
    endpoint: str = "envelope",
) -> httpx.Response:
    headers = {
        "Content-Type": "application/x-sentry-envelope"
        if endpoint == "envelope"
        else "application/json"
    }
    if encoding:
        headers["Content-Encoding"] = "deflate" if encoding == "raw-deflate" else encoding
    params = {}
    if auth == "header":
        headers["X-Sentry-Auth"] = f"Sentry sentry_key={key}, sentry_version=7, sentry_client=t/1"
    elif auth == "query":
        params["sentry_key"] = key
    return http.post(
        f"/api/{project}/{endpoint}/",
        content=compress(body, encoding),
        headers=headers,
        params=params,
    )


# --- Sentry: the official SDK -----------------------------------------------------------------


def test_official_sentry_sdk_events_are_recorded(
    receiver: Receiver, client: ReceiverClient
) -> None:
    sentry_sdk = pytest.importorskip(
        "sentry_sdk", reason="sentry-sdk is not installed (not a project dependency)"
    )
    dsn = f"http://{KEY}@127.0.0.1:{receiver.port}/42"
    sdk = sentry_sdk.Client(
        dsn=dsn,
        default_integrations=False,
        environment="drill",
        release="resilience@test",
        http_proxy="",
    )
    try:
        with sentry_sdk.isolation_scope() as scope:  # leaves no global client behind
            scope.set_client(sdk)
            with sentry_sdk.new_scope() as tagged:
                tagged.set_tag("scenario", "pg-down")
                message_id = sentry_sdk.capture_message("slow query over 500 ms", level="warning")
            try:
                raise ValueError("pool exhausted: 6 waiters")
            except ValueError:
                exception_id = sentry_sdk.capture_exception()
        sdk.flush(timeout=10)
    finally:
        sdk.close()
    assert message_id and exception_id

    message = client.wait_for("sentry", lambda r: r["event_id"] == message_id, timeout=15)
    assert message["item_type"] == "event"
    assert message["level"] == "warning"
    assert message["message"] == "slow query over 500 ms"
    assert message["tags"]["scenario"] == "pg-down"
    assert message["environment"] == "drill"
    assert message["release"] == "resilience@test"
    assert message["project_id"] == "42"
    failure = client.wait_for("sentry", lambda r: r["event_id"] == exception_id, timeout=15)
    assert failure["level"] == "error"
    assert failure["exception"] == {"type": "ValueError", "value": "pool exhausted: 6 waiters"}
    assert failure["message"] == "pool exhausted: 6 waiters"


# --- Sentry: hand-built envelopes -------------------------------------------------------------


@pytest.mark.parametrize("encoding", [None, "gzip", "br", "deflate", "raw-deflate"])
def test_envelope_in_every_encoding_is_recorded(
    http: httpx.Client, client: ReceiverClient, encoding: str | None
) -> None:
    event_id = uuid.uuid4().hex
    payload = event_payload(
        event_id=event_id,
        level="warning",
        timestamp=1700000000.5,
        message={"formatted": f"slow query ({encoding})", "params": []},
        tags=[["alert", "slow_query"], ["company", "acme"]],
        environment="drill",
        extra={"duration_ms": 812},
    )
    body = envelope(
        {"event_id": event_id, "sent_at": "2024-01-01T00:00:00Z"},
        [({"type": "event", "length": len(payload)}, payload)],
    )
    response = post_envelope(http, body, encoding=encoding)
    assert response.status_code == 200, response.text
    assert response.json() == {"id": event_id}

    [record] = client.sentry_events()
    assert record["endpoint"] == "envelope"
    assert record["item_type"] == "event"
    assert record["event_id"] == event_id
    assert record["level"] == "warning"
    assert record["message"] == f"slow query ({encoding})"
    assert record["tags"] == {"alert": "slow_query", "company": "acme"}
    assert record["timestamp"] == 1700000000.5
    assert record["extra"] == {"duration_ms": 812}
    assert record["redacted"] is False


def test_multi_item_envelope_with_and_without_length(
    http: httpx.Client, client: ReceiverClient
) -> None:
    event_id = str(uuid.uuid4())  # dashed form: answered as 32 hex digits like Sentry does
    attachment = b"\xef\xbb\xbfHello\r\n"  # a newline inside: needs `length`
    exception = {"values": [{"type": "OSError", "value": "first"}, {"type": "X", "value": "main"}]}
    body = envelope(
        {"event_id": event_id, "dsn": f"http://{KEY}@127.0.0.1/42"},
        [
            (
                {"type": "attachment", "length": len(attachment), "filename": "hello.txt"},
                attachment,
            ),
            ({"type": "event"}, event_payload(level="error", exception=exception)),
            ({"type": "attachment", "length": 0}, b""),
            ({"type": "session"}, b'{"started":"2020-02-07T14:16:00Z","status":"ok"}'),
        ],
        final_newline=False,
    )
    response = post_envelope(http, body, encoding="gzip")
    assert response.status_code == 200, response.text
    assert response.json() == {"id": uuid.UUID(event_id).hex}

    records = client.sentry_events()
    assert [r["item_type"] for r in records] == ["attachment", "event", "attachment", "session"]
    first, event, empty, session = records
    assert (first["length"], first["filename"]) == (10, "hello.txt")
    assert empty["length"] == 0
    assert event["event_id"] == uuid.UUID(event_id).hex
    assert event["exception"] == {"type": "X", "value": "main"}
    assert event["message"] == "main"
    assert session["payload"] == {"started": "2020-02-07T14:16:00Z", "status": "ok"}
    assert all(r["event_id"] == uuid.UUID(event_id).hex for r in records)


def test_envelope_without_header_event_id_answers_with_the_event_id(
    http: httpx.Client, client: ReceiverClient
) -> None:
    event_id = uuid.uuid4().hex
    body = envelope({}, [({"type": "event"}, event_payload(event_id=event_id, message="m"))])
    response = post_envelope(http, body)
    assert response.json() == {"id": event_id}
    assert client.sentry_events()[0]["event_id"] == event_id


@pytest.mark.parametrize(
    ("body", "encoding", "detail"),
    [
        (b'{"event_id":"x"\n{"type":"event"}\n{}\n', None, "envelope header"),
        (b'{}\n{"length":2}\n{}\n', None, "no type"),
        (b'{}\n{"type":"event","length":50}\n{"message":"m"}\n', None, "declares 50 bytes"),
        (b'{}\n{"type":"event","length":2}\n{}X\n', None, "not followed by a newline"),
        (b'{}\n{"type":"event","length":-1}\n{}\n', None, "invalid length"),
        (b'{}\n{"type":"event"}\nnot json\n', None, "event payload"),
        (b'{}\n{"type":"event"}', None, "no newline"),
        (b'{}\n{"type":"event"}\n{}\n', "br-garbage", "not valid br"),
        (b'{"event_id":"not-a-uuid"}\n', None, "event_id"),
    ],
)
def test_malformed_envelopes_answer_400_and_record_nothing(
    http: httpx.Client, client: ReceiverClient, body: bytes, encoding: str | None, detail: str
) -> None:
    headers = {"X-Sentry-Auth": f"Sentry sentry_key={KEY}"}
    if encoding == "br-garbage":
        headers["Content-Encoding"] = "br"
    response = http.post("/api/42/envelope/", content=body, headers=headers)
    assert response.status_code == 400
    assert detail in response.json()["detail"]
    assert client.sentry_events() == []


SPEC_ID = "9ec79c33ec9942ab8353589fcb2e04dc"
TWO_EMPTY = (
    b'{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc"}\n'
    b'{"type":"attachment","length":0}\n\n{"type":"attachment","length":0}\n'
)


@pytest.mark.parametrize(
    ("body", "items"),
    [
        (TWO_EMPTY, [("attachment", 0, "application/octet-stream")] * 2),
        (TWO_EMPTY + b"\n", [("attachment", 0, "application/octet-stream")] * 2),
        (
            b'{}\n{"type":"attachment"}\nhelloworld',
            [("attachment", 10, "application/octet-stream")],
        ),
        (
            b'{}\n{"type":"attachment"}\nhelloworld\n',
            [("attachment", 10, "application/octet-stream")],
        ),
        (  # \r is payload, per the spec
            b'{}\n{"type":"attachment","content_type":"text/plain"}\nhello\r\n',
            [("attachment", 6, "text/plain")],
        ),
        (b'{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc"}', []),
    ],
)
def test_spec_examples_are_recorded_item_by_item(
    http: httpx.Client, client: ReceiverClient, body: bytes, items: list[tuple[str, int, str]]
) -> None:
    response = post_envelope(http, body)
    assert response.status_code == 200, response.text
    if body.startswith(b'{"event_id"'):
        assert response.json() == {"id": SPEC_ID}
    records = client.sentry_events()
    assert [(r["item_type"], r["length"], r["content_type"]) for r in records] == items


def test_nothing_but_items_may_follow_the_final_newline(
    http: httpx.Client, client: ReceiverClient
) -> None:
    response = post_envelope(http, b"{}\n\n")
    assert response.status_code == 400
    assert "item header at byte 3 is not a valid JSON object" in response.json()["detail"]
    assert client.sentry_events() == []


def test_event_length_is_the_payload_size_with_or_without_length(
    http: httpx.Client, client: ReceiverClient
) -> None:
    payload = event_payload(message="sized")
    with_length = envelope({}, [({"type": "event", "length": len(payload)}, payload)])
    without = envelope({}, [({"type": "event"}, payload)], final_newline=False)
    for body in (with_length, without):
        assert post_envelope(http, body).status_code == 200
    assert [r["length"] for r in client.sentry_events()] == [len(payload)] * 2


# --- HTTP framing -----------------------------------------------------------------------------


def test_chunked_envelope_is_recorded(http: httpx.Client, client: ReceiverClient) -> None:
    event_id = uuid.uuid4().hex
    body = compress(
        envelope({"event_id": event_id}, [({"type": "event"}, event_payload(message="chunked"))]),
        "gzip",
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: httpx sends Transfer-Encoding: chunked
        yield from (body[i : i + 7] for i in range(0, len(body), 7))

    response = http.post(
        "/api/42/envelope/",
        content=chunks(),
        headers={"X-Sentry-Auth": f"Sentry sentry_key={KEY}", "Content-Encoding": "gzip"},
    )
    assert response.request.headers["Transfer-Encoding"] == "chunked"
    assert response.status_code == 200, response.text
    assert response.json() == {"id": event_id}
    [record] = client.sentry_events()
    assert (record["event_id"], record["message"]) == (event_id, "chunked")


def test_chunked_telegram_form_is_recorded(http: httpx.Client, client: ReceiverClient) -> None:
    form = f"chat_id={CHAT}&text=chunked+form".encode()
    response = http.post(
        f"/bot{TOKEN}/sendMessage",
        content=iter([form[:5], form[5:]]),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    assert [m["text"] for m in client.telegram_messages()] == ["chunked form"]


def raw_request(port: int, head: bytes, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    """Send bytes no HTTP client would send; return the status and the JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


def test_badly_chunked_body_is_400_and_records_nothing(
    receiver: Receiver, client: ReceiverClient
) -> None:
    head = (
        f"POST /api/42/envelope/ HTTP/1.1\r\nHost: x\r\nX-Sentry-Auth: Sentry sentry_key={KEY}"
        "\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    status, body = raw_request(receiver.port, head, b"zz\r\n{}\r\n0\r\n\r\n")
    assert status == 400
    assert "detail" in body
    assert client.sentry_events() == []


def test_oversized_body_is_413(receiver: Receiver, client: ReceiverClient) -> None:
    head = (
        f"POST /bot{TOKEN}/sendMessage HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {50 * 1024 * 1024}\r\n\r\n"
    ).encode()
    status, body = raw_request(receiver.port, head)
    assert status == 413
    assert body == {"detail": f"request body over {20 * 1024 * 1024} bytes"}
    assert client.telegram_messages() == []


@pytest.mark.parametrize(
    ("auth", "key", "dsn_key"),
    [
        ("header", "0" * 32, None),
        ("query", "0" * 32, None),
        (None, KEY, None),
        (None, KEY, "0" * 32),  # the envelope's dsn header alone, with a wrong key
        ("header", KEY, "0" * 32),  # header right, dsn wrong: must match
    ],
)
def test_wrong_or_missing_sentry_key_is_401(
    http: httpx.Client,
    client: ReceiverClient,
    auth: str | None,
    key: str,
    dsn_key: str | None,
) -> None:
    header: dict[str, Any] = {"event_id": uuid.uuid4().hex}
    if dsn_key:
        header["dsn"] = f"http://{dsn_key}@127.0.0.1/42"
    body = envelope(header, [({"type": "event"}, event_payload(message="m"))])
    response = post_envelope(http, body, auth=auth, key=key, encoding="gzip")
    assert response.status_code == 401
    assert "detail" in response.json()
    assert client.sentry_events() == []


@pytest.mark.parametrize("auth", ["query", "dsn"])
def test_sentry_key_from_query_or_envelope_dsn_is_accepted(
    http: httpx.Client, client: ReceiverClient, auth: str
) -> None:
    header: dict[str, Any] = {"event_id": uuid.uuid4().hex}
    if auth == "dsn":
        header["dsn"] = f"http://{KEY}@127.0.0.1:1/42"
    body = envelope(header, [({"type": "event"}, event_payload(message=f"via {auth}"))])
    response = post_envelope(http, body, auth="query" if auth == "query" else None)
    assert response.status_code == 200, response.text
    assert client.sentry_events()[0]["message"] == f"via {auth}"


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_store_endpoint_records_the_event(
    http: httpx.Client, client: ReceiverClient, encoding: str | None
) -> None:
    event_id = uuid.uuid4().hex
    event = {
        "event_id": event_id,
        "level": "fatal",
        "logger": "resilience.monitor",
        "exception": [{"type": "OperationalError", "value": "connection refused"}],
        "tags": {"scenario": "1"},
        "timestamp": "2024-05-01T10:00:00Z",
    }
    body = json.dumps(event).encode()
    response = post_envelope(http, body, encoding=encoding, auth="query", endpoint="store")
    assert response.status_code == 200, response.text
    assert response.json() == {"id": event_id}
    [record] = client.sentry_events()
    assert record["endpoint"] == "store"
    assert record["item_type"] == "event"
    assert record["level"] == "fatal"
    assert record["logger"] == "resilience.monitor"
    assert record["exception"] == {"type": "OperationalError", "value": "connection refused"}
    assert record["timestamp"] == "2024-05-01T10:00:00Z"


def test_store_endpoint_generates_an_id_and_checks_the_key(
    http: httpx.Client, client: ReceiverClient
) -> None:
    body = json.dumps({"message": "no id"}).encode()
    response = post_envelope(http, body, endpoint="store")
    assert response.status_code == 200
    event_id = response.json()["id"]
    assert uuid.UUID(event_id).hex == event_id
    assert client.sentry_events()[0]["event_id"] == event_id
    client.clear()
    wrong = post_envelope(http, body, endpoint="store", key="f" * 32)
    assert wrong.status_code == 401
    assert client.sentry_events() == []


# --- Telegram ---------------------------------------------------------------------------------


def test_send_message_json(http: httpx.Client, client: ReceiverClient) -> None:
    response = http.post(
        f"/bot{TOKEN}/sendMessage",
        json={
            "chat_id": CHAT,
            "text": "<b>PostgreSQL down</b>: switched to files",
            "parse_mode": "HTML",
            "disable_notification": True,
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ok"] is True
    result = body["result"]
    assert isinstance(result["message_id"], int)
    assert result["chat"]["id"] == CHAT
    assert result["chat"]["type"] == "supergroup"
    assert result["text"] == "<b>PostgreSQL down</b>: switched to files"
    assert isinstance(result["date"], int)
    assert result["from"]["is_bot"] is True

    [record] = client.telegram_messages()
    assert record["chat_id"] == CHAT
    assert record["text"] == "<b>PostgreSQL down</b>: switched to files"
    assert record["parse_mode"] == "HTML"
    assert record["disable_notification"] is True
    assert record["message_id"] == result["message_id"]
    assert record["received_at"]


def test_send_message_form_and_multipart(http: httpx.Client, client: ReceiverClient) -> None:
    form = http.post(
        f"/bot{TOKEN}/sendMessage",
        data={"chat_id": str(CHAT), "text": "form body", "disable_notification": "false"},
    )
    assert form.status_code == 200, form.text
    assert form.json()["result"]["chat"]["id"] == CHAT
    multipart = http.post(
        f"/bot{TOKEN}/sendMessage",
        data={"chat_id": "@drill_channel", "text": "multipart body"},
        files={"unused": ("note.txt", b"ignored")},
    )
    assert multipart.status_code == 200, multipart.text
    assert multipart.json()["result"]["chat"]["type"] == "channel"
    query = http.get(f"/bot{TOKEN}/sendMessage", params={"chat_id": "42", "text": "query"})
    assert query.status_code == 200, query.text

    records = client.telegram_messages()
    assert [(r["chat_id"], r["text"]) for r in records] == [
        (CHAT, "form body"),
        ("@drill_channel", "multipart body"),
        (42, "query"),
    ]
    assert records[0]["disable_notification"] is False
    assert len({r["message_id"] for r in records}) == 3


@pytest.mark.parametrize("method", ["sendMessage", "getMe"])
@pytest.mark.parametrize("token", [f"{BOT_ID}:wrong", "", TOKEN_SECRET])
def test_wrong_bot_token_is_401_like_telegram(
    http: httpx.Client, client: ReceiverClient, method: str, token: str
) -> None:
    response = http.post(f"/bot{token}/{method}", json={"chat_id": CHAT, "text": "x"})
    assert response.status_code == 401
    assert response.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
    assert client.telegram_messages() == []


@pytest.mark.parametrize(
    ("params", "description"),
    [
        ({"chat_id": CHAT}, "Bad Request: message text is empty"),
        ({"chat_id": CHAT, "text": "   "}, "Bad Request: message text is empty"),
        ({"text": "hello"}, "Bad Request: chat_id is empty"),
        ({"chat_id": "", "text": "hello"}, "Bad Request: chat_id is empty"),
        ({"chat_id": CHAT, "text": "x" * 4097}, "Bad Request: message is too long"),
        (
            {"chat_id": CHAT, "text": "x", "parse_mode": "Wiki"},
            "Bad Request: unsupported parse_mode",
        ),
    ],
)
def test_bad_send_message_is_400_like_telegram(
    http: httpx.Client, client: ReceiverClient, params: dict[str, Any], description: str
) -> None:
    response = http.post(f"/bot{TOKEN}/sendMessage", json=params)
    assert response.status_code == 400
    assert response.json() == {"ok": False, "error_code": 400, "description": description}
    assert client.telegram_messages() == []


def test_get_me_and_unknown_method(http: httpx.Client) -> None:
    me = http.get(f"/bot{TOKEN}/getMe").json()
    assert me["ok"] is True
    assert me["result"]["id"] == BOT_ID
    assert me["result"]["is_bot"] is True
    unknown = http.post(f"/bot{TOKEN}/sendPhoto", json={})
    assert unknown.status_code == 404
    assert unknown.json() == {"ok": False, "error_code": 404, "description": "Not Found"}


# --- recordings -------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_recordings_in_files_match_http(
    receiver: Receiver, http: httpx.Client, client: ReceiverClient
) -> None:
    body = envelope({}, [({"type": "event"}, event_payload(message="to file"))])
    assert post_envelope(http, body, encoding="br").status_code == 200
    sent = http.post(f"/bot{TOKEN}/sendMessage", json={"chat_id": CHAT, "text": "to file"})
    assert sent.status_code == 200

    sentry_file = read_jsonl(receiver.record_dir / "sentry.jsonl")
    telegram_file = read_jsonl(receiver.record_dir / "telegram.jsonl")
    assert sentry_file == client.sentry_events()
    assert telegram_file == client.telegram_messages()
    assert [r["message"] for r in sentry_file] == ["to file"]
    assert [r["text"] for r in telegram_file] == ["to file"]
    assert sentry_file[0]["seq"] < telegram_file[0]["seq"]


def test_secrets_appear_in_no_recording(
    receiver: Receiver, http: httpx.Client, client: ReceiverClient
) -> None:
    # A careless sender: the key and token inside the data itself, plus every auth channel.
    leaky = event_payload(
        message=f"dsn is http://{KEY}@host/1",
        tags={"token": TOKEN},
        extra={KEY: TOKEN_SECRET},
    )
    body = envelope(
        {"event_id": uuid.uuid4().hex, "dsn": f"http://{KEY}@127.0.0.1/42"},
        [({"type": "event"}, leaky), ({"type": "client_report"}, b'{"note":"clean"}')],
    )
    assert post_envelope(http, body, auth="query", encoding="gzip").status_code == 200
    assert post_envelope(http, body, endpoint="envelope").status_code == 200
    for text in (f"token {TOKEN}", f"half {TOKEN_SECRET}", "clean text"):
        sent = http.post(f"/bot{TOKEN}/sendMessage", data={"chat_id": CHAT, "text": text})
        assert sent.status_code == 200

    raw = [
        (receiver.record_dir / "sentry.jsonl").read_text(),
        (receiver.record_dir / "telegram.jsonl").read_text(),
        http.get("/_recorded/sentry").text,
        http.get("/_recorded/telegram").text,
    ]
    assert raw[0] and raw[1]
    for text in raw:
        for secret in (KEY, TOKEN, TOKEN_SECRET):
            assert secret not in text

    events = client.sentry_events()
    assert [r["redacted"] for r in events] == [True, False, True, False]
    assert events[0]["message"] == "dsn is http://***@host/1"
    assert events[0]["tags"] == {"token": "***"}
    messages = client.telegram_messages()
    assert [m["text"] for m in messages] == ["token ***", "half ***", "clean text"]
    assert [m["redacted"] for m in messages] == [True, True, False]


def test_clear_empties_http_view_and_files(
    receiver: Receiver, http: httpx.Client, client: ReceiverClient
) -> None:
    body = envelope({}, [({"type": "event"}, event_payload(message="m"))])
    assert post_envelope(http, body).status_code == 200
    assert http.post(f"/bot{TOKEN}/sendMessage", json={"chat_id": 1, "text": "t"}).is_success
    assert client.sentry_events() and client.telegram_messages()

    client.clear()

    assert client.sentry_events() == []
    assert client.telegram_messages() == []
    assert (receiver.record_dir / "sentry.jsonl").read_text() == ""
    assert (receiver.record_dir / "telegram.jsonl").read_text() == ""
    assert http.post(f"/bot{TOKEN}/sendMessage", json={"chat_id": 1, "text": "after"}).is_success
    assert read_jsonl(receiver.record_dir / "telegram.jsonl")[0]["text"] == "after"


def test_wait_for_returns_when_a_matching_item_arrives(
    http: httpx.Client, client: ReceiverClient
) -> None:
    polled = threading.Event()
    errors: list[BaseException] = []

    def send_after_first_poll() -> None:
        try:
            assert polled.wait(timeout=30)
            with httpx.Client(base_url=str(http.base_url), trust_env=False) as other:
                other.post(f"/bot{TOKEN}/sendMessage", json={"chat_id": CHAT, "text": "target"})
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    assert http.post(f"/bot{TOKEN}/sendMessage", json={"chat_id": CHAT, "text": "decoy"}).is_success

    def is_target(record: Any) -> bool:
        if record["text"] == "decoy":
            polled.set()  # wait_for has polled once and seen only the decoy
        return bool(record["text"] == "target")

    sender = threading.Thread(target=send_after_first_poll)
    sender.start()
    found = client.wait_for("telegram", is_target, timeout=30)
    sender.join()
    assert not errors
    assert found["text"] == "target"
    assert found["chat_id"] == CHAT


def test_wait_for_raises_on_timeout(http: httpx.Client, client: ReceiverClient) -> None:
    assert http.post(f"/bot{TOKEN}/sendMessage", json={"chat_id": 1, "text": "other"}).is_success
    with pytest.raises(VerificationError, match=r"no telegram record matched within 0\.3 s"):
        client.wait_for("telegram", lambda r: r["text"] == "never sent", timeout=0.3)
    with pytest.raises(VerificationError, match="sentry"):
        client.wait_for("sentry", lambda r: True, timeout=0)


def test_health(client: ReceiverClient, http: httpx.Client) -> None:
    assert client.healthy()
    assert http.get("/_health").json() == {"ok": True}
    assert http.get("/nowhere").status_code == 404


# --- process lifecycle ------------------------------------------------------------------------


def test_sigterm_stops_cleanly_and_the_log_holds_no_secret(tmp_path: Path) -> None:
    env = {"RECEIVERS_SENTRY_KEY": KEY, "RECEIVERS_TELEGRAM_TOKEN": TOKEN}  # not in argv
    proc, ready, _record_dir, log = start_receiver(tmp_path, "--log-level", "debug", env=env)
    try:
        port = wait_ready(proc, ready, log)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as c:
            assert c.post(f"/bot{TOKEN}/sendMessage", json={"chat_id": 1, "text": "a"}).is_success
            assert c.get(f"/bot{BOT_ID}:nope/getMe").status_code == 401
            body = envelope({}, [({"type": "event"}, b"{}")])
            assert c.post("/api/1/envelope/", params={"sentry_key": KEY}, content=body).is_success
    finally:
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=30)
    assert returncode == 0
    assert not ready.exists()
    assert port_closed(port)
    text = log.read_text()
    assert "/bot***/sendMessage" in text
    assert "sentry_key=***" in text
    for secret in (KEY, TOKEN, TOKEN_SECRET):
        assert secret not in text


def test_port_in_use_fails_with_one_line_and_no_ready_file(
    receiver: Receiver, tmp_path: Path
) -> None:
    proc, ready, _record_dir, log = start_receiver(
        tmp_path, "--sentry-key", KEY, "--telegram-token", TOKEN, port=receiver.port
    )
    assert proc.wait(timeout=60) == 3  # StackError's exit code
    assert not ready.exists()
    lines = log.read_text().strip().splitlines()
    assert len(lines) == 1
    assert f"cannot listen on 127.0.0.1:{receiver.port}" in lines[0]


def test_in_process_serve_stops_and_reloads_recordings(tmp_path: Path) -> None:
    server, thread = serve("127.0.0.1", 0, tmp_path, KEY, TOKEN)
    try:
        with ReceiverClient(server.url) as rc:
            with httpx.Client(base_url=server.url, trust_env=False) as c:
                sent = c.post(f"/bot{TOKEN}/sendMessage", json={"chat_id": 5, "text": "kept"})
                assert sent.is_success
            assert [m["text"] for m in rc.telegram_messages()] == ["kept"]
    finally:
        server.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert port_closed(server.port)

    again, thread2 = serve("127.0.0.1", 0, tmp_path, KEY, TOKEN)
    try:
        with ReceiverClient(again.url) as rc:
            [kept] = rc.telegram_messages()
            assert kept["text"] == "kept"
            with httpx.Client(base_url=again.url, trust_env=False) as c:
                new = c.post(f"/bot{TOKEN}/sendMessage", json={"chat_id": 5, "text": "new"})
                assert new.is_success
            newer = rc.wait_for("telegram", lambda r: r["text"] == "new", timeout=10)
            assert newer["seq"] > kept["seq"]
    finally:
        again.stop()
        thread2.join(timeout=30)


@pytest.mark.parametrize(("key", "token"), [("", TOKEN), (KEY, "")])
def test_serve_needs_a_key_and_a_token(tmp_path: Path, key: str, token: str) -> None:
    with pytest.raises(ConfigError):
        serve("127.0.0.1", 0, tmp_path, key, token)
