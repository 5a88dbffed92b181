"""Is the peer at a DSN's host and port PostgreSQL at all? One question, answered in moments.

A DSN that points at another service (a web server on the port, a typo'd port that some daemon
listens on) is a configuration error, not an outage. libpq cannot tell: it sends its
SSLRequest and waits, and an HTTP server waits too, for the end of a request line that never
comes, until the connect timeout says "timeout expired", which reads as an outage.

The probe opens its own TCP connection and sends PostgreSQL's SSLRequest (int32 length 8, int32
80877103). A PostgreSQL server, and pgbouncer, answers one byte, ``S`` or ``N`` (an old or
failing one an error message, ``E``), before it reads anything else. A peer that has not
answered after a short while is sent ``\\r\\n\\r\\n`` as well: an HTTP server then sees a
request line it cannot parse and answers ``HTTP/1.1 400 ...``; PostgreSQL has usually answered
by then, so it never sees those bytes (a slow one that does logs a complaint about them and
closes, harmless). Any other answer is not PostgreSQL. No answer within the bound, a closed or
refused connection: the probe cannot tell, and the ordinary connect decides.

The probe never sends a user name, a password or anything else of the DSN. A server with TLS
on answers "S" and then logs the probe's goodbye ("could not accept SSL connection: EOF
detected"): one log line per probe, and the library probes only a connect that is slow or
failing (resilience/authstate/pgstore.py).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import Literal

from psycopg.conninfo import conninfo_to_dict

#: PostgreSQL's SSLRequest: length 8, request code 1234 << 16 | 5679.
SSL_REQUEST = struct.pack("!ii", 8, 80877103)
#: What turns the SSLRequest into a (bad) request for a line-based server such as HTTP.
LINE_END = b"\r\n\r\n"
#: How long a peer has to answer the SSLRequest alone before the line end is sent too.
QUIET = 0.25

Kind = Literal["postgres", "other", "unknown"]


@dataclass(frozen=True)
class PeerVerdict:
    kind: Kind  # postgres | other (not PostgreSQL) | unknown (cannot tell)
    answer: str = ""  # the start of what the peer answered, printable (for "other")

    def describe(self) -> str:
        """What answers there, for an operator (of ``other``): "answers, but not as ..." """
        shown = f" (it answered {self.answer!r})" if self.answer else ""
        return f"answers, but not as PostgreSQL{shown}: another service listens there"


def tcp_target(dsn: str) -> tuple[str, int] | None:
    """The one TCP host and port a DSN names, or None when the probe does not apply: a Unix
    socket (no host, or a path), several hosts, or a port that is no valid number (libpq
    refuses those itself)."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:  # a DSN psycopg cannot parse is said by the connect itself
        return None
    host = str(params.get("hostaddr") or params.get("host") or os.environ.get("PGHOST") or "")
    port_text = str(params.get("port") or os.environ.get("PGPORT") or "5432")
    if not host or host.startswith(("/", "@")) or "," in host or "," in port_text:
        return None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        return None
    return host, int(port_text)


def _printable(data: bytes) -> str:
    text = data.split(b"\n", 1)[0][:40].decode("ascii", "replace")
    return "".join(c if c.isprintable() and c != "\ufffd" else "?" for c in text).strip()


def _judge(data: bytes) -> PeerVerdict:
    first, then = data[:1], data[1:2]
    if first == b"E":  # an error message (a server too old for SSLRequest, a failed fork)
        return PeerVerdict("postgres")
    # PostgreSQL answers one byte and waits; only once the line end reached it (a slow server)
    # may more follow: its error message ("E"), or a TLS alert (0x15) after "S". Anything else
    # after the byte is someone else (an SSH banner starts with "S" too).
    if first in (b"S", b"N") and then in (b"", b"E", b"\x15"):
        return PeerVerdict("postgres")
    return PeerVerdict("other", _printable(data))


def probe_peer(host: str, port: int, bound: float = 5.0) -> PeerVerdict:
    """Ask ``host:port`` whether it speaks PostgreSQL, within ``bound`` seconds."""
    deadline = time.monotonic() + bound
    try:
        with socket.create_connection((host, port), timeout=bound) as sock:
            sock.sendall(SSL_REQUEST)
            sock.settimeout(max(0.01, min(QUIET, deadline - time.monotonic())))
            try:
                data = sock.recv(64)
            except TimeoutError:
                sock.sendall(LINE_END)
                left = deadline - time.monotonic()
                if left <= 0:
                    return PeerVerdict("unknown")
                sock.settimeout(left)
                data = sock.recv(64)
    except (OSError, OverflowError, UnicodeError):  # refused, reset, timed out, unresolvable
        return PeerVerdict("unknown")
    if not data:  # closed without a word: a proxy whose server is gone, say
        return PeerVerdict("unknown")
    return _judge(data)
