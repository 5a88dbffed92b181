"""Many companies at once: a bounded number of workers, one connection each, failures per company.

``restore.export`` and ``restore.snapshot`` hand every company to :func:`per_company`: up to
``workers`` run at the same time (threads: the database and the file system work of one company
overlap the encoding of another; psycopg and the file system calls release the GIL), each with
a connection of its own from a psycopg_pool pool. A company whose work raises a
:class:`~resilience.errors.ResilienceError` is reported with its id and never stops the others;
any other exception stops the batch. Memory is bounded by ``workers`` companies at a time: each
company's rows are read, written and dropped before its worker takes the next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from resilience.authstate.pgstore import PgAuthStore
from resilience.errors import DatabaseUnreachable, ResilienceError
from resilience.infra.redact import Redactor, redact_dsn

T = TypeVar("T")
Outcome = tuple[str, "T | ResilienceError"]


class StorePool:
    """Connections for the workers (``workers`` at most), each handed out as a store."""

    def __init__(self, dsn: str, *, workers: int, timeout: float) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self._pool = ConnectionPool(
            dsn,
            min_size=0,
            max_size=max(1, workers),
            kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout))},
            timeout=timeout,
            open=True,
        )

    @contextmanager
    def store(self) -> Iterator[PgAuthStore]:
        try:
            with self._pool.connection() as conn:
                yield PgAuthStore(conn)
        except PoolTimeout:
            where = Redactor([self.dsn]).text(redact_dsn(self.dsn))
            raise DatabaseUnreachable(
                f"no connection to PostgreSQL at {where} within {self.timeout:.0f} s"
            ) from None

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> StorePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def per_company(
    companies: list[str],
    work: Callable[[str], T],
    *,
    workers: int,
    done: Callable[[str, T | ResilienceError], None] | None = None,
) -> list[tuple[str, T | ResilienceError]]:
    """``work(company)`` for every company, ``workers`` at a time; the outcomes in the order of
    ``companies``: the result, or the :class:`ResilienceError` it raised (psycopg errors that
    escaped become one too). ``done`` is called as each company finishes (progress)."""
    outcomes: dict[str, T | ResilienceError] = {}

    def one(company_id: str) -> None:
        try:
            outcome: T | ResilienceError = work(company_id)
        except ResilienceError as exc:
            outcome = exc
        except psycopg.Error as exc:
            outcome = ResilienceError(f"database error: {str(exc).splitlines()[0]}")
        outcomes[company_id] = outcome
        if done is not None:
            done(company_id, outcome)

    if workers <= 1 or len(companies) <= 1:
        for company_id in companies:
            one(company_id)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="company") as pool:
            futures: list[Future[None]] = [pool.submit(one, c) for c in companies]
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in finished:
                if future.exception() is not None:
                    for other in futures:
                        other.cancel()
                    raise future.exception()  # type: ignore[misc]
    return [(c, outcomes[c]) for c in companies]
