"""Fixtures shared by tests/ and drills/: the stack by backend, and clean databases."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from resilience.config import DrillSettings, load_drill_settings
from resilience.drill.stack import Stack, make_stack
from resilience.errors import StackError

ROOT = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> DrillSettings:
    """Settings from the environment; the local stack of a test run lives in its own dir."""
    stack_dir = ROOT / ".stack" / f"test-{os.getpid()}"
    return load_drill_settings(env_file=None, stack_dir=stack_dir, tools_dir=ROOT / ".tools")


@pytest.fixture(scope="session")
def stack(settings: DrillSettings) -> Iterator[Stack]:
    """The stack named by RESILIENCE_BACKEND (local by default), up for the whole session."""
    if settings.backend == "docker":
        from resilience.drill.stack.docker import engine_available

        reason = engine_available(settings.tools_dir)
        if reason:
            pytest.skip(reason)
    from resilience.drill.stack.engine import EngineUnavailable

    the_stack = make_stack(settings)
    try:
        the_stack.up()
    except EngineUnavailable as exc:  # no engine can run containers here: nothing to test on
        pytest.skip(str(exc))
    except StackError as exc:
        pytest.fail(f"stack did not start: {exc}", pytrace=False)
    yield the_stack
    the_stack.down()
    if settings.backend == "local":  # its logs and pid files are of no use once it is down
        shutil.rmtree(settings.stack_dir, ignore_errors=True)
