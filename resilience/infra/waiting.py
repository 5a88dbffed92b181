"""Waiting with a deadline, in one place: poll a check until it holds or time runs out.

Every readiness probe, log watch and health poll of the project goes through :func:`wait_until`,
so none of them sleeps for a fixed time standing in for readiness.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from resilience.errors import ResilienceError, StackError

T = TypeVar("T")
POLL_INTERVAL = 0.05


def wait_until(
    check: Callable[[], T | None],
    timeout: float,
    what: str,
    *,
    interval: float = POLL_INTERVAL,
    on_timeout: Callable[[Exception | None], ResilienceError] | None = None,
    fatal: tuple[type[BaseException], ...] = (StackError,),
) -> T:
    """Poll ``check`` until it returns a truthy value, which is returned.

    Exceptions raised by ``check`` count as "not yet" (the last one is named in the error),
    except those of the ``fatal`` classes, which ``check`` raises to say that waiting is
    pointless (the process died). At the deadline ``on_timeout(last exception)`` is raised, or
    by default a :class:`StackError` saying ``what`` was not ready.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except fatal:
            raise
        except Exception as exc:  # readiness probes fail in many ways until ready
            last = exc
        if time.monotonic() >= deadline:
            if on_timeout is not None:
                raise on_timeout(last)
            detail = f" (last error: {type(last).__name__}: {last})" if last else ""
            raise StackError(f"{what} not ready after {timeout:.0f} s{detail}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
