"""Exports of several companies at once (the task `restore.export`, a snapshot's company list):
which companies, one failure per company that did not export, the others exported anyway."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resilience.authstate.filestore import MakeDurable, SyncGroup, make_durable
from resilience.authstate.pgconn import read_transaction
from resilience.authstate.pgstore import PgAuthStore
from resilience.config import validate_company_id
from resilience.errors import InputError, ResilienceError
from resilience.files.export import ExportResult, Progress, _no_progress, export_company
from resilience.files.parallel import per_company
from resilience.infra.progress import NO_METERS, Meters


def one_line(message: str) -> str:
    """``message`` on one line (line breaks become spaces)."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def shown_company(company_id: str) -> str:
    """The company id as put in a message: as is when valid, else quoted and cut short (an id
    listed by the database is not checked yet when a failure names it)."""
    try:
        return validate_company_id(company_id)
    except InputError:
        return repr(company_id[:60])


@dataclass(frozen=True)
class CompanyFailure:
    """One company a batch (an export of several, a snapshot) could not write, and why."""

    company_id: str
    #: Class name of the error, e.g. ``DataError``.
    error: str
    #: The error's message, on one line.
    message: str
    #: The exit code of that error class (see :mod:`resilience.errors`).
    exit_code: int

    @classmethod
    def of(cls, company_id: str, exc: ResilienceError) -> CompanyFailure:
        return cls(company_id, type(exc).__name__, one_line(str(exc)), exc.exit_code)

    def to_dict(self) -> dict[str, Any]:
        return {
            "company_id": self.company_id,
            "error": self.error,
            "message": self.message,
            "exit_code": self.exit_code,
        }


@dataclass
class ExportBatch:
    """What :func:`export_all` put in place (``results``) and which companies failed."""

    results: list[ExportResult] = field(default_factory=list)
    failures: list[CompanyFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no company failed."""
        return not self.failures

    @property
    def exit_code(self) -> int:
        """0 when no company failed, else the exit code of the first failure."""
        return self.failures[0].exit_code if self.failures else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "exports": [r.to_dict() for r in self.results],
            "failures": [f.to_dict() for f in self.failures],
        }


def companies_to_export(store: PgAuthStore, companies: list[str] | None) -> list[str]:
    """The companies a batch works on: every company in the database when ``companies`` is None
    (ids checked later, one company at a time), else ``companies`` in order without repeats,
    each a valid id present in the database. An operator's typo is an :class:`InputError`
    raised before anything is written, not a failure of one company."""
    if companies is None:
        with read_transaction(store.conn):
            return store.companies()
    wanted = list(dict.fromkeys(validate_company_id(c) for c in companies))
    if not wanted:
        return []
    with read_transaction(store.conn):
        present = set(store.companies())
    unknown = [c for c in wanted if c not in present]
    if unknown:
        raise InputError(
            f"unknown company {', '.join(unknown)}: no creds and no keys in the database; "
            "nothing was exported"
        )
    return wanted


def export_all(
    store: PgAuthStore,
    root: Path,
    companies: list[str] | None,
    *,
    source: str,
    progress: Progress | None = None,
    workers: int = 1,
    stores: Callable[[], AbstractContextManager[PgAuthStore]] | None = None,
    meters: Meters = NO_METERS,
) -> ExportBatch:
    """Export each company (every company in the database when None); each company directory
    is replaced atomically. With ``stores`` (a connection per worker, see
    :class:`~resilience.files.parallel.StorePool`) up to ``workers`` companies are exported at
    the same time; else one after another through ``store``.

    A :class:`~resilience.errors.ResilienceError` of one company is recorded in the batch's
    ``failures`` (its previous directory is left as it was) and the other companies are
    exported; other exceptions propagate. Raises :class:`InputError` before writing anything
    when a company named in ``companies`` is not a valid id or not in the database.
    """
    report = progress or _no_progress
    batch = ExportBatch()
    wanted = companies_to_export(store, companies)
    many = len(wanted) > 1
    overall = meters.start("companies", len(wanted), "companies") if many else None
    inner = NO_METERS if many else meters  # one bar: companies, or the one company's keys
    parallel = workers if stores is not None else 1
    # companies written side by side share their flushes of the file system
    durable: MakeDurable = SyncGroup() if parallel > 1 else make_durable

    def one(company_id: str) -> ExportResult:
        with stores() if stores is not None else nullcontext(store) as own:
            return export_company(
                own,
                root,
                company_id,
                source=source,
                progress=progress,
                meters=inner,
                durable=durable,
            )

    def done(company_id: str, outcome: ExportResult | ResilienceError) -> None:
        if overall is not None:
            overall.advance()
        if isinstance(outcome, ResilienceError):
            failure = CompanyFailure.of(company_id, outcome)
            report(
                f"company {shown_company(company_id)}: FAILED, not exported "
                f"({failure.error}): {failure.message}"
            )

    try:
        outcomes = per_company(wanted, one, workers=parallel, done=done)
    finally:
        if overall is not None:
            overall.close()
    for company_id, outcome in outcomes:
        if isinstance(outcome, ResilienceError):
            batch.failures.append(CompanyFailure.of(company_id, outcome))
        else:
            batch.results.append(outcome)
    if batch.failures:
        failed = ", ".join(shown_company(f.company_id) for f in batch.failures)
        report(
            f"{len(batch.results)} company(ies) exported, {len(batch.failures)} failed: {failed}"
        )
    return batch
