"""``bench restore``'s RTO part: the switch's RTO against its floor on this machine, in one run.

The floor is what no switch can beat: with the files already in place (exported before, not
timed), the file-mode flags are set and the stand-in restarted by PM2 until its health answers
in file mode. The switch is the operator's ``restore.to-files --yes`` while PostgreSQL is
unreachable, scenario (a) the fault proxy disabled and (b) the server stopped, each falling back
to a snapshot taken just before by ``restore.snapshot`` (not timed; its standby copy included);
its RTO is what the switch reports: the preflight, then the steps until the service is verified.
The floor is measured twice: the operator's ``pm2 restart`` (the CLI starts node and loads PM2,
about 0.4 s), and the same restart through a PM2 session connected within the timed span, as the
switch reaches PM2; the target must hold against both. Each repetition measures the floors and
both scenarios side by side, and goes back to PostgreSQL mode with ``restore.to-postgres``
between them (not timed). Ratios are medians over medians (and minimums over minimums), since
absolute seconds on shared machines vary.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resilience.authstate.pgconn import connect
from resilience.authstate.pgstore import PgAuthStore
from resilience.chaos import faults
from resilience.chaos.toxiproxy import ToxiproxyClient
from resilience.config import DrillSettings
from resilience.drill.bench import measure
from resilience.drill.service import ServiceUnderTest
from resilience.drill.stack.base import Stack
from resilience.drill.standin.deploy import standin_on_stack
from resilience.errors import VerificationError
from resilience.files import export as export_mod
from resilience.infra.waiting import wait_until
from resilience.service import envfile
from resilience.service.modes import FILE_MODE_FLAGS, POSTGRES_MODE_FLAGS

#: Target: the switch's RTO within 1.3 times its floor.
RTO_FLOOR_RATIO_TARGET = 1.3
Progress = Callable[[str], None]


def _answers_in(service: ServiceUnderTest, mode: str) -> None:
    def ok() -> bool:  # the health endpoint only: no PM2 call in the timed wait
        return service.health().get("mode") == mode

    wait_until(ok, 60, f"the stand-in answering in {mode} mode", interval=0.05)


def _floor(service: ServiceUnderTest, *, session: bool) -> float:
    """Files in place (not timed); then flags, PM2 restart, health in file mode (timed). The
    restart by the CLI (``session`` False), or through a PM2 session connected within the
    timed span, as the switch does."""
    env_file = service.deployed.env_file
    with connect(service.stack.endpoints.service_dsn) as conn:
        export_mod.export_company(
            PgAuthStore(conn), service.auth_root, service.company, source="bench"
        )
    started = time.perf_counter()
    envfile.set_values(env_file, FILE_MODE_FLAGS)
    if session:
        with service.pm2.connected() as pm2:
            pm2.restart(service.deployed.app)
    else:
        service.pm2.restart(service.deployed.app)
    _answers_in(service, "file")
    took = time.perf_counter() - started
    envfile.set_values(env_file, POSTGRES_MODE_FLAGS)
    service.pm2.restart(service.deployed.app)
    _answers_in(service, "postgres")
    return took


def _scenario(service: ServiceUnderTest, fault: str, steps: dict[str, list[float]]) -> float:
    ep = service.stack.endpoints
    service.snapshot()  # as the operator's cron takes it, standby copy included
    with ToxiproxyClient(ep.toxiproxy_url) as toxiproxy:
        if fault == "proxy-disabled":
            injected: Any = faults.proxy_disabled(toxiproxy, ep.toxiproxy_proxy)
        else:
            injected = faults.server_stopped(
                service.stack.stop_postgres, service.stack.start_postgres, "PostgreSQL"
            )
        with injected:
            run = service.switch("to-files")
    result, rto = run.outcome.result, run.outcome.rto_s  # until verified
    if result is None or rto is None or not result.ok:
        raise VerificationError(f"bench: the switch in scenario {fault} did not complete")
    for step in result.to_dict()["steps"]:
        steps.setdefault(f"{fault}/{step['name']}", []).append(step["duration_s"])
    service.switch("to-postgres")
    _answers_in(service, "postgres")
    return rto


def bench_rto(
    stack: Stack, settings: DrillSettings, work: Path, *, repeat: int, progress: Progress
) -> dict[str, Any]:
    """The floor and scenarios (a) and (b), ``repeat`` times side by side; a JSON-ready dict."""
    floor_s: list[float] = []
    session_floor_s: list[float] = []
    a_s: list[float] = []
    b_s: list[float] = []
    steps: dict[str, list[float]] = {}
    with standin_on_stack(stack, settings, work, prefix="benchrto", keys=1313) as s:
        service = ServiceUnderTest(stack, s.deployed, s.settings, s.pm2, s.dataset)
        service.wait_mode("postgres")
        for rep in range(repeat):
            progress(f"RTO floor and scenarios (a), (b): run {rep + 1}/{repeat}")
            floor_s.append(_floor(service, session=False))
            session_floor_s.append(_floor(service, session=True))
            a_s.append(_scenario(service, "proxy-disabled", steps))
            b_s.append(_scenario(service, "postgres-stopped", steps))
    ratio_a = measure.ratio(a_s, floor_s)
    ratio_b = measure.ratio(b_s, floor_s)
    session_a = measure.ratio(a_s, session_floor_s)
    session_b = measure.ratio(b_s, session_floor_s)
    ratios = [r for r in (ratio_a, ratio_b, session_a, session_b) if r is not None]
    return {
        "floor": "file-mode flags set, PM2 restart, health answering in file mode (files in place)",
        "floor_s": measure.stats(floor_s),
        "session_floor": "the same, the restart through a PM2 session connected in the timed span",
        "session_floor_s": measure.stats(session_floor_s),
        "a_proxy_disabled_s": measure.stats(a_s),
        "b_postgres_stopped_s": measure.stats(b_s),
        "ratio_a": ratio_a,
        "ratio_b": ratio_b,
        "ratio_a_min": measure.ratio(a_s, floor_s, min),
        "ratio_b_min": measure.ratio(b_s, floor_s, min),
        "ratio_a_session_floor": session_a,
        "ratio_b_session_floor": session_b,
        "steps_s": {name: measure.stats(runs) for name, runs in steps.items()},
        "target_ratio_max": RTO_FLOOR_RATIO_TARGET,
        # against both floors: the lower one is the stricter
        "met": None if len(ratios) < 4 else max(ratios) <= RTO_FLOOR_RATIO_TARGET,
    }
