"""Redaction, in one place: what counts as a secret and how it is hidden in text and data.

One rule set, used by alert channels, run journals, reports and the drill fakes:

* every value registered as a secret (and its URL-encoded form, and the password inside it when
  it is a DSN) becomes ``***``, longest first;
* the password of every URL-style DSN in a text becomes ``***`` (``scheme://user:***@host``),
  also when the password holds characters that should have been escaped (``@``, ``#``, ``/``):
  everything between ``user:`` and the *last* ``@`` is the password;
* every ``password=...`` keyword (libpq's other DSN form) becomes ``password=***``.

A DSN that cannot be parsed is never echoed back: redaction never raises.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from enum import Enum
from pathlib import PurePath
from typing import Any, cast
from urllib.parse import quote, unquote

REDACTED = "***"
#: Shorter values are not scanned for: replacing every "abc" would wreck the text, and a DSN's
#: password is hidden by the DSN rule whatever its length.
MIN_SECRET_LENGTH = 4

_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(.*)$", re.S)
# a quoted value may hold backslash-escaped quotes (libpq's keyword syntax: 'it\'s')
_PASSWORD_KV_RE = re.compile(
    r"(?i)(\b\w*password\s*=\s*)('(?:\\.|[^'\\])*'|\"(?:\\.|[^\"\\])*\"|[^\s&;,]+)"
)


def _split_userinfo(dsn: str) -> tuple[str, str, str | None, str] | None:
    """(scheme, user, password or None, rest after '@') of a URL-style DSN with a userinfo."""
    match = _SCHEME_RE.match(dsn)
    if match is None:
        return None
    scheme, rest = match.groups()
    at = rest.rfind("@")
    if at < 0:
        return None
    userinfo, tail = rest[:at], rest[at + 1 :]
    user, sep, password = userinfo.partition(":")
    return scheme, user, (password if sep else None), tail


def redact_dsn(dsn: str) -> str:
    """``dsn`` with its password (URL form or ``password=`` keyword) replaced by ``***``."""
    dsn = _PASSWORD_KV_RE.sub(lambda m: m.group(1) + REDACTED, dsn)
    parts = _split_userinfo(dsn)
    if parts is None:
        return dsn
    scheme, user, password, tail = parts
    if password is None:
        return dsn
    return f"{scheme}{user}:{REDACTED}@{tail}"


_QUERY_PASSWORD_RE = re.compile(r"(?i)[?&]password=([^&]*)")
_KV_PASSWORD_RE = re.compile(r"(?i)\bpassword\s*=\s*('(?:\\.|[^'\\])*'|\S+)")


def dsn_passwords(dsn: str) -> list[str]:
    """Every password a DSN may carry, as written and decoded: the URL's userinfo (everything
    between `user:` and the last `@`), a `password=` query parameter, a `password=` keyword."""
    found: list[str] = []
    parts = _split_userinfo(dsn)
    if parts is not None and parts[2]:
        found.append(parts[2])
    if _SCHEME_RE.match(dsn):
        found += [m.group(1) for m in _QUERY_PASSWORD_RE.finditer(dsn)]
    else:
        for m in _KV_PASSWORD_RE.finditer(dsn):
            value = m.group(1)
            if value.startswith("'") and value.endswith("'") and len(value) >= 2:
                found.append(value[1:-1])  # as written, escapes and all: text may quote it so
                value = value[1:-1].replace("\\'", "'").replace("\\\\", "\\")
            found.append(value)
    decoded = [unquote(p) for p in found] + [unquote(p.replace("+", " ")) for p in found]
    return [p for p in dict.fromkeys(found + decoded) if p]


def _escapes_decode(text: str) -> bool:
    """Whether every %-escape of a URL part decodes as UTF-8 (libpq hands the bytes on, and
    psycopg fails on them with a message that quotes them)."""
    try:
        urllib.parse.unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def dsn_problems(dsn: str) -> list[str]:
    """What makes a URL-style DSN mean something else than it says, without showing any part
    of it: characters of the password that must be percent-encoded, a port that is no number.
    Keyword DSNs (`host=... password='...'`) are left to libpq. Empty: nothing wrong found."""
    match = _SCHEME_RE.match(dsn)
    if match is None:
        if "=" not in dsn:
            return ["it is neither a URL (postgresql://...) nor key=value pairs"]
        return []
    scheme, rest = match.groups()
    problems: list[str] = []
    if not scheme.lower().startswith(("postgresql://", "postgres://")):
        problems.append("its scheme is not postgresql://")
    if "#" in rest:
        problems.append("it holds a '#': in a password write it as %23")
    at = rest.rfind("@")
    userinfo = rest[:at] if at >= 0 else ""
    if userinfo.count("@"):
        problems.append("the password holds an '@': write it as %40")
    for char, code in (("/", "%2F"), ("?", "%3F")):
        if char in userinfo:
            problems.append(f"the password holds a '{char}': write it as {code}")
    if any(c.isspace() for c in rest):
        problems.append("it holds white space: in a password write a space as %20")
    if not _escapes_decode(rest):
        problems.append("a %-escape in it does not decode as UTF-8 (in the password?)")
    host = rest[at + 1 :] if at >= 0 else rest
    hostport = re.split(r"[/?#]", host, maxsplit=1)[0]
    for part in hostport.split(","):
        if part.startswith("["):
            port = part.rpartition("]:")[2] if "]:" in part else ""
        else:
            port = part.rpartition(":")[2] if ":" in part else ""
        if port and not port.isdigit():
            problems.append("its port is not a number")
            break
    return problems


class Redactor:
    """Hides registered secrets, DSN passwords and ``password=`` values. Thread-safe to read."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: set[str] = set()
        self.register(*secrets)

    def register(self, *values: str | None) -> None:
        """Never let these values out (nor their URL-encoded forms, nor a DSN's password)."""
        for value in values:
            if not isinstance(value, str) or not value:
                continue
            candidates = {value, quote(value, safe="", errors="surrogatepass")}
            for password in dsn_passwords(value):
                candidates |= {password, quote(password, safe="", errors="surrogatepass")}
            self._secrets |= {c for c in candidates if len(c) >= MIN_SECRET_LENGTH}

    @property
    def secrets(self) -> frozenset[str]:
        return frozenset(self._secrets)

    def text(self, value: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            value = value.replace(secret, REDACTED)
        value = _URL_RE.sub(lambda match: redact_dsn(match.group(0)), value)
        return _PASSWORD_KV_RE.sub(lambda match: match.group(1) + REDACTED, value)

    def data(self, value: Any) -> Any:
        """A JSON-ready copy of ``value``: every string (keys included) redacted; paths and
        dates as strings, tuples and sets as lists, bytes as hex."""
        return _jsonable(value, self.text)


def _jsonable(value: Any, text: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return cast(str, text(value))
    if isinstance(value, Enum):
        return _jsonable(value.value, text)
    if isinstance(value, datetime | date):
        return cast(str, text(value.isoformat()))
    if isinstance(value, PurePath):
        return cast(str, text(str(value)))
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Mapping):
        return {str(_jsonable(k, text)): _jsonable(v, text) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted((_jsonable(v, text) for v in value), key=repr)
    if isinstance(value, list | tuple):
        return [_jsonable(v, text) for v in value]
    return cast(str, text(str(value)))
