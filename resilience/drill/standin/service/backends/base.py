"""What every auth-state backend of the stand-in does, and how it fails."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from resilience.drill.standin.traffic import KeyWrite
from resilience.service.modes import Mode

KeyMap = dict[tuple[str, str], Any]


class WriteFailed(Exception):
    """A write was not acknowledged; the first ``done`` writes of the batch were."""

    def __init__(self, done: int, reason: str) -> None:
        super().__init__(reason)
        self.done = done
        self.reason = reason


class CredsSaveFailed(Exception):
    """A creds save was not acknowledged."""


class KeyReadFailed(Exception):
    """Keys could not be read. Never an empty answer: keys that cannot be read are not keys
    that do not exist (docs/domain.md §10)."""


class Backend(Protocol):
    mode: Mode

    def mode_line(self) -> str: ...

    def load(self) -> tuple[Any | None, KeyMap]: ...

    def write(self, writes: Sequence[KeyWrite]) -> None: ...

    def save_creds(self, creds: Any) -> None: ...

    def read_keys(self, key_type: str, ids: Sequence[str]) -> dict[str, Any]: ...

    def health_extras(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def exc_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
