"""The service's health endpoint, as every command reads it (docs/service-contract.md).

A health answers HTTP 2xx with a JSON object. The tool reads three members of it:

- ``mode``: a string the settings map to a mode (``RESILIENCE_HEALTH_FILE_MODE_VALUES``,
  default ``file``, ``files``, ``filesystem``; ``RESILIENCE_HEALTH_POSTGRES_MODE_VALUES``,
  default ``postgres``, ``postgresql``, ``database``; any case). A value neither lists is a
  configuration problem, refused at once, naming the value and both settings;
- ``company``: the company the service serves; optional;
- ``loaded_digest`` (or ``digest``): the digest of the auth state it loaded at start; optional
  (without the member the digest is reported as not available, the mode and company still
  verified; a member that is ``null`` means "not loaded yet" and is waited for).

Everything else in the body is kept for the journal but never required.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from resilience.config import ENV_PREFIX, Settings
from resilience.service.modes import Mode

#: seconds one request to the health may take
REQUEST_TIMEOUT_S = 2.0
#: what a journal keeps of a health body
HEALTH_FIELDS = ("mode", "company", "loaded_key_count", "loaded_digest", "key_count", "digest")
FILE_VALUES_SETTING = ENV_PREFIX + "HEALTH_FILE_MODE_VALUES"
POSTGRES_VALUES_SETTING = ENV_PREFIX + "HEALTH_POSTGRES_MODE_VALUES"


def _shown(value: Any, limit: int = 40) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


@dataclass(frozen=True)
class Health:
    """One answer of the health endpoint: its JSON object, or why there is none."""

    url: str
    body: dict[str, Any] | None
    problem: str | None = None  # one line: no answer, HTTP 500, not JSON, not an object

    @property
    def mode_value(self) -> Any:
        return None if self.body is None else self.body.get("mode")

    @property
    def company(self) -> str | None:
        value = None if self.body is None else self.body.get("company")
        return value if isinstance(value, str) and value else None

    @property
    def says_digest(self) -> bool:
        """It has a digest member (``null`` while it has loaded nothing); a health without one
        does not compute digests at all."""
        return self.body is not None and ("loaded_digest" in self.body or "digest" in self.body)

    @property
    def loaded_digest(self) -> str | None:
        if self.body is None:
            return None
        value = self.body.get("loaded_digest", self.body.get("digest"))
        return value if isinstance(value, str) and value else None


def read_health(url: str, timeout: float = REQUEST_TIMEOUT_S) -> Health:
    """One GET of the health endpoint; never raises (a failure is the answer's ``problem``)."""
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return Health(url, None, f"no answer ({type(exc).__name__})")
    if not response.is_success:
        return Health(url, None, f"HTTP {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        return Health(url, None, "the body is not JSON")
    if not isinstance(body, dict):
        return Health(url, None, f"the body is JSON but not an object ({type(body).__name__})")
    return Health(url, body)


def mode_of_value(settings: Settings, value: Any) -> Mode | None:
    """The mode a health's ``mode`` value means, or None when the settings list it nowhere."""
    if not isinstance(value, str):
        return None
    wanted = value.strip().lower()
    for mode, values in settings.health_mode_values.items():
        if wanted in values:
            return "file" if mode == "file" else "postgres"
    return None


def unknown_mode(settings: Settings, url: str, value: Any) -> str:
    """The one line that refuses a mode value the settings do not list."""
    values = settings.health_mode_values
    return (
        f"health at {url} says mode {_shown(value)}, which neither {FILE_VALUES_SETTING} "
        f"({', '.join(values['file'])}) nor {POSTGRES_VALUES_SETTING} "
        f"({', '.join(values['postgres'])}) lists: add it to the setting of the mode it means"
    )


def health_mode(settings: Settings, health: Health) -> Mode | None:
    """The mode a usable answer reports (None: no ``mode`` in it, or an unknown value)."""
    return None if health.body is None else mode_of_value(settings, health.mode_value)


def journal_fields(health: Health) -> dict[str, Any]:
    """What a journal keeps of an answer (the known members; never the whole body)."""
    body = health.body or {}
    return {name: body.get(name) for name in HEALTH_FIELDS}
