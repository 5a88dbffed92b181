"""Local receivers for alerts: Sentry's ingest protocol and Telegram's Bot API on one loopback port.

Drills must prove that an outage raises the right Sentry event and the right Telegram message,
so the stack runs this small server and points the service's DSN and bot API URL at it. The
Sentry side (`sentry.py`) and the Telegram side (`telegram.py`) answer as the real services do
and record what they accept (`recording.py`); this module builds the one WSGI app serving both,
plus our own endpoints:

* `GET /_recorded/sentry`, `GET /_recorded/telegram`: the recordings, oldest first (the same as
  `<record_dir>/sentry.jsonl` and `telegram.jsonl`); `DELETE /_recorded` clears both, files
  included; `GET /_health` answers `{"ok": true}`.

The app and its server are Werkzeug's (`werkzeug.serving.make_server`, threaded): routing,
request parsing and HTTP/1.1 framing (chunked request bodies included) come from a well-kept
library instead of a hand-written handler. The expected key and token never reach a record or
a log line: the project's `Redactor` scrubs every record and every request line.

Run it detached with `python -m resilience.drill.fakes.receivers --host 127.0.0.1 --port 0
--record-dir DIR --ready-file F`; after binding it writes `{"port": N, "pid": P}` to the ready
file atomically, and on SIGTERM or SIGINT it stops serving, closes its files, removes the ready
file and exits 0. In tests, `serve()` runs the same server in a thread, and `ReceiverClient`
reads the recordings over HTTP.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Literal, cast, overload

import httpx
from werkzeug.exceptions import (
    HTTPException,
    MethodNotAllowed,
    NotFound,
    RequestEntityTooLarge,
)
from werkzeug.routing import BaseConverter, Map, Rule
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from resilience.drill.fakes.recording import KINDS, Kind, Recorder
from resilience.drill.fakes.sentry import MAX_BODY_BYTES, SentryIngest, SentryRecord
from resilience.drill.fakes.telegram import TelegramBot, TelegramRecord
from resilience.errors import (
    ConfigError,
    InputError,
    ResilienceError,
    StackError,
    VerificationError,
)
from resilience.infra.fsutil import atomic_write
from resilience.infra.redact import Redactor
from resilience.infra.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterable

    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = [
    "KINDS",
    "Kind",
    "ReceiverClient",
    "ReceiverServer",
    "SentryRecord",
    "TelegramRecord",
    "main",
    "serve",
    "write_ready_file",
]

_log = logging.getLogger(__name__)

SENTRY_KEY_ENV = "RECEIVERS_SENTRY_KEY"
TELEGRAM_TOKEN_ENV = "RECEIVERS_TELEGRAM_TOKEN"
IDLE_TIMEOUT = 60.0  # an idle connection must not hold a thread forever


# --------------------------------------------------------------------------------------------
# The app


class _Digits(BaseConverter):
    regex = r"\d+"


class _Token(BaseConverter):
    regex = r"[^/]*"  # may be empty: Telegram answers 401, not 404


class _Word(BaseConverter):
    regex = r"[A-Za-z]+"


class _Request(Request):
    max_content_length = MAX_BODY_BYTES  # Werkzeug answers 413 beyond, chunked bodies too


def _json(status: int, body: Any) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


class ReceiversApp:
    """The WSGI app: routes to the Sentry and Telegram sides and serves the recordings."""

    def __init__(self, recorder: Recorder, sentry: SentryIngest, telegram: TelegramBot) -> None:
        self.recorder = recorder
        self.redactor = recorder.redactor
        self._sentry = sentry
        self._telegram = telegram
        self.url_map = Map(
            [
                Rule("/_health", endpoint="health", methods=["GET"]),
                Rule("/_recorded/<any(sentry, telegram):kind>", endpoint="list", methods=["GET"]),
                Rule("/_recorded", endpoint="clear", methods=["DELETE"]),
                Rule(
                    "/api/<digits:project_id>/<any(envelope, store):endpoint>/", endpoint="sentry"
                ),
                Rule("/bot<token:token>/<word:method>/", endpoint="telegram"),
            ],
            converters={"digits": _Digits, "token": _Token, "word": _Word},
            strict_slashes=False,
            merge_slashes=False,
        )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = _Request(environ)
        try:
            response = self.dispatch(request)
        except Exception:
            _log.exception(
                "receivers failed on %s %s", request.method, self.redactor.text(request.full_path)
            )
            response = _json(500, {"detail": "internal error in the receiver"})
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        try:  # read (and de-chunk) the whole body first, whatever the path
            request.get_data()
        except RequestEntityTooLarge:
            return _json(413, {"detail": f"request body over {MAX_BODY_BYTES} bytes"})
        except HTTPException:  # Werkzeug's ClientDisconnected: badly chunked, or cut short
            return _json(400, {"detail": "invalid or incomplete request body"})
        try:
            endpoint, args = self.url_map.bind_to_environ(request.environ).match()
        except MethodNotAllowed as exc:
            response = _json(405, {"detail": "method not allowed"})
            response.allow.update(exc.valid_methods or ())
            return response
        except NotFound:
            return _json(404, {"detail": "not found"})
        if endpoint == "sentry":
            return self._sentry(request, **args)
        if endpoint == "telegram":
            return self._telegram(request, **args)
        if endpoint == "list":
            return _json(200, self.recorder.list(cast(Kind, args["kind"])))
        if endpoint == "clear":
            self.recorder.clear()
            return _json(200, {"cleared": True})
        return _json(200, {"ok": True})


def _handler_class(redactor: Redactor) -> type[WSGIRequestHandler]:
    """Werkzeug's request handler, logging through our logger with secrets redacted."""

    class Handler(WSGIRequestHandler):
        timeout = IDLE_TIMEOUT

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            line = redactor.text(self.requestline)
            _log.debug('%s "%s" %s %s', self.address_string(), line, code, size)

        def log(self, type: str, message: str, *args: Any) -> None:
            level = logging.INFO if type == "info" else logging.WARNING
            text = message % args if args else message
            _log.log(level, "%s %s", self.address_string(), redactor.text(text))

    return Handler


