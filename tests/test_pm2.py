"""PM2 seen from outside: the first call on a PM2_HOME starts its daemon, and PM2 then prints
its banner before the JSON; describing an app must still work (a real operator's first call)."""

from __future__ import annotations

from pathlib import Path

import pytest

from resilience.infra.pm2 import Pm2, find_pm2

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
