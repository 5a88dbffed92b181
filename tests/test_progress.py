"""Progress bars: drawn only on a terminal without --json; the library only counts."""

from __future__ import annotations

import io

from rich.console import Console

from resilience.infra.output import Output, RichMeters
from resilience.infra.progress import NO_METERS


def test_no_bar_with_json_or_without_a_terminal() -> None:
    assert Output(True).meters() is NO_METERS
    assert Output(False).meters() is NO_METERS  # pytest's stderr is not a terminal


def test_a_bar_counts_keys_with_a_rate_and_stops_with_its_last_meter() -> None:
    out = io.StringIO()
    meters = RichMeters(Console(file=out, force_terminal=True, width=100))
    keys = meters.start("export c1", 10, "keys")
    for _ in range(10):
        keys.advance()
    assert meters.progress is not None
    task = meters.progress.tasks[0]
    assert task.completed == 10 and task.total == 10
    keys.close()
    assert meters.progress is None  # the display stopped with its last bar
    assert "export c1" in out.getvalue() and "10/10" in out.getvalue()


def test_bytes_get_a_transfer_column() -> None:
    out = io.StringIO()
    meters = RichMeters(Console(file=out, force_terminal=True, width=100))
    sent = meters.start("upload", 2048, "bytes")
    sent.advance(2048)
    sent.close()
    assert "2.0/2.0 kB" in out.getvalue() or "2.0 kB" in out.getvalue()
