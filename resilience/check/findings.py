"""What a check finds and the report of them all, and the bounds every check keeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["ok", "warn", "fail"]
#: Seconds one check may take before it counts as failed (with everything broken, `check` as a
#: whole returns within about this: the checks run side by side).
CHECK_TIMEOUT = 20.0
#: Bounds of the single operations inside a check (each well below CHECK_TIMEOUT).
DB_TIMEOUT = 8.0
HTTP_TIMEOUT = 8.0
S3_CONNECT_TIMEOUT = 4.0
S3_READ_TIMEOUT = 6.0
S3_BUDGET = 15.0


@dataclass
class Finding:
    name: str
    status: Status
    found: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "found": self.found, "fix": self.fix}


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def exit_code(self) -> int:
        statuses = {f.status for f in self.findings}
        return 2 if "fail" in statuses else 1 if "warn" in statuses else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.exit_code == 0,
            "exit_code": self.exit_code,
            "duration_s": round(self.duration_s, 2),
            "findings": [f.to_dict() for f in self.findings],
            "counts": {
                s: sum(1 for f in self.findings if f.status == s) for s in ("ok", "warn", "fail")
            },
        }


def age_text(seconds: float) -> str:
    """A span of seconds as an operator reads it (s, min, h or days)."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