class ReceiverServer:
    """The receivers' threaded Werkzeug server; `serve()` builds one and runs it in a thread."""

    def __init__(self, wsgi: BaseWSGIServer, recorder: Recorder) -> None:
        self._wsgi = wsgi
        self.recorder = recorder
        self._started = False

    @property
    def host(self) -> str:
        return str(self._wsgi.server_address[0])

    @property
    def port(self) -> int:
        return int(self._wsgi.server_address[1])

    @property
    def url(self) -> str:
        host = self.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def start(self) -> threading.Thread:
        """Serve in a daemon thread until `shutdown()` or `stop()`."""
        thread = threading.Thread(target=self._wsgi.serve_forever, name="receivers", daemon=True)
        self._started = True
        thread.start()
        return thread

    def shutdown(self) -> None:
        """Stop serving (the serving thread ends); safe before the thread runs and twice."""
        if self._started:
            self._wsgi.shutdown()

    def stop(self) -> None:
        """Stop serving, close the socket and the recording files; idempotent."""
        self.shutdown()
        self._wsgi.server_close()
        self.recorder.close()


# --------------------------------------------------------------------------------------------
# Public entry points


def _listen(host: str, port: int) -> socket.socket:
    # Bound here rather than by make_server, which prints and exits when the port is taken.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=128)


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
    redactor = Redactor([sentry_key, telegram_token])
    token_secret = telegram_token.partition(":")[2]
    if len(token_secret) >= 8:  # the part after the bot id is what makes the token secret
        redactor.register(token_secret)
    recorder = Recorder(Path(record_dir), redactor)
    app = ReceiversApp(
        recorder, SentryIngest(sentry_key, recorder), TelegramBot(telegram_token, recorder)
    )
    try:
        with _listen(host, port) as sock:  # make_server serves a duplicate of it
            wsgi = make_server(
                host,
                port,
                app,
                threaded=True,
                request_handler=_handler_class(redactor),
                fd=sock.fileno(),
            )
    except OSError as exc:
        recorder.close()
        raise StackError(
            f"receivers cannot listen on {host}:{port}: {exc.strerror or exc}; "
            "pick another port (0 picks a free one) or stop what holds it"
        ) from None
    server = ReceiverServer(wsgi, recorder)
    return server, server.start()


def write_ready_file(path: Path, port: int, pid: int) -> None:
    """Write `{"port": N, "pid": P}` so that a reader never sees a partial file."""
    atomic_write(path, json.dumps({"port": port, "pid": pid}).encode(), mode=0o600)


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
        """The first record of `kind` matching `predicate`; VerificationError after `timeout` s.

        An unreachable receiver (StackError) or a failing predicate ends the wait at once.
        """
        if kind not in KINDS:
            raise InputError(f"unknown recording kind {kind!r}: use 'sentry' or 'telegram'")
        seen = 0

        def match() -> Any:
            nonlocal seen
            records: list[Any] = (
                self.sentry_events() if kind == "sentry" else self.telegram_messages()
            )
            seen = len(records)
            return next((record for record in records if predicate(record)), None)

        def no_match(last: Exception | None) -> ResilienceError:
            return VerificationError(
                f"no {kind} record matched within {timeout:g} s ({seen} recorded, none matching)"
            )

        return wait_until(
            match,
            timeout,
            f"a matching {kind} record",
            interval=self.poll_interval,
            on_timeout=no_match,
            fatal=(Exception,),
        )


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
    servers: list[ReceiverServer] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        for server in servers:  # shutdown() waits for the serving thread: not in a handler
            threading.Thread(target=server.shutdown, name="receivers-stop").start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server, thread = serve(
            args.host, args.port, args.record_dir, args.sentry_key, args.telegram_token
        )
    except ResilienceError as exc:
        _log.error("%s", exc)
        return exc.exit_code
    servers.append(server)
    ready: Path = args.ready_file
    try:
        if stop.is_set():  # a signal before the server existed
            server.shutdown()
        else:
            write_ready_file(ready, server.port, os.getpid())
            _log.info("listening on %s, recording to %s", server.url, args.record_dir)
        thread.join()  # until a signal shuts the server down
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
