"""Can we connect? Each layer on its own, each with a short timeout: the DSN itself, DNS, TCP,
then PostgreSQL (the peer's protocol, TLS and authentication), the last through the very
connect the switch uses, so that both read a failure alike: a wrong password or database, a
port out of range, a host that does not resolve, a peer that is not PostgreSQL are
configuration, never an outage; a failure that is neither is not called an outage either."""

from __future__ import annotations

import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from urllib.parse import unquote

from psycopg.conninfo import conninfo_to_dict

from resilience.authstate.pgconn import Conn, connect
from resilience.errors import ConfigError, DatabaseError, DatabaseUnreachable
from resilience.infra.redact import Redactor, dsn_problems

#: "unknown": PostgreSQL failed in a way that is neither an outage nor a wrong DSN (too many
#: clients, say): the switch would not fall back to a snapshot, so it is no scenario 1.
Verdict = Literal["ok", "outage", "config", "unknown"]


@dataclass
class Probe:
    name: str  # dsn (only when it is wrong) | dns | tcp | postgres
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


def _target(dsn: str) -> tuple[str, int, str | None]:
    """(first host, first port, what is wrong with the DSN as written, or None)."""
    problems = dsn_problems(dsn)
    try:
        params = conninfo_to_dict(dsn)
    except Exception:  # psycopg's parse error may quote the DSN: never shown
        return "", 0, "the DSN cannot be parsed (neither a URL nor key=value pairs)"
    host = unquote(str(params.get("host") or "localhost")).split(",")[0]
    ports = str(params.get("port") or 5432).split(",")
    for port in ports:
        if not port.strip().isdigit():
            problems.append("its port is not a number")
        elif not 1 <= int(port) <= 65535:
            problems.append(f"its port {int(port)} is out of range (1-65535)")
    if problems:
        return host, 0, "; ".join(dict.fromkeys(problems))
    return host, int(ports[0]), None


def check_connectivity(dsn: str, timeout: float = 3.0) -> Connectivity:
    redactor = Redactor([dsn])
    result = Connectivity("ok")

    def probe(name: str, ok: bool, detail: str, began: float) -> None:
        ms = round((time.perf_counter() - began) * 1000, 1)
        result.probes.append(Probe(name, ok, redactor.text(detail), ms))

    began = time.perf_counter()
    host, port, wrong = _target(dsn)
    if wrong is not None:
        probe("dsn", False, f"the DSN is wrong: {wrong}", began)
        result.verdict = "config"
        return result
    if host.startswith("/"):  # a Unix socket: nothing to resolve or dial over TCP
        probe("dns", True, f"Unix socket {host}", time.perf_counter())
    else:
        began = time.perf_counter()
        try:
            addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            probe("dns", False, f"{host} does not resolve: {reason}", began)
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
    try:  # the switch's own connect: a peer that is not PostgreSQL is told in a moment
        conn = connect(dsn, timeout=timeout, autocommit=True)
    except ConfigError as exc:
        probe("postgres", False, f"configuration: {exc}", began)
        result.verdict = "config"
        return result
    except DatabaseUnreachable as exc:
        probe("postgres", False, f"TLS or server: {exc}", began)
        result.verdict = "outage"
        return result
    except DatabaseError as exc:
        probe("postgres", False, f"neither an outage nor the DSN: {exc}", began)
        result.verdict = "unknown"
        return result
    tls = "TLS" if conn.pgconn.ssl_in_use else "no TLS"
    probe("postgres", True, f"authenticated as {conn.info.user} ({tls})", began)
    result.conn = conn
    return result
