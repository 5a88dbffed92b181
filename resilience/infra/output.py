"""The one place that writes to the terminal: a console writer (rich) and a JSON writer.

Tasks build plain data and hand it here; the library itself never prints.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table


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


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for column in columns:
        t.add_column(column)
    for row in rows:
        t.add_row(*(str(v) for v in row))
    return t
