"""One exception root for the library; the task layer maps each class to an exit code.

Messages are one line, written for an operator, and never contain secrets.
"""

from __future__ import annotations

from pathlib import Path


class ResilienceError(Exception):
    """Root of every error this library raises on purpose."""

    exit_code = 1
    #: The record of the operator run that failed (set by :mod:`resilience.runs.record`).
    record: Path | None = None


class ConfigError(ResilienceError):
    """Settings are missing, unknown or of the wrong type."""

    exit_code = 2


class InputError(ResilienceError):
    """Bad input from the operator or from data: company id, key id, value encoding."""

    exit_code = 2


class StackError(ResilienceError):
    """A backend of the stack cannot start, stop or be reached; the message says how to fix it."""

    exit_code = 3


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
