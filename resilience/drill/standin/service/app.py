"""The stand-in's HTTP side: ``GET /health`` (JSON) and ``GET /metrics`` on ``127.0.0.1:PORT``.

Werkzeug serves them, so the HTTP handling is not hand-written here. In PostgreSQL mode
``/health`` adds ``"pool"``: ``{"size", "idle", "active", "waiting", "max"}`` and ``"latency"``:
the summary of the last 1,000 statements
(:meth:`resilience.monitoring.latency.QueryRing.summary`); in file mode (no pool, no SQL) both
are null.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from werkzeug.exceptions import NotImplemented as MethodNotImplemented
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from resilience.drill.standin.service.backends import Backend
from resilience.drill.standin.service.lines import HTTP_LINE
from resilience.drill.standin.service.logs import log
from resilience.drill.standin.service.metrics import metrics_registry
from resilience.drill.standin.service.settings import HOST
from resilience.drill.standin.service.state import ServiceState
from resilience.errors import StackError

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

# generate_latest writes the 0.0.4 text format for these names; its CONTENT_TYPE_LATEST says
# version=1.0.0 since prometheus-client 0.22: the header the service always sent is kept.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SERVER_NAME = "baileys-standin"


NO_EXTRAS: dict[str, Any] = {"pool": None, "latency": None}


def make_app(
    state: ServiceState,
    backend: Backend | None = None,
    registry: CollectorRegistry | None = None,
) -> WSGIApplication:
    """The WSGI app: ``GET /health`` (JSON; 503 when not ok), ``GET /metrics``, 404 elsewhere,
    501 for other methods (as :mod:`http.server` answered before). ``/health`` adds the
    backend's ``pool`` and ``latency`` (null without a backend, and in file mode)."""
    registry = metrics_registry(state.snapshot, registry)

    @Request.application
    def app(request: Request) -> Response:
        if request.method != "GET":
            raise MethodNotImplemented(f"Unsupported method ({request.method!r}).")
        if request.path == "/health":
            report = state.snapshot()
            report.update(NO_EXTRAS if backend is None else backend.health_extras())
            status = HTTPStatus.OK if report["ok"] else HTTPStatus.SERVICE_UNAVAILABLE
            return Response(json.dumps(report), status=status, content_type="application/json")
        if request.path == "/metrics":
            return Response(generate_latest(registry), content_type=METRICS_CONTENT_TYPE)
        return Response("not found\n", status=HTTPStatus.NOT_FOUND, content_type="text/plain")

    return app


class RequestHandler(WSGIRequestHandler):
    """Werkzeug's handler, named like the service and logging requests at debug level only
    (Werkzeug's own logger would print one line per health poll)."""

    server_version = SERVER_NAME

    def log(self, type: str, message: str, *args: Any) -> None:
        log.debug("[http] " + message, *args)


def serve(
    port: int,
    state: ServiceState,
    backend: Backend | None = None,
    registry: CollectorRegistry | None = None,
) -> BaseWSGIServer:
    """Listen on ``HOST:port`` and serve :func:`make_app` in a daemon thread; logs
    :data:`~resilience.drill.standin.service.lines.HTTP_LINE` with the port bound."""
    # Bound here, not by make_server: Werkzeug would print the error and sys.exit(1).
    try:
        listener = socket.create_server((HOST, port))
    except OSError as exc:  # its strerror also names the address: keep the bare reason
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise StackError(f"cannot listen on {HOST}:{port}: {reason}") from None
    with listener:  # make_server works on a duplicate of the descriptor
        server = make_server(
            HOST,
            port,
            make_app(state, backend, registry),
            threaded=True,
            request_handler=RequestHandler,
            fd=listener.fileno(),
        )
    threading.Thread(target=server.serve_forever, args=(0.1,), name="http", daemon=True).start()
    log.info(HTTP_LINE.format(host=HOST, port=server.port))
    return server
