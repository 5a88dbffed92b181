"""The cyclic garbage collector paused while one bulk step allocates and keeps many objects.

An export or import of 100k keys holds every row's record while it works; each of the
collector's young collections that promotes them, and every full one, traverses them all again
(measured: 1,248 collections and 2.8 s of a 17 s export of 100k keys under load). Reference
counting still frees everything those steps drop; only reference cycles wait until the
collector runs again, right after. Nested and concurrent pauses (exports in several threads)
are counted: the collector comes back when the last one ends, if it was on before the first.
Written here because the standard library has ``gc.disable`` but no scoped, counted pause.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_pauses = 0
_was_enabled = False


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The body runs with the cyclic collector off (see the module text)."""
    global _pauses, _was_enabled
    with _lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                gc.enable()
