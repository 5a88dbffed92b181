"""One exception root for the library; the task layer maps each class to an exit code.

Messages are one line, written for an operator, and never contain secrets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def first_line(exc: BaseException) -> str:
    """An error's first line (its class name when it says nothing): what one-line messages quote
    of an exception from a library (psycopg, botocore) that may span lines."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ResilienceError(Exception):
    """Root of every error this library raises on purpose."""

    exit_code = 1
    #: The record of the operator run that failed (set by :mod:`resilience.runs.record`).
    record: Path | None = None
    #: JSON-ready facts a script may want beside the message (no secrets).
    details: dict[str, Any] | None = None


class ConfigError(ResilienceError):
    """Settings are missing, unknown or of the wrong type."""

    exit_code = 2


class InputError(ResilienceError):
    """Bad input from the operator or from data: company id, key id, value encoding."""

    exit_code = 2


class StackError(ResilienceError):
    """A backend of the stack cannot start, stop or be reached; the message says how to fix it."""

    exit_code = 3


class ServiceControlError(StackError):
    """PM2 could not describe, stop or start the service (the operator's PM2, in production as
    on a stack): a class of its own, with its own exit code."""

    exit_code = 8


class ChaosError(ResilienceError):
    """Fault injection failed (Toxiproxy answered an error, or the target is not a drill target)."""

    exit_code = 3


class DataError(ResilienceError):
    """Stored auth state cannot be read, decoded or mapped without guessing."""

    exit_code = 4


class VerificationError(ResilienceError):
    """A check ran and found the result wrong (digests differ, service not in the expected mode)."""

    exit_code = 5


class DatabaseError(ResilienceError):
    """PostgreSQL is unreachable, refuses our credentials, or a statement failed."""

    exit_code = 6


class DatabaseUnreachable(DatabaseError):
    """The server cannot be reached at all (refused, reset, timed out, shutting down, TLS):
    an outage, the one case that allows falling back to a snapshot."""


class PartialFailure(ResilienceError):
    """A run over several companies wrote every good one and failed for some: the message
    names each failed company and why; the exit code is that of the first failure."""

    def __init__(self, message: str, exit_code: int, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.details = details


class LockHeld(ResilienceError):
    """Another command holds the lock of this deployment and company (it is named): refused at
    once, nothing changed."""

    exit_code = 7
