"""Verifying the service after a restart, from the service's own evidence.

Two sources, both the service's, never a file the switch itself wrote: the lines its PM2 log
gained since the restart (the mode line naming the company, then "connection open"), and, when
it has one, its health endpoint (`mode`, and `loaded_digest`: the digest of what it loaded).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx

from resilience.config import Settings
from resilience.errors import VerificationError
from resilience.infra.waiting import wait_until
from resilience.service.modes import Mode

#: How often the log and the health endpoint are looked at (the RTO floor polls as often).
POLL_S = 0.05


class LogWatch:
    """New lines of the service's PM2 log since this watch was made (i.e. since the restart)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.offset = path.stat().st_size if path and path.exists() else 0

    def new_text(self) -> str:
        if self.path is None or not self.path.exists():
            return ""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read().decode("utf-8", errors="replace")

    def _found(self, patterns: list[re.Pattern[str]]) -> list[str]:
        """The first line matching each pattern in order, as far as they are found."""
        lines = self.new_text().splitlines()
        found: list[str] = []
        start = 0
        for pattern in patterns:
            hit = next((i for i in range(start, len(lines)) if pattern.search(lines[i])), None)
            if hit is None:
                break
            found.append(lines[hit])
            start = hit + 1
        return found

    def wait_for(self, patterns: list[re.Pattern[str]], timeout: float) -> list[str]:
        """The first line matching each pattern, in order, or VerificationError at the deadline."""

        def all_found() -> list[str] | None:
            found = self._found(patterns)
            return found if len(found) == len(patterns) else None

        def missing(_last: Exception | None) -> VerificationError:
            pattern = patterns[len(self._found(patterns))].pattern
            return VerificationError(
                f"the service did not log /{pattern}/ within {timeout:.0f} s after the "
                f"restart (log: {self.path})"
            )

        return wait_until(all_found, timeout, "log lines", interval=POLL_S, on_timeout=missing)


def mode_patterns(settings: Settings, mode: Mode, company_id: str) -> list[re.Pattern[str]]:
    """The mode line naming the company, then "connection open", as settings describe them."""
    pattern = settings.file_mode_pattern if mode == "file" else settings.postgres_mode_pattern
    return [
        re.compile(pattern.replace("{company}", re.escape(company_id))),
        re.compile(settings.connected_pattern),
    ]


def loaded_digest(body: dict[str, Any]) -> Any:
    return body.get("loaded_digest", body.get("digest"))


def wait_for_health(url: str, mode: str, digest: str | None, timeout: float) -> dict[str, Any]:
    """Poll the health endpoint until it reports `mode` and, when given, `digest` as what it
    loaded at start (`loaded_digest`; a live service has written more since)."""
    last: list[dict[str, Any] | str] = ["no answer"]

    def healthy() -> dict[str, Any] | None:
        try:
            body = httpx.get(url, timeout=2).json()
        except (httpx.HTTPError, ValueError) as exc:
            last[0] = type(exc).__name__
            return None
        last[0] = body if isinstance(body, dict) else "not a JSON object"
        if not isinstance(body, dict):
            return None
        if body.get("mode") == mode and (digest is None or loaded_digest(body) == digest):
            return dict(body)
        return None

    def wrong(_exc: Exception | None) -> VerificationError:
        seen = last[0]
        if isinstance(seen, dict):
            got = f"mode={seen.get('mode')} loaded digest={str(loaded_digest(seen))[:12]}"
        else:
            got = seen
        want = f"mode={mode}" + (f" digest={digest[:12]}" if digest else "")
        return VerificationError(f"health at {url} did not reach {want} in {timeout:.0f} s: {got}")

    return wait_until(healthy, timeout, "health", interval=POLL_S, on_timeout=wrong)


HEALTH_FIELDS = ("mode", "loaded_key_count", "loaded_digest", "key_count", "digest")


def verify_service(
    settings: Settings,
    company_id: str,
    mode: Mode,
    watch: LogWatch,
    expected_digest: str | None,
) -> dict[str, Any]:
    """Wait for the service's evidence of `mode` (log lines; health and digest when it has a
    health URL) and return it for the journal; VerificationError when it does not come."""
    details: dict[str, Any] = {
        "log_lines": watch.wait_for(
            mode_patterns(settings, mode, company_id), settings.verify_timeout
        )
    }
    if settings.health_url:
        health = wait_for_health(
            settings.health_url, mode, expected_digest, settings.verify_timeout
        )
        details["health"] = {k: health.get(k) for k in HEALTH_FIELDS}
    return details
