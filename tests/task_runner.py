"""Running a task function in-process, as `invoke` would, for tests that check its output and
exit code quickly (many examples, no subprocess each)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from invoke.context import Context
from invoke.exceptions import Exit


def run_task(
    task: Any,
    env: dict[str, str],
    cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    **flags: Any,
) -> tuple[int, str, str]:
    """One task function, in `cwd`, with exactly these RESILIENCE_* variables:
    (exit code, stdout, stderr)."""
    for name in list(os.environ):
        if name.startswith("RESILIENCE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    code = 0
    try:
        task(Context(), **flags)
    except Exit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err
