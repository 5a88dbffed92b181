"""The stand-in's log lines (format strings) and the patterns that find them in a log.

The drills and the switch wait for these lines: the mode line at start, then
:data:`CONNECTION_OPEN_LINE` once the auth state is loaded; :data:`STOPPED_LINE` with the final
digest at a clean stop.
"""

from __future__ import annotations

import re

from resilience.service.modes import Mode

FILE_MODE_LINE = "[auth] using file auth state from {directory} for company {company}"
POSTGRES_MODE_LINE = "[auth] using PostgreSQL auth state for company {company}"
CONNECTION_OPEN_LINE = "connection open (keys={keys})"
MISSING_CREDS_LINE = (
    "[auth] no credentials for company {company} in {source}: the service must be re-paired by QR"
)
HTTP_LINE = "[http] listening on http://{host}:{port}"
STOPPED_LINE = (
    "[standin] stopped (keys={keys}, digest={digest}, writes_ok={ok}, writes_failed={failed})"
)
CACHE_SERVING_LINE = (
    "[auth] PostgreSQL unavailable for company {company}: serving creds from cache "
    "(age {age:.1f} s, ttl {ttl:g} s, {source}); creds saves are skipped and key reads fail "
    "until PostgreSQL is back ({reason})"
)
CACHE_EXPIRED_LINE = (
    "[auth] cached creds of company {company} expired (age {age:.1f} s > ttl {ttl:g} s) and "
    "PostgreSQL is unavailable: the service cannot run; bring PostgreSQL back or re-pair "
    "({reason})"
)
CACHE_LEFT_LINE = (
    "[auth] PostgreSQL is back for company {company}: left cache mode after {duration:.1f} s "
    "(skipped creds saves={skipped}, failed key reads={reads})"
)
NO_CACHE_LINE = (
    "[auth] PostgreSQL unavailable for company {company} and no cached creds to run on: {why}"
)
STOPPED_ON_CACHE_LINE = (
    "[standin] stopped on cached creds (keys not loaded, writes_ok={ok}, writes_failed={failed}, "
    "skipped_creds_saves={skipped}, failed_key_reads={reads})"
)

_COMPANY = r"(?P<company>[A-Za-z0-9_-]{1,50})"
FILE_MODE_PATTERN = re.compile(
    r"\[auth\] using file auth state from (?P<directory>.+) for company " + _COMPANY + r"[ \t\r]*$",
    re.MULTILINE,
)
POSTGRES_MODE_PATTERN = re.compile(
    r"\[auth\] using PostgreSQL auth state for company " + _COMPANY + r"[ \t\r]*$",
    re.MULTILINE,
)
CONNECTION_OPEN_PATTERN = re.compile(r"connection open \(keys=(?P<keys>\d+)\)")
MISSING_CREDS_PATTERN = re.compile(r"\[auth\] no credentials for company " + _COMPANY)
HTTP_PATTERN = re.compile(r"\[http\] listening on http://(?P<host>[0-9.]+):(?P<port>\d+)")
STOPPED_PATTERN = re.compile(
    r"\[standin\] stopped \(keys=(?P<keys>\d+), digest=(?P<digest>[0-9a-f]{64}), "
    r"writes_ok=(?P<ok>\d+), writes_failed=(?P<failed>\d+)\)"
)
CACHE_SERVING_PATTERN = re.compile(
    r"\[auth\] PostgreSQL unavailable for company " + _COMPANY + r": serving creds from cache "
    r"\(age (?P<age>[0-9.]+) s, ttl (?P<ttl>[0-9.e+]+) s, (?P<source>[a-z ]+)\)"
)
CACHE_EXPIRED_PATTERN = re.compile(
    r"\[auth\] cached creds of company " + _COMPANY + r" expired \(age (?P<age>[0-9.]+) s > "
    r"ttl (?P<ttl>[0-9.e+]+) s\)"
)
CACHE_LEFT_PATTERN = re.compile(
    r"\[auth\] PostgreSQL is back for company " + _COMPANY + r": left cache mode after "
    r"(?P<duration>[0-9.]+) s \(skipped creds saves=(?P<skipped>\d+), "
    r"failed key reads=(?P<reads>\d+)\)"
)
NO_CACHE_PATTERN = re.compile(
    r"\[auth\] PostgreSQL unavailable for company " + _COMPANY + r" and no cached creds"
)
STOPPED_ON_CACHE_PATTERN = re.compile(
    r"\[standin\] stopped on cached creds \(keys not loaded, writes_ok=(?P<ok>\d+), "
    r"writes_failed=(?P<failed>\d+), skipped_creds_saves=(?P<skipped>\d+), "
    r"failed_key_reads=(?P<reads>\d+)\)"
)


def mode_pattern(mode: Mode) -> re.Pattern[str]:
    """The pattern of the start-up line of ``mode``."""
    return FILE_MODE_PATTERN if mode == "file" else POSTGRES_MODE_PATTERN
