"""Moments as ISO 8601 text: the one home of the formatting the reports, manifests and pages
share (parsing stays with whoever reads a format of its own)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def iso_or_none(moment: datetime | None) -> str | None:
    """``moment.isoformat()`` (its offset and fraction as they are), None for None."""
    return None if moment is None else moment.isoformat()


def epoch_iso(at: Any) -> str:
    """Epoch seconds as UTC ISO 8601 text to the second; what is not a number comes back as
    its text (a template filter meets both)."""
    try:
        return datetime.fromtimestamp(float(at), UTC).isoformat(timespec="seconds")
    except (TypeError, ValueError):
        return str(at)
