"""One lock per deployment and company (resilience.infra.oplock)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resilience.config import Settings
from resilience.errors import LockHeld
from resilience.infra.oplock import company_lock, current_holder, lock_path


def settings(tmp_path: Path) -> Settings:
    return Settings(auth_dir=tmp_path / "auth", runs_dir=tmp_path / "runs")


HOLD = """
import sys, time
from pathlib import Path
from resilience.config import Settings
from resilience.infra.oplock import company_lock
s = Settings(auth_dir=Path(sys.argv[1]) / "auth", runs_dir=Path(sys.argv[1]) / "runs")
with company_lock(s, "acme", "restore.to-files"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_command_is_refused_naming_the_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(LockHeld) as refused, company_lock(settings(tmp_path), "acme", "x"):
            pytest.fail("the lock was taken twice")
        message = str(refused.value)
        assert "restore.to-files" in message and f"pid {holder.pid}" in message
        assert refused.value.exit_code == 7
        found = current_holder(settings(tmp_path), "acme")
        assert found is not None and found.pid == holder.pid
        # another company is not locked by it
        with company_lock(settings(tmp_path), "other", "x") as stale:
            assert stale is None
    finally:
        holder.communicate("", timeout=30)
    with company_lock(settings(tmp_path), "acme", "y") as stale:  # released: taken at once
        assert stale is None
    assert not lock_path(settings(tmp_path), "acme").exists()  # nothing left behind


def test_a_holder_that_died_is_taken_over_and_reported(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    holder.kill()  # kill -9: no release, the file stays with its content
    holder.wait(timeout=30)
    assert holder.stdin is not None
    holder.stdin.close()
    holder.stdout.close()
    path = lock_path(settings(tmp_path), "acme")
    assert json.loads(path.read_text())["pid"] == holder.pid
    assert current_holder(settings(tmp_path), "acme") is None  # a dead holder holds nothing
    with company_lock(settings(tmp_path), "acme", "restore.to-postgres") as stale:
        assert stale is not None and stale.pid == holder.pid
        assert stale.command == "restore.to-files"
        mine = json.loads(path.read_text())
        assert mine["pid"] == os.getpid() and mine["command"] == "restore.to-postgres"
        assert path.stat().st_mode & 0o777 == 0o600


def test_the_lock_is_reentrant_within_one_process(tmp_path: Path) -> None:
    with company_lock(settings(tmp_path), "acme", "outer"):
        with company_lock(settings(tmp_path), "acme", "inner") as stale:
            assert stale is None
        assert lock_path(settings(tmp_path), "acme").exists()  # still held by the outer
    assert not lock_path(settings(tmp_path), "acme").exists()


def test_without_an_auth_dir_the_lock_lives_in_the_runs_dir(tmp_path: Path) -> None:
    s = Settings(runs_dir=tmp_path / "runs")
    assert lock_path(s, "acme").parent == (tmp_path / "runs").absolute()
