"""Alert rules: the thresholds of docs/domain.md §7 (all settings) applied to one cycle's numbers.

A rule looks at the cycle and says what is true *now*: a :class:`Finding` per rule that fires,
nothing for a rule that is fine. Whether that is news (fired, reminder, resolved) is decided in
:mod:`.alertstate`, which keeps the state across cycles and restarts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from resilience.config import Settings
from resilience.infra.commandline import operator_command as cmd

Severity = Literal["warning", "critical"]
SEVERITY_RANK = {"ok": 0, "warning": 1, "critical": 2}


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: Severity
    message: str
    cooldown_s: float

    @property
    def telegram(self) -> bool:
        """Critical findings page (Telegram); every finding is a Sentry event."""
        return self.severity == "critical"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "telegram": self.telegram}


@dataclass(frozen=True)
class Observed:
    """What one cycle saw, as the rules need it (None: that source was down or is off)."""

    slow_in_window: int | None
    slowest_recent_ms: float | None
    pool_usage_pct: float | None
    pool_active: float | None
    pool_max: float | None
    pool_waiting: float | None
    keys_past_expiry: int | None
    keys_past_expiry_by_company: Mapping[str, int]
    database_error: str | None
    metrics_error: str | None
    # the live mirror (resilience.mirror): seconds since its confirmed position, its state
    mirror_lag_s: float | None = None
    mirror_state: str | None = None


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g} s"


def evaluate(observed: Observed, settings: Settings) -> list[Finding]:
    cooldown = settings.alert_cooldown
    window = _duration(settings.slow_query_window)
    out: list[Finding] = []
    slow = observed.slow_in_window
    if slow:
        slowest = (
            f", the slowest {observed.slowest_recent_ms:.0f} ms"
            if observed.slowest_recent_ms is not None
            else ""
        )
        out.append(
            Finding(
                "slow_query",
                "warning",
                f"{slow} auth quer{'y' if slow == 1 else 'ies'} over "
                f"{settings.slow_query_ms:g} ms in the last {window}{slowest}",
                cooldown,
            )
        )
        if slow >= settings.slow_query_count:
            out.append(
                Finding(
                    "slow_queries",
                    "critical",
                    f"{slow} slow auth queries (over {settings.slow_query_ms:g} ms) in the last "
                    f"{window}: the service's database path is slow",
                    cooldown,
                )
            )
    if observed.pool_waiting is not None and observed.pool_waiting > settings.pool_waiting_critical:
        out.append(
            Finding(
                "pool_waiting",
                "critical",
                f"{observed.pool_waiting:.0f} requests waiting for a database connection "
                f"(pool {observed.pool_active:.0f}/{observed.pool_max:.0f} in use)",
                cooldown,
            )
        )
    if (
        observed.pool_usage_pct is not None
        and observed.pool_usage_pct > settings.pool_usage_warn_pct
    ):
        out.append(
            Finding(
                "pool_usage",
                "warning",
                f"connection pool {observed.pool_usage_pct:.0f}% in use "
                f"(over {settings.pool_usage_warn_pct:g}%)",
                cooldown,
            )
        )
    expired = observed.keys_past_expiry
    if expired is not None and expired >= settings.keys_expired_warn:
        severity: Severity = "critical" if expired >= settings.keys_expired_critical else "warning"
        worst = sorted(observed.keys_past_expiry_by_company.items(), key=lambda kv: -kv[1])[:3]
        where = ", ".join(f"{company} {n}" for company, n in worst)
        out.append(
            Finding(
                "keys_expired",
                severity,
                f"{expired} keys past expiry (expires_at passed; warn at "
                f"{settings.keys_expired_warn}, critical at {settings.keys_expired_critical})"
                + (f": {where}" if where else "")
                + f"; run `{cmd('cleanup.keys --expired')}`",
                settings.keys_alert_cooldown,
            )
        )
    lag = observed.mirror_lag_s
    if lag is not None and lag > settings.mirror_lag_alert:
        stuck = observed.mirror_state not in (None, "following")
        out.append(
            Finding(
                "mirror_lag",
                "critical" if lag > 6 * settings.mirror_lag_alert or stuck else "warning",
                f"the file mirror is {lag:.0f} s behind PostgreSQL (alert over "
                f"{settings.mirror_lag_alert:g} s; state {observed.mirror_state}): a fallback "
                f"now would lose that much; `{cmd('mirror.status')}`",
                cooldown,
            )
        )
    if observed.database_error is not None:
        out.append(
            Finding(
                "database_unreachable",
                "critical",
                f"the monitor cannot read the service's database: {observed.database_error}",
                cooldown,
            )
        )
    if observed.metrics_error is not None:
        out.append(
            Finding(
                "metrics_unreachable",
                "warning",
                f"the service's metrics cannot be read: {observed.metrics_error}",
                cooldown,
            )
        )
    return out


def overall(findings: list[Finding]) -> str:
    """ok, warning or critical: the worst finding."""
    worst = max((SEVERITY_RANK[f.severity] for f in findings), default=0)
    return {0: "ok", 1: "warning", 2: "critical"}[worst]
