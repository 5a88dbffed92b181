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


def _slow_queries(observed: Observed, settings: Settings) -> list[Finding]:
    slow = observed.slow_in_window
    if not slow:
        return []
    window = _duration(settings.slow_query_window)
    slowest = (
        f", the slowest {observed.slowest_recent_ms:.0f} ms"
        if observed.slowest_recent_ms is not None
        else ""
    )
    out = [
        Finding(
            "slow_query",
            "warning",
            f"{slow} auth quer{'y' if slow == 1 else 'ies'} over "
            f"{settings.slow_query_ms:g} ms in the last {window}{slowest}",
            settings.alert_cooldown,
        )
    ]
    if slow >= settings.slow_query_count:
        out.append(
            Finding(
                "slow_queries",
                "critical",
                f"{slow} slow auth queries (over {settings.slow_query_ms:g} ms) in the last "
                f"{window}: the service's database path is slow",
                settings.alert_cooldown,
            )
        )
    return out


def _pool(observed: Observed, settings: Settings) -> list[Finding]:
    out: list[Finding] = []
    if observed.pool_waiting is not None and observed.pool_waiting > settings.pool_waiting_critical:
        out.append(
            Finding(
                "pool_waiting",
                "critical",
                f"{observed.pool_waiting:.0f} requests waiting for a database connection "
                f"(pool {observed.pool_active:.0f}/{observed.pool_max:.0f} in use)",
                settings.alert_cooldown,
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
                settings.alert_cooldown,
            )
        )
    return out


def _expired_keys(observed: Observed, settings: Settings) -> list[Finding]:
    expired = observed.keys_past_expiry
    if expired is None or expired < settings.keys_expired_warn:
        return []
    severity: Severity = "critical" if expired >= settings.keys_expired_critical else "warning"
    worst = sorted(observed.keys_past_expiry_by_company.items(), key=lambda kv: -kv[1])[:3]
    where = ", ".join(f"{company} {n}" for company, n in worst)
    return [
        Finding(
            "keys_expired",
            severity,
            f"{expired} keys past expiry (expires_at passed; warn at "
            f"{settings.keys_expired_warn}, critical at {settings.keys_expired_critical})"
            + (f": {where}" if where else "")
            + f"; run `{cmd('cleanup.keys --expired')}`",
            settings.keys_alert_cooldown,
        )
    ]


def _mirror_lag(observed: Observed, settings: Settings) -> list[Finding]:
    lag = observed.mirror_lag_s
    if lag is None or lag <= settings.mirror_lag_alert:
        return []
    stuck = observed.mirror_state not in (None, "following")
    return [
        Finding(
            "mirror_lag",
            "critical" if lag > 6 * settings.mirror_lag_alert or stuck else "warning",
            f"the file mirror is {lag:.0f} s behind PostgreSQL (alert over "
            f"{settings.mirror_lag_alert:g} s; state {observed.mirror_state}): a fallback "
            f"now would lose that much; `{cmd('mirror.status')}`",
            settings.alert_cooldown,
        )
    ]


def _sources_down(observed: Observed, settings: Settings) -> list[Finding]:
    out: list[Finding] = []
    if observed.database_error is not None:
        out.append(
            Finding(
                "database_unreachable",
                "critical",
                f"the monitor cannot read the service's database: {observed.database_error}",
                settings.alert_cooldown,
            )
        )
    if observed.metrics_error is not None:
        out.append(
            Finding(
                "metrics_unreachable",
                "warning",
                f"the service's metrics cannot be read: {observed.metrics_error}",
                settings.alert_cooldown,
            )
        )
    return out


#: The rule families, in the order their findings are reported.
_FAMILIES = (_slow_queries, _pool, _expired_keys, _mirror_lag, _sources_down)


def evaluate(observed: Observed, settings: Settings) -> list[Finding]:
    """Every rule that fires now, family by family (pure: the same numbers, the same list)."""
    return [finding for family in _FAMILIES for finding in family(observed, settings)]


def overall(findings: list[Finding]) -> str:
    """ok, warning or critical: the worst finding."""
    worst = max((SEVERITY_RANK[f.severity] for f in findings), default=0)
    return {0: "ok", 1: "warning", 2: "critical"}[worst]
