"""PM2 seen from outside: the first call on a PM2_HOME starts its daemon, and PM2 then prints
its banner before the JSON; describing an app must still work (a real operator's first call)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from resilience.errors import StackError
from resilience.infra.pm2 import Pm2, Pm2Session, SessionCall, find_pm2

ROOT = Path(__file__).resolve().parents[1]


def test_the_first_call_on_a_fresh_pm2_home_reads_past_the_banner(tmp_path: Path) -> None:
    try:
        binary = find_pm2(ROOT / ".tools")
    except Exception as exc:  # no PM2 installed: nothing to check here
        pytest.skip(str(exc))
    pm2 = Pm2(binary, home=tmp_path / "pm2")
    try:
        assert pm2.describe("no-such-app") is None  # the daemon is spawned by this very call
        assert pm2.apps() == []
    finally:
        pm2.kill()


@pytest.fixture
def pm2_with_app(tmp_path: Path) -> Iterator[Pm2]:
    """A fresh PM2 daemon running one tiny app, ``idle``."""
    try:
        binary = find_pm2(ROOT / ".tools")
    except Exception as exc:  # no PM2 installed: nothing to check here
        pytest.skip(str(exc))
    script = tmp_path / "idle.js"
    script.write_text("setInterval(() => {}, 1000);\n")
    ecosystem = tmp_path / "ecosystem.json"
    ecosystem.write_text(json.dumps({"apps": [{"name": "idle", "script": str(script)}]}))
    pm2 = Pm2(binary, home=tmp_path / "pm2")
    pm2.start(ecosystem)
    try:
        yield pm2
    finally:
        pm2.kill()


def test_a_connected_pm2_stops_restarts_and_describes_through_its_session(
    pm2_with_app: Pm2,
) -> None:
    with pm2_with_app.connected() as pm2:
        assert pm2.session is not None
        call = pm2.begin("stop", "idle")
        assert isinstance(call, SessionCall)  # not a CLI process
        call.wait()
        stopped = pm2.require("idle")
        assert stopped.status == "stopped" and stopped.pid is None
        pm2.restart("idle")
        running = pm2.require("idle")
        assert running.status == "online" and running.pid
        assert running.out_log is not None
        with pytest.raises(StackError, match="pm2 stop failed"):
            pm2.stop("no-such-app")
    # the CLI, after the session ended, sees what the session did
    assert pm2_with_app.require("idle").pid == running.pid


def test_a_session_that_cannot_load_pm2_leaves_the_cli_in_charge(
    pm2_with_app: Pm2, tmp_path: Path
) -> None:
    broken = Pm2Session(tmp_path / "not-pm2", dict(os.environ), timeout=30)
    try:
        assert broken.begin("jlist") is None
        assert broken.refused is not None and "cannot load pm2" in broken.refused
    finally:
        broken.close()
    pm2 = replace(pm2_with_app, session=broken)
    assert pm2.require("idle").status == "online"  # through the CLI


def test_commands_a_session_does_not_carry_run_the_cli(pm2_with_app: Pm2) -> None:
    with pm2_with_app.connected() as pm2:
        assert pm2.session is not None
        assert pm2.session.begin("kill") is None
        call = pm2.begin("ping")
        assert not isinstance(call, SessionCall)
        call.wait()
