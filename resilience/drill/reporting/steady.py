"""The steady state before and after, judged: which change was expected, which deviated.

A probe whose value did not change is *unchanged*. A change is judged by the probe's name:

``mode``
    expected when the scenario's last switch that ended before the after probe moved the
    service there (``restore.to-files``: ``file``, ``restore.to-postgres``: ``postgres``; a switch
    that was undone leaves the mode where it was); any other mode is a *deviation*;
``key_count``, ``keys``, ``digest``
    expected when the service acknowledged writes between the probes (its ``writes_ok`` is
    above 0 after, or changed); without writes a change is a *deviation*;
``writes_ok`` and other counters (``*_ok``, ``*_total``, ``*_saves_ok``)
    expected: the service counts (a restart starts its counter again);
``company``
    a change is a *deviation* (the drill looked at another service).

Any other probe that changed is *not judged* (no rule says what it should do). The scenario's
verdict: ``deviated`` when the journal says so or a probe deviated, ``held`` when every probe
is unchanged or changed as expected, else ``not judged``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from resilience.drill.reporting.timeline import group_of, parse

MODES = {"restore.to-files": "file", "restore.to-postgres": "postgres"}
WRITES = "writes_ok"
COUNTERS_ENDING = ("_ok", "_total", "_count_total")
BY_WRITES = ("key_count", "keys", "digest")
IDENTITY = ("company",)


@dataclass(frozen=True)
class Probe:
    key: str
    before: Any
    after: Any
    verdict: str  # unchanged, expected, deviated, unjudged
    why: str = ""


@dataclass(frozen=True)
class Judged:
    probes: list[Probe]
    verdict: str  # held, deviated, unjudged, none

    @property
    def label(self) -> str:
        unjudged = sum(p.verdict == "unjudged" for p in self.probes)
        return {
            "held": "steady state held",
            "deviated": "steady state deviated",
            "unjudged": f"steady state: {unjudged} change{'s' * (unjudged != 1)} not judged",
            "none": "no steady state",
        }[self.verdict]


def _switched_mode(journal: Mapping[str, Any], before_at: Any, after_at: Any) -> tuple[str, str]:
    """(mode, why) the last switch between the probes left the service in; ("", "") if none."""
    low, high = parse(before_at), parse(after_at)
    runs: dict[str, dict[str, Any]] = {}
    for record in [*journal.get("steps", []), *journal.get("rollbacks", [])]:
        group = group_of(record)
        if group is None:
            continue
        run = runs.setdefault(group[1], {"command": group[0], "end": None, "undone": False})
        end = parse(record.get("ended_at"))
        if end is not None and (run["end"] is None or end > run["end"]):
            run["end"] = end
        if record.get("kind") == "rollback" or record.get("status") == "failed":
            run["undone"] = True
    chosen = [
        r
        for r in runs.values()
        if r["end"] is not None
        and (low is None or r["end"] >= low)
        and (high is None or r["end"] <= high)
        and r["command"] in MODES
    ]
    if not chosen:
        return "", ""
    last = max(chosen, key=lambda r: r["end"])
    if last["undone"]:
        return "", f"{last['command']} failed and was undone"
    return MODES[last["command"]], f"{last['command']} switched the service"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def judge(journal: Mapping[str, Any]) -> Judged:
    """The steady state probes of a journal dict, each judged, and the scenario's verdict."""
    states = journal.get("steady_states") or {}
    before_state, after_state = states.get("before") or {}, states.get("after") or {}
    before, after = before_state.get("data") or {}, after_state.get("data") or {}
    if not before and not after:
        return Judged([], "deviated" if journal.get("deviated") else "none")
    mode, mode_why = _switched_mode(journal, before_state.get("at"), after_state.get("at"))
    writes_before, writes_after = before.get(WRITES), after.get(WRITES)
    wrote = isinstance(writes_after, int | float) and (
        writes_after > 0 or writes_after != writes_before
    )
    probes = []
    for key in [*before, *(k for k in after if k not in before)]:
        b, a = before.get(key), after.get(key)
        if key not in before or key not in after:
            probes.append(Probe(key, b, a, "unjudged", "measured once"))
            continue
        if b == a and not (key == "mode" and mode and a != mode):
            probes.append(Probe(key, b, a, "unchanged"))
            continue
        probes.append(_changed(key, b, a, mode, mode_why, bool(wrote), writes_after))
    verdicts = {p.verdict for p in probes}
    if journal.get("deviated") or "deviated" in verdicts:
        verdict = "deviated"
    elif "unjudged" in verdicts:
        verdict = "unjudged"
    else:
        verdict = "held"
    return Judged(probes, verdict)


def _changed(key: str, b: Any, a: Any, mode: str, mode_why: str, wrote: bool, writes: Any) -> Probe:
    if key == "mode":
        if mode and a == mode:
            return Probe(key, b, a, "expected", mode_why)
        if mode:
            return Probe(key, b, a, "deviated", f"{mode_why}: expected {mode}")
        return Probe(key, b, a, "deviated", mode_why or "no switch explains it")
    if key in BY_WRITES:
        delta = f" ({a - b:+,})" if _number(a) and _number(b) else ""
        if wrote:
            return Probe(key, b, a, "expected", f"the service's writes{delta}: {WRITES} {writes}")
        return Probe(key, b, a, "deviated", f"changed{delta} without a write of the service")
    if key == WRITES or key.endswith(COUNTERS_ENDING):
        return Probe(key, b, a, "expected", "a counter of the service")
    if key in IDENTITY:
        return Probe(key, b, a, "deviated", "another service answered")
    return Probe(key, b, a, "unjudged", "no rule for this probe")
