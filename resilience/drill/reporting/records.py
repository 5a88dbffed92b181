"""Run records beside the report: ``reports/runs/<record>/``, linked relatively.

A scenario that ran an operator command names its run record (``journal.json`` and
``journal.html`` in a directory under the runs dir, often a temporary one) in an event's data
or a measurement whose key ends in ``record``. :func:`copy_records` copies each such directory
into ``reports/runs/`` and replaces the path by ``runs/<name>``, so the reports directory can be
archived or uploaded as a CI artifact and its links still work. :func:`prune` removes the
copies no kept report (``drill-*.json``, ``archive/*.json``) names any more, once they are an
hour old.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

from resilience.runs.record import JOURNAL_JSON

RUNS = "runs"
#: A copy no report names is kept this long (a drill running beside may not have written its
#: report yet).
GRACE_S = 3600.0
_NAMED = re.compile(r'"runs/([^"/\\]+)"')


def _slots(data: dict[str, Any]) -> Iterator[tuple[MutableMapping[str, Any], str]]:
    """(mapping, key) of every value naming a record: a key ending in ``record`` of an event's
    data or of the measurements."""
    for scenario in data.get("scenarios", []):
        places = [e.get("data") or {} for e in scenario.get("events", [])]
        places.append(scenario.get("measurements") or {})
        for place in places:
            for key, value in place.items():
                if key.endswith("record") and isinstance(value, str):
                    yield place, key


def copy_records(data: dict[str, Any], reports_dir: Path) -> list[Path]:
    """Copy every named record into ``reports_dir/runs`` and name it relatively (in place);
    a path that is not a record directory is left as it is. Returns the copies."""
    copied: list[Path] = []
    for place, key in list(_slots(data)):
        source = Path(str(place[key]))
        if not source.is_absolute() or not (source / JOURNAL_JSON).is_file():
            continue
        target = reports_dir / RUNS / source.name
        if not target.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
            target.chmod(0o755)
            for item in target.iterdir():
                item.chmod(0o644)
        place[key] = f"{RUNS}/{source.name}"
        copied.append(target)
    return copied


def prune(reports_dir: Path, now: float | None = None) -> list[str]:
    """Remove the copies under ``reports_dir/runs`` that no kept report names (older than
    :data:`GRACE_S`)."""
    runs = reports_dir / RUNS
    if not runs.is_dir():
        return []
    named: set[str] = set()
    for report in [*reports_dir.glob("drill-*.json"), *(reports_dir / "archive").glob("*.json")]:
        try:
            named |= set(_NAMED.findall(report.read_text(encoding="utf-8")))
        except OSError:
            continue
    removed = []
    cutoff = (time.time() if now is None else now) - GRACE_S
    for copy in runs.iterdir():
        if copy.is_dir() and copy.name not in named and copy.stat().st_mtime < cutoff:
            shutil.rmtree(copy, ignore_errors=True)
            removed.append(copy.name)
    return removed
