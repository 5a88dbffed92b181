"""Can we connect? Each layer on its own, each with a short timeout: DNS, TCP, then PostgreSQL
(TLS and authentication). A wrong password or database is configuration, never an outage."""

from __future__ import annotations

import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from urllib.parse import unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict

from resilience.authstate.pgstore import Conn, classify_connect_error
from resilience.infra.redact import Redactor

Verdict = Literal["ok", "outage", "config"]


@dataclass
class Probe:
    name: str  # dns | tcp | postgres
    ok: bool
    detail: str
    ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Connectivity:
    verdict: Verdict
    probes: list[Probe] = field(default_factory=list)
    conn: Conn | None = None  # open when verdict is ok; the caller closes it

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "probes": [p.to_dict() for p in self.probes]}


def _target(dsn: str) -> tuple[str, int]:
    params = conninfo_to_dict(dsn)
    host = unquote(str(params.get("host") or "localhost")).split(",")[0]
    port = int(str(params.get("port") or 5432).split(",")[0])
    return host, port


def check_connectivity(dsn: str, timeout: float = 3.0) -> Connectivity:
    redactor = Redactor([dsn])
    result = Connectivity("ok")

    def probe(name: str, ok: bool, detail: str, began: float) -> None:
        ms = round((time.perf_counter() - began) * 1000, 1)
        result.probes.append(Probe(name, ok, redactor.text(detail), ms))

    host, port = _target(dsn)
    if host.startswith("/"):  # a Unix socket: nothing to resolve or dial over TCP
        probe("dns", True, f"Unix socket {host}", time.perf_counter())
    else:
        began = time.perf_counter()
        try:
            addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            probe("dns", False, f"{host} does not resolve: {exc.strerror}", began)
            result.verdict = "config"  # the DSN names a host that does not exist
            return result
        probe("dns", True, f"{host} resolves to {addresses[0][4][0]}", began)
        began = time.perf_counter()
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            probe("tcp", False, f"{host}:{port}: {reason}", began)
            result.verdict = "outage"
            return result
        probe("tcp", True, f"{host}:{port} accepts connections", began)
    began = time.perf_counter()
    try:
        conn = psycopg.connect(dsn, connect_timeout=max(1, int(timeout)), autocommit=True)
    except psycopg.Error as exc:
        kind, part = classify_connect_error(exc)
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
        if kind == "config":
            probe("postgres", False, f"configuration (check the DSN's {part}): {reason}", began)
            result.verdict = "config"
        else:
            probe("postgres", False, f"TLS or server: {reason}", began)
            result.verdict = "outage"
        return result
    tls = "TLS" if conn.pgconn.ssl_in_use else "no TLS"
    probe("postgres", True, f"authenticated as {conn.info.user} ({tls})", began)
    result.conn = conn
    return result
