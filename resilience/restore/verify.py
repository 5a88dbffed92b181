"""Verifying the service after a restart, from the service's own evidence.

Two sources, both the service's, never a file the switch itself wrote: the lines its PM2 log
gained since the restart (the mode line naming the company, then "connection open"), and, when
it has one, its health endpoint (`mode` as the settings map its values, `company` when it says,
and `loaded_digest`, the digest of what it loaded, when it has one;
:mod:`resilience.service.health`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from resilience.config import Settings
from resilience.errors import VerificationError
from resilience.infra.waiting import wait_until
from resilience.service.health import (
    Health,
    journal_fields,
    mode_of_value,
    read_health,
    unknown_mode,
)
from resilience.service.modes import Mode

#: How often the log and the health endpoint are looked at (the RTO floor polls as often).
POLL_S = 0.05


class LogWatch:
    """New lines of the service's PM2 log since this watch was made (i.e. since the restart)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.offset = path.stat().st_size if path and path.exists() else 0

    @classmethod
    def whole(cls, path: Path | None) -> LogWatch:
        """A watch over the whole log, from its first line."""
        watch = cls(path)
        watch.offset = 0
        return watch

    def last_mode(self, settings: Settings, company_id: str) -> Mode | None:
        """The mode of the last mode line naming the company, matched line by line as the
        switch's verify matches them (anchored patterns work)."""
        modes: tuple[Mode, ...] = ("file", "postgres")
        patterns = {m: mode_patterns(settings, m, company_id)[0] for m in modes}
        for line in reversed(self.new_text().splitlines()):
            for mode, pattern in patterns.items():
                if pattern.search(line):
                    return mode
        return None

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


def wait_for_health(
    settings: Settings, url: str, mode: Mode, company_id: str, digest: str | None, timeout: float
) -> dict[str, Any]:
    """Poll the health endpoint until it reports ``mode`` (any value the settings map to it)
    and, when it says, ``company_id`` and the ``digest`` it loaded at start (``loaded_digest``;
    a live service has written more since). Returns what the journal keeps, with
    ``digest_check``: ``equal``, ``not available`` (the health has no digest) or ``not
    expected`` (no digest to compare with).

    A mode value the settings do not list, or another company, fails at once (they do not
    change by waiting); no answer, HTTP errors, a body that is not a JSON object and the other
    mode are waited out, then named at the deadline."""
    last: list[Health | None] = [None]

    def healthy() -> dict[str, Any] | None:
        health = read_health(url)
        last[0] = health
        if health.body is None:
            return None
        value = health.mode_value
        reported = mode_of_value(settings, value)
        if reported is None and value is not None:
            raise VerificationError(unknown_mode(settings, url, value))
        if health.company is not None and health.company != company_id:
            raise VerificationError(
                f"health at {url} says the service serves company {health.company[:50]!r}, "
                f"not {company_id}"
            )
        if reported != mode:
            return None
        if digest is None:
            check = "not expected"
        elif not health.says_digest:
            check = "not available"
        elif health.loaded_digest == digest:
            check = "equal"
        else:
            return None
        return {**journal_fields(health), "digest_check": check}

    def wrong(_exc: Exception | None) -> VerificationError:
        want = f"mode={mode}" + (f" digest={digest[:12]}" if digest else "")
        seen = last[0]
        if seen is None or seen.body is None:
            got = seen.problem if seen is not None else "no answer"
        else:
            value = seen.mode_value
            got = "no 'mode' in the body" if value is None else f"mode {_value(value)}"
            if seen.loaded_digest is not None:
                got += f", loaded digest {seen.loaded_digest[:12]}"
        return VerificationError(f"health at {url} did not reach {want} in {timeout:.0f} s: {got}")

    return wait_until(
        healthy,
        timeout,
        "health",
        interval=POLL_S,
        on_timeout=wrong,
        fatal=(VerificationError,),
    )


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:40])


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
        details["health"] = wait_for_health(
            settings,
            settings.health_url,
            mode,
            company_id,
            expected_digest,
            settings.verify_timeout,
        )
    return details
