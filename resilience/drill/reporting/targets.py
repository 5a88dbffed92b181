"""Targets against measured values, read from a journal's measurements.

Two ways for a drill to state a target, both plain JSON in ``journal.measurements``:

1. **Paired keys.** A key holding one of the words ``limit``, ``max``, ``target`` (at most),
   ``min`` (at least) or ``expected`` (equal) as one of its ``_``-separated parts is the target of
   the key without that part: ``rto_limit_s`` (or ``rto_s_max``) is the limit of ``rto_s``,
   ``restore_target_s`` of ``restore_s``, ``keys_expected`` of ``keys``, ``waiting_min`` of
   ``waiting``. A limit whose measured key is absent is shown as a plain measurement.
2. **A ``targets`` dict** for anything else (alerts expected and received, a loss window):
   ``{"targets": {name: {"target": ..., "measured": ..., "met": bool}}}``, where ``met`` may
   be left out when ``op`` (``<=`` by default for a number, ``==`` otherwise; also ``<``,
   ``>=``, ``>``) lets it be computed; ``unit`` is optional. :func:`target` builds one entry.

The unit of a paired key is its last part (``_s``, ``_ms``, ``_bytes``, ``_pct``). A target
whose measured value is missing or not comparable is shown as *unknown*, never as met.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: The key of the explicit targets dict in a journal's measurements.
TARGETS_KEY = "targets"
OPS: dict[str, tuple[str, Callable[[Any, Any], bool]]] = {
    "<=": ("≤", operator.le),
    "<": ("<", operator.lt),
    ">=": ("≥", operator.ge),
    ">": (">", operator.gt),
    "==": ("=", operator.eq),
}
#: The word of a paired key and the comparison it states.
PAIR_WORDS = {"limit": "<=", "max": "<=", "target": "<=", "min": ">=", "expected": "=="}
UNITS = {"s": "s", "ms": "ms", "bytes": "B", "pct": "%"}


@dataclass(frozen=True)
class TargetRow:
    """One row of the targets table."""

    name: str
    op: str | None
    target: Any
    measured: Any
    unit: str
    met: bool | None

    @property
    def verdict(self) -> str:
        return {True: "met", False: "missed", None: "unknown"}[self.met]

    @property
    def target_shown(self) -> str:
        if self.op is None:
            return show(self.target, self.unit)
        return f"{OPS[self.op][0]} {show(self.target, self.unit)}"

    @property
    def measured_shown(self) -> str:
        return show(self.measured, self.unit)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op": self.op,
            "target": self.target,
            "measured": self.measured,
            "unit": self.unit,
            "met": self.met,
        }


def target(measured: Any, limit: Any, op: str | None = None, unit: str = "") -> dict[str, Any]:
    """One entry of the ``targets`` dict: ``{"targets": {"RTO": target(rto_s, 600, unit="s")}}``;
    ``op`` is ``<=`` for a number, ``==`` for anything else, unless given."""
    if op is None:
        op = "<=" if _number(limit) else "=="
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}, not {op!r}")
    met = compare(measured, op, limit)
    entry: dict[str, Any] = {"target": limit, "measured": measured, "op": op, "met": met}
    if unit:
        entry["unit"] = unit
    return entry


def compare(measured: Any, op: str, limit: Any) -> bool | None:
    """Whether ``measured op limit`` holds; None when it cannot be told (missing, not numbers)."""
    if measured is None or limit is None:
        return None
    if op == "==":
        return bool(measured == limit)
    if not (_number(measured) and _number(limit)):
        return None
    return bool(OPS[op][1](measured, limit))


def evaluate(measurements: Mapping[str, Any]) -> tuple[list[TargetRow], set[str]]:
    """The target rows of a journal's measurements, and the keys they were read from."""
    rows: list[TargetRow] = []
    used: set[str] = set()
    for key, limit in measurements.items():
        found = _paired(key, measurements)
        if found is None:
            continue
        measured_key, op = found
        unit = UNITS.get(measured_key.rsplit("_", 1)[-1], "")
        measured = measurements[measured_key]
        rows.append(
            TargetRow(measured_key, op, limit, measured, unit, compare(measured, op, limit))
        )
        used |= {key, measured_key}
    explicit = measurements.get(TARGETS_KEY)
    if isinstance(explicit, Mapping):
        used.add(TARGETS_KEY)
        rows += [_explicit(str(name), entry) for name, entry in explicit.items()]
    return rows, used


def show(value: Any, unit: str = "") -> str:
    """A value as a table shows it: ``12.345 s``, ``1,313``, lists as JSON, None as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, float):
        text = f"{value:,.3f}".rstrip("0").rstrip(".")
    elif isinstance(value, str):
        return value
    else:
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return f"{text} {unit}" if unit else text


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _paired(key: str, measurements: Mapping[str, Any]) -> tuple[str, str] | None:
    """(measured key, op) when ``key`` is the target of another measurement, e.g.
    ``rto_limit_s`` -> (``rto_s``, ``<=``); the last target word that names one wins."""
    parts = key.split("_")
    for index in reversed(range(len(parts))):
        if parts[index] not in PAIR_WORDS or len(parts) == 1:
            continue
        measured = "_".join(parts[:index] + parts[index + 1 :])
        if measured in measurements and measured not in (key, TARGETS_KEY):
            return measured, PAIR_WORDS[parts[index]]
    return None


def _explicit(name: str, entry: Any) -> TargetRow:
    if not isinstance(entry, Mapping):
        return TargetRow(name, None, entry, None, "", None)
    limit, measured = entry.get("target"), entry.get("measured")
    unit = str(entry.get("unit") or "")
    op = entry.get("op")
    if op not in OPS:
        op = "<=" if _number(limit) else ("==" if limit is not None else None)
        if isinstance(limit, str):
            op = None  # a target written as text ("< 10 min") is shown as written
    met = entry.get("met")
    if not isinstance(met, bool):
        met = compare(measured, op, limit) if op is not None else None
    return TargetRow(name, op, limit, measured, unit, met)
