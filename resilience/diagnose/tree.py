"""The runbook's decision tree (docs/domain.md §6), walked against the real deployment, read-only:

can we connect? no -> scenario 1 (a wrong DSN is configuration, exit 2, never scenario 1);
yes -> are the auth tables there with rows? no -> 4; is a company's data partly missing
against the newest backup? -> 3; is it invalid? -> 2; else healthy.

Every branch leaves its evidence; the answer carries the runbook's next command for this
deployment's company, and the data-loss exposure (snapshot and backups).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from resilience.config import Settings, validate_company_id
from resilience.diagnose.completeness import Completeness, compare
from resilience.diagnose.connectivity import Connectivity, check_connectivity
from resilience.diagnose.exposure import Exposure, exposure_of
from resilience.diagnose.integrity import Integrity, check_integrity
from resilience.errors import ConfigError, DatabaseError, InputError
from resilience.infra.commandline import operator_command as cmd
from resilience.infra.redact import Redactor

#: exit codes of `diagnose` (README, runbook): 0 healthy, 2 its own configuration, 11-14 the
#: scenario
EXIT_CODES = {0: 0, 1: 11, 2: 12, 3: 13, 4: 14}
TITLES = {
    0: "healthy",
    1: "scenario 1: PostgreSQL unreachable",
    2: "scenario 2: data present but corrupt",
    3: "scenario 3: data partly deleted",
    4: "scenario 4: database gone",
}
STATEMENT_TIMEOUT_MS = 30000
TABLES = ("whatsapp_auth", "whatsapp_keys")


@dataclass
class Diagnosis:
    scenario: int
    company_id: str | None  # the company the next command acts on
    evidence: list[str] = field(default_factory=list)
    next_command: str | None = None
    preview_command: str | None = None
    connectivity: Connectivity | None = None
    exposure: Exposure | None = None
    integrity: list[Integrity] = field(default_factory=list)
    completeness: list[Completeness] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    reason: str | None = None  # the evidence that decided the scenario

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.scenario]

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "title": TITLES[self.scenario],
            "exit_code": self.exit_code,
            "company_id": self.company_id,
            "evidence": self.evidence,
            "reason": self.reason,
            "next_command": self.next_command,
            "preview_command": self.preview_command,
            "connectivity": None if self.connectivity is None else self.connectivity.to_dict(),
            "exposure": None if self.exposure is None else self.exposure.to_dict(),
            "integrity": [i.to_dict() for i in self.integrity],
            "completeness": [c.to_dict() for c in self.completeness],
            "warnings": self.warnings,
        }


def _switch(company: str) -> tuple[str, str]:
    return (
        cmd(f"restore.to-files --company {company} --yes"),
        cmd(f"restore.to-files --company {company} --dry-run"),
    )


def _company_restore(company: str, exposure: Exposure) -> tuple[str | None, str | None]:
    if exposure.newest is None:
        return None, None
    base = cmd(f"backup.restore --company {company} --id {exposure.newest.id}")
    return (
        f"{base} --region {exposure.newest_region} --yes",
        f"{base} --region {exposure.newest_region}",
    )


def _rewrite_forms(company: str, form: str) -> tuple[str, str]:
    base = cmd(f"cleanup.buffer-form --company {company} --form {form}")
    return f"{base} --yes", f"{base} --dry-run"


def _forms(counts: dict[str, int]) -> str:
    """``12 array, 1 mixed``."""
    return ", ".join(f"{n} {form}" for form, n in counts.items())


def diagnose(settings: Settings, company: str | None = None) -> Diagnosis:
    """Walk the tree; ConfigError (exit 2) for a wrong DSN (a peer that is not PostgreSQL
    included), missing rights or settings, InputError for an unknown company, DatabaseError
    (exit 6) when PostgreSQL fails in a way that is neither an outage nor the DSN."""
    if company is not None:
        validate_company_id(company)
    if settings.service_dsn is None:
        raise ConfigError("diagnose needs RESILIENCE_SERVICE_DSN (the DSN the service uses)")
    dsn = settings.service_dsn.get_secret_value()
    redactor = Redactor(settings.secret_values())
    target = company or settings.company_id
    connectivity = check_connectivity(dsn, timeout=min(5.0, settings.db_connect_timeout))
    evidence = [f"{p.name}: {'ok' if p.ok else 'FAILED'}, {p.detail}" for p in connectivity.probes]
    if connectivity.verdict == "config":
        raise ConfigError("the service's DSN is wrong, not an outage: " + "; ".join(evidence))
    if connectivity.verdict == "unknown":  # the switch refuses a snapshot for it too
        raise DatabaseError(
            "cannot tell whether PostgreSQL is down, so no scenario is named (the switch would "
            "not fall back to a snapshot either): " + "; ".join(evidence)
        )
    exposure = exposure_of(settings, target)
    warnings = [
        f"region {name} {info['state']}: compared without it ({info['error']})"
        for name, info in exposure.regions.items()
        if info["state"] != "ok"
    ]
    result = Diagnosis(
        0, target, evidence, connectivity=connectivity, exposure=exposure, warnings=warnings
    )
    if connectivity.verdict == "outage":
        result.scenario = 1
        result.reason = next((e for e in evidence if "FAILED" in e), None)
        result.next_command, result.preview_command = _switch(target)
        return result
    conn = connectivity.conn
    assert conn is not None
    try:
        conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        _walk(conn, settings, company, result)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigError(
            "the service's role cannot read the auth tables: "
            + redactor.text(str(exc).splitlines()[0])
        ) from None
    finally:
        conn.close()
    return result


def scan_data(conn: psycopg.Connection[Any], settings: Settings) -> Diagnosis:
    """The data branches of the tree (tables, completeness, integrity) for every company, on a
    connection the caller holds: what the monitor runs on its slower interval."""
    exposure = exposure_of(settings, settings.company_id)
    result = Diagnosis(0, settings.company_id, [], exposure=exposure)
    _walk(conn, settings, None, result)
    return result


def _walk(
    conn: psycopg.Connection[Any], settings: Settings, company: str | None, result: Diagnosis
) -> None:
    exposure = result.exposure
    assert exposure is not None
    if not _tables_hold_rows(conn, result, exposure):
        return
    known, companies = _companies(conn, company, exposure)
    if exposure.newest is None:
        result.warnings.append("no backup could be read: completeness not compared")
    _walk_completeness(conn, settings, companies, result, exposure)
    _walk_integrity(conn, settings, [cid for cid in companies if cid in known], result, exposure)
    if result.scenario == 0:
        result.evidence.append(
            f"{len(companies)} compan{'y' if len(companies) == 1 else 'ies'}: complete and valid"
        )
    elif result.next_command is None:
        result.evidence.append("no backup holds this company: re-pair it (runbook)")


def _tables_hold_rows(conn: psycopg.Connection[Any], result: Diagnosis, exposure: Exposure) -> bool:
    """The auth tables are there, readable by the service's role and not empty; False (scenario
    4 said) when they are missing or empty."""
    present = {
        t: conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{t}",)).fetchone()[0]  # type: ignore[index]
        for t in TABLES
    }
    missing = [t for t, ok in present.items() if not ok]
    if missing:
        result.reason = f"tables: {', '.join(missing)} missing"
        result.evidence.append(result.reason)
        _gone(result, exposure)
        return False
    for table in TABLES:
        row = conn.execute(
            "SELECT has_table_privilege(current_user, %s, 'SELECT'), current_user", (table,)
        ).fetchone()
        assert row is not None
        if not row[0]:
            raise ConfigError(f"the service's role {row[1]} lacks SELECT on {table}")
    totals = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}  # type: ignore[index]
    result.evidence.append(
        f"tables: present, {totals['whatsapp_auth']} creds rows, {totals['whatsapp_keys']} key rows"
    )
    if not any(totals.values()):
        result.reason = "no rows at all in the auth tables"
        result.evidence.append(result.reason)
        _gone(result, exposure)
        return False
    return True


def _companies(
    conn: psycopg.Connection[Any], company: str | None, exposure: Exposure
) -> tuple[set[str], list[str]]:
    """(the companies with rows, the companies to look at: ``company`` or every one a row or
    the newest backup holds)."""
    known = {
        r[0]
        for r in conn.execute(
            "SELECT company_id FROM whatsapp_auth"
            " UNION SELECT DISTINCT company_id FROM whatsapp_keys"
        ).fetchall()
    }
    backed = set(exposure.newest.companies) if exposure.newest else set()
    if company is not None and company not in known | backed:
        raise InputError(f"unknown company {company!r}: no rows and no backup hold it")
    return known, [company] if company is not None else sorted(known | backed)


def _walk_completeness(
    conn: psycopg.Connection[Any],
    settings: Settings,
    companies: list[str],
    result: Diagnosis,
    exposure: Exposure,
) -> None:
    """Each company against the newest backup; the first with data missing is scenario 3."""
    for cid in companies:
        digest = exposure.newest.companies.get(cid) if exposure.newest else None
        check = compare(
            conn,
            cid,
            exposure.newest.id if exposure.newest else None,
            digest,
            drop_pct=settings.backup_drop_alert_pct,
        )
        result.completeness.append(check)
        if check.missing and result.scenario == 0:
            result.scenario = 3
            result.company_id = cid
            lost = "creds gone" if check.creds_lost else ""
            drops = ", ".join(f"{d['type']} {d['backup']} -> {d['now']}" for d in check.drops)
            result.reason = (
                f"company {cid}: data partly missing against backup {check.backup_id}: "
                + "; ".join(x for x in (lost, drops) if x)
            )
            result.evidence.append(result.reason)
            result.next_command, result.preview_command = _company_restore(cid, exposure)


def _walk_integrity(
    conn: psycopg.Connection[Any],
    settings: Settings,
    companies: list[str],
    result: Diagnosis,
    exposure: Exposure,
) -> None:
    """Each company with rows decoded; the first with invalid data is scenario 2 (unless an
    earlier branch already named one)."""
    for cid in companies:
        integrity = check_integrity(conn, cid, settings.db_buffer_form)
        result.integrity.append(integrity)
        if integrity.ok or result.scenario != 0:
            continue
        result.scenario = 2
        result.company_id = cid
        problems = _integrity_problems(integrity)
        result.reason = f"company {cid}: invalid data: " + "; ".join(problems)
        result.evidence.append(result.reason)
        if len(problems) == 1 and integrity.unreadable:  # every value decodes: rewrite them
            result.next_command, result.preview_command = _rewrite_forms(cid, integrity.buffer_form)
        else:
            result.next_command, result.preview_command = _company_restore(cid, exposure)


def _integrity_problems(integrity: Integrity) -> list[str]:
    problems = []
    if integrity.creds != "ok":
        problems.append(f"creds {integrity.creds} ({', '.join(integrity.creds_problems)})")
    if integrity.bad_keys:
        shown = ", ".join(f"{e['type']}/{e['id']}" for e in integrity.bad_examples)
        problems.append(f"{integrity.bad_keys} key(s) do not decode: {shown}")
    if integrity.unresolved_legacy:
        problems.append(f"{len(integrity.unresolved_legacy)} unresolved legacy row(s)")
    if integrity.unreadable:
        problems.append(
            f"{sum(integrity.unreadable.values())} row(s) the service cannot read "
            f"(RESILIENCE_DB_BUFFER_FORM={integrity.buffer_form}): "
            f"{_forms(integrity.unreadable)}"
        )
    return problems


def _gone(result: Diagnosis, exposure: Exposure) -> None:
    result.scenario = 4
    if exposure.newest is not None:
        where = f"--id {exposure.newest.id} --region {exposure.newest_region}"
        base = cmd(f"backup.restore {where} --to-service")
        result.next_command, result.preview_command = (
            f"{base} --yes",
            cmd(f"backup.restore --id {exposure.newest.id} --region {exposure.newest_region}"),
        )
    else:
        result.next_command, result.preview_command = _switch(result.company_id or "default")
