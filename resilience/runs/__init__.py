"""Run reports: the journal (events with timestamps) and its renderings."""

from resilience.runs.html import render_html, write_html
from resilience.runs.journal import Journal, StepRecord

__all__ = ["Journal", "StepRecord", "render_html", "write_html"]
