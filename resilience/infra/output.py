"""The one place that writes to the terminal: a console writer (rich) and a JSON writer.

Tasks build plain data and hand it here; the library itself never prints.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from resilience.infra.progress import NO_METERS, Meter, Meters


class Output:
    def __init__(self, as_json: bool = False) -> None:
        self.as_json = as_json
        self.console = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def result(self, data: Any, human: Callable[[Console, Any], None] | None = None) -> None:
        """Write the final result: JSON on stdout, or the human rendering."""
        if self.as_json:
            sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
            sys.stdout.flush()
        elif human is not None:
            human(self.console, data)
        else:
            self.console.print_json(json.dumps(data, default=str))

    def progress(self, message: str) -> None:
        """Progress goes to stderr so `--json` stdout stays parseable."""
        self.err.print(message, style="dim", markup=False)

    def error(self, message: str) -> None:
        self.err.print(f"error: {message}", style="bold red", markup=False)

    def meters(self) -> Meters:
        """Progress bars on stderr when it is a terminal and the output is not JSON; else
        meters that draw nothing."""
        if self.as_json or not self.err.is_terminal:
            return NO_METERS
        return RichMeters(self.err)


class _Rate(ProgressColumn):
    """Units per second, for counts that are not bytes (rich has a rate column for bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = str(task.fields.get("unit", ""))
        return Text("" if speed is None else f"{speed:,.0f} {unit}/s", style="progress.data.speed")


class _RichMeter:
    def __init__(self, meters: RichMeters, task_id: Any) -> None:
        self._meters, self._task = meters, task_id

    def advance(self, units: int = 1) -> None:
        progress = self._meters.progress
        if progress is not None:
            progress.advance(self._task, units)

    def close(self) -> None:
        self._meters.finish(self._task)


class RichMeters:
    """One Rich progress display on stderr; a bar per piece of work (keys or bytes, rate, time
    left), started with the first bar and stopped when the last one closes."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None
        self._open = 0

    def start(self, description: str, total: int | None, unit: str) -> Meter:
        if self.progress is None:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn() if unit != "bytes" else DownloadColumn(),
                TransferSpeedColumn() if unit == "bytes" else _Rate(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self.progress.start()
        self._open += 1
        return _RichMeter(self, self.progress.add_task(description, total=total, unit=unit))

    def finish(self, task_id: Any) -> None:
        if self.progress is None:
            return
        self.progress.stop_task(task_id)
        self._open -= 1
        if self._open <= 0:
            self.progress.stop()
            self.progress = None


def table(
    title: str, columns: list[str], rows: list[list[Any]], whole: tuple[str, ...] = ()
) -> Table:
    """A table of plain values (never read as markup: an error may hold brackets); the
    `whole` columns (ids an operator copies) are never folded."""
    t = Table(title=title, title_justify="left")
    for index, column in enumerate(columns):
        widest = max((len(str(row[index])) for row in rows), default=0)
        t.add_column(column, overflow="fold", min_width=widest if column in whole else None)
    for row in rows:
        t.add_row(*(v if isinstance(v, Text) else Text(str(v)) for v in row))
    return t


def human_bytes(n: int | float | None) -> str:
    """1536 -> '1.5 KB'; None -> '?'."""
    if n is None:
        return "?"
    for unit, size in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def human_age(seconds: int | float | None) -> str:
    """How long ago, to the unit that reads: '45 s', '12 min', '5.0 h', '3.2 d'."""
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
