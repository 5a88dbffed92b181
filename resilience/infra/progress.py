"""Progress of long work (keys exported, companies done, bytes sent), told by the library to
whoever shows it. The library only counts; the tasks' output module draws a Rich progress bar
when stderr is a terminal and draws nothing otherwise (``--json``, cron, pipes).
"""

from __future__ import annotations

from typing import Protocol


class Meter(Protocol):
    """One measured piece of work: ``advance`` as units are done, ``close`` at the end."""

    def advance(self, units: int = 1) -> None: ...

    def close(self) -> None: ...


class Meters(Protocol):
    """Makes a :class:`Meter` per piece of work: ``unit`` is ``"keys"``, ``"companies"`` or
    ``"bytes"``; ``total`` None when not known yet."""

    def start(self, description: str, total: int | None, unit: str) -> Meter: ...


class _NoMeter:
    def advance(self, units: int = 1) -> None:
        return None

    def close(self) -> None:
        return None


class NoMeters:
    """Counts nothing (the default: no terminal, ``--json``, drills)."""

    def start(self, description: str, total: int | None, unit: str) -> Meter:
        return _NoMeter()


NO_METERS: Meters = NoMeters()
