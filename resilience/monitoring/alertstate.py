"""Alert state: one place for a rule's state (ok, firing, resolved), its cooldown and the
suppression of repeats, kept in a file so that a restarted monitor neither repeats an alert
still in its cooldown nor forgets one that is firing.

:meth:`AlertBook.update` turns one cycle's findings into notifications:

- a rule that starts firing: ``fired`` (also when it escalates from warning to critical);
- a rule still firing: nothing inside its cooldown (identical or not), one ``reminder`` per
  cooldown after that;
- a rule that stops firing: one ``resolved``.

The file also holds the monitor's other memory that must survive a restart (the sliding window
of slow queries, the counter it was read from) and Telegram messages waiting out a 429.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from resilience.infra.fsutil import atomic_write
from resilience.monitoring.rules import SEVERITY_RANK, Finding

log = logging.getLogger(__name__)
Kind = Literal["fired", "reminder", "resolved"]
RECENT = 50
FORMAT = 1


@dataclass(frozen=True)
class Notification:
    rule: str
    kind: Kind
    severity: str  # of the finding; "ok" for resolved
    message: str
    telegram: bool
    at: float

    @property
    def text(self) -> str:
        prefix = {
            "fired": f"[{self.severity.upper()}]",
            "reminder": f"[{self.severity.upper()}, still firing]",
            "resolved": "[RESOLVED]",
        }[self.kind]
        return f"{prefix} baileys auth monitor, {self.rule}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "text": self.text}


@dataclass
class RuleState:
    state: Literal["ok", "firing"] = "ok"
    severity: str = "ok"
    message: str = ""
    since: float | None = None
    last_sent: float | None = None
    sends: int = 0
    paged: bool = False  # a Telegram message went out for this firing


class AlertBook:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.rules: dict[str, RuleState] = {}
        self.recent: list[dict[str, Any]] = []
        self.memory: dict[str, Any] = {}
        self.pending_telegram: list[dict[str, Any]] = []
        if path is not None and path.is_file():
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            self.rules = {name: RuleState(**state) for name, state in data["rules"].items()}
            self.recent = list(data.get("recent", []))
            self.memory = dict(data.get("memory", {}))
            self.pending_telegram = list(data.get("pending_telegram", []))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # a state file that cannot be read costs at worst a repeated alert, never the monitor
            log.warning("monitor state %s not read (%s): starting afresh", path, exc)
            self.rules, self.recent, self.memory, self.pending_telegram = {}, [], {}, []

    def save(self) -> None:
        if self.path is None:
            return
        data = {
            "format": FORMAT,
            "rules": {name: asdict(state) for name, state in self.rules.items()},
            "recent": self.recent[-RECENT:],
            "memory": self.memory,
            "pending_telegram": self.pending_telegram,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True).encode())

    def update(
        self, findings: list[Finding], now: float, hold: Iterable[str] = ()
    ) -> list[Notification]:
        """News from this cycle's findings. Rules in ``hold`` were not observed this cycle (their
        source was down or has not run yet): they keep their state, never "resolved" unseen."""
        held = set(hold)
        out: list[Notification] = []
        seen = {f.rule for f in findings}
        for finding in findings:
            state = self.rules.setdefault(finding.rule, RuleState())
            kind: Kind | None = None
            if state.state != "firing":
                kind = "fired"
                state.since = now
                state.paged = False
            elif SEVERITY_RANK[finding.severity] > SEVERITY_RANK.get(state.severity, 0):
                kind = "fired"  # escalated: news, whatever the cooldown
            elif state.last_sent is None or now - state.last_sent >= finding.cooldown_s:
                kind = "reminder"
            state.state = "firing"
            state.severity = finding.severity
            state.message = finding.message
            if kind is not None:
                state.last_sent = now
                state.sends += 1
                state.paged = state.paged or finding.telegram
                out.append(
                    Notification(
                        finding.rule, kind, finding.severity, finding.message, finding.telegram, now
                    )
                )
        for name, state in self.rules.items():
            if state.state == "firing" and name not in seen and name not in held:
                out.append(
                    Notification(
                        name,
                        "resolved",
                        "ok",
                        f"resolved (was: {state.message})",
                        state.paged,
                        now,
                    )
                )
                self.rules[name] = RuleState(last_sent=state.last_sent)
        for note in out:
            self.recent.append(note.to_dict())
        self.recent = self.recent[-RECENT:]
        return out

    def firing(self) -> list[dict[str, Any]]:
        return [
            {"rule": name, **asdict(state)}
            for name, state in sorted(self.rules.items())
            if state.state == "firing"
        ]
