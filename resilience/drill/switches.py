"""A switch the drill ran, in the scenario's journal: its steps as the scenario's steps.

`restore.to-files` and `restore.to-postgres` keep their own journal (the run record,
``<runs>/<run>/journal.json``): every step and undo step with its UTC start and end. A drill that
runs a switch copies those into its scenario's journal with :func:`record_switch`, so the drill
report draws them as bars on the scenario's timeline, lists them in its steps table, and marks
the switch's RTO (:mod:`resilience.drill.reporting.timeline`):

* a ``preflight`` step from the switch's start to its preflight event (the checks before the
  first step; part of the RTO);
* every step and every undo step (kind ``rollback``), their details summed up
  (:func:`summary`: scalars kept, a ``{"count": n, ...}`` as n, a list as its length; the
  whole details stay in the run record);
* one ``switch`` event: the command, its status, ``rto_s``, ``duration_s``, the run's
  ``run_id`` and ``started_at``, and the record's path (the report copies the record beside
  itself and links it).

Each record's details carry ``switch`` (the command) and ``switch_run`` (its run id), which
group the steps of one switch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from resilience.runs.html import parse_stamp
from resilience.runs.journal import Journal, StepRecord
from resilience.runs.record import JOURNAL_JSON

TEXT_MAX = 160
#: The event and the step details that tie a switch's steps together.
EVENT = "switch"
GROUP = "switch"
RUN = "switch_run"


def summary(details: Mapping[str, Any], nested: bool = False) -> dict[str, Any]:
    """The details of a step as a table shows them: scalars (text cut at 160 characters), a
    ``{"count": n}`` dict as n, a list as its length, a dict one level down summed up the same
    way (``merge.written_from_files`` 18)."""
    out: dict[str, Any] = {}
    for key, value in details.items():
        if value is None or isinstance(value, bool | int | float):
            out[key] = value
        elif isinstance(value, str):
            out[key] = value if len(value) <= TEXT_MAX else value[: TEXT_MAX - 1] + "…"
        elif isinstance(value, list | tuple):
            out[key] = len(value)
        elif isinstance(value, Mapping):
            if isinstance(value.get("count"), int):
                out[key] = value["count"]
            elif not nested:
                out |= {f"{key}.{k}": v for k, v in summary(value, nested=True).items()}
    return out


def read_run(record: Path) -> dict[str, Any]:
    """The journal of a recorded run (``<record>/journal.json``)."""
    data: dict[str, Any] = json.loads((record / JOURNAL_JSON).read_text(encoding="utf-8"))
    return data


def record_switch(
    journal: Journal,
    run: Mapping[str, Any],
    *,
    record: Path | str | None = None,
    rto_s: float | None = None,
) -> dict[str, Any]:
    """Copy the steps of a switch (``run``: its journal, as :meth:`Journal.to_dict` or the
    record's ``journal.json`` holds it) into ``journal``; returns the ``switch`` event's data."""
    command = str(run.get("title", "switch")).split(" ")[0]
    run_id = str(run.get("run_id", ""))
    group = {GROUP: command, RUN: run_id}
    steps = [*run.get("steps", []), *run.get("rollbacks", [])]
    started = run.get("started_at")
    preflight = next((e for e in run.get("events", []) if e.get("kind") == "preflight"), None)
    first = min((str(s["started_at"]) for s in steps if s.get("started_at")), default=None)
    checked = preflight["at"] if preflight else first
    if started and checked:
        began, ended = parse_stamp(started), parse_stamp(checked)
        if began is not None and ended is not None:
            journal.add(
                StepRecord(
                    "preflight", "step", "ok", str(started), str(checked),
                    max(0.0, (ended - began).total_seconds()), None, dict(group),
                )
            )  # fmt: skip
    for item in steps:
        step = StepRecord.from_dict(item)
        step.details = {**group, **summary(step.details)}
        journal.add(step)
    measured = (run.get("measurements") or {}).get("rto_s") if rto_s is None else rto_s
    data: dict[str, Any] = {
        "command": command,
        "status": run.get("status"),
        "run_id": run_id,
        "started_at": started,
        "rto_s": measured,
        "duration_s": (run.get("measurements") or {}).get("duration_s", run.get("duration_s")),
        "steps": len(run.get("steps", [])),
        "rollbacks": len(run.get("rollbacks", [])),
    }
    if record is not None:
        data["record"] = str(record)
    told = [f"{data['steps']} steps"]
    if data["rollbacks"]:
        told.append(f"{data['rollbacks']} undo steps")
    told.append(str(data["status"]))
    if isinstance(measured, int | float):
        told.append(f"RTO {measured:.3f} s")
    journal.event(EVENT, f"{command}: " + ", ".join(told), **data)
    return data
