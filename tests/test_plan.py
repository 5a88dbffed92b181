"""The switch's plan, without a stack: the steps each source and direction runs, in order.

The plan is built once from the preflight's facts (resilience.restore.plans.plan_for) with a
source chosen once (resilience.restore.sources); nothing here touches PM2, PostgreSQL or git."""

from __future__ import annotations

from pathlib import Path

import pytest

from resilience.config import Settings
from resilience.restore.facts import Preflight, ToFilesFacts, ToPostgresFacts
from resilience.restore.plans import ToFiles, plan_for
from resilience.restore.session import Events, SwitchOptions, SwitchSession
from resilience.restore.sources import KeptDirectory, LiveExport, MirrorCopy, SnapshotCopy
from resilience.restore.state import SwitchState
from resilience.restore.target import Target
from resilience.runs.journal import Journal


class NoPm2:
    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"building a plan called PM2 ({name})")


def session_for(tmp_path: Path, *, tag: bool = True, unattended: bool = False) -> SwitchSession:
    settings = Settings(
        service_dir=tmp_path / "service",
        auth_dir=tmp_path / "auth",
        fallback_tag="emergency-file-fallback-v1" if tag else None,
        pm2_app="wa",
    )
    target = Target(settings, "postgresql://u:p@db/x", "acme", NoPm2())  # type: ignore[arg-type]
    options = SwitchOptions(unattended=unattended)
    return SwitchSession(target, "to-files", options, Events(Journal("plan")))


def names(session: SwitchSession, facts: Preflight) -> list[str]:
    return [step.name for step in plan_for(session, facts)]


TAIL = ["code", "env", "start-service", "verify", "remove-previous"]


def test_a_live_export(tmp_path: Path) -> None:
    facts = ToFilesFacts("acme", db_verdict="reachable", key_count=10)
    assert names(session_for(tmp_path), facts) == ["stop-service", "export", *TAIL]
    assert names(session_for(tmp_path, tag=False), facts) == [
        "stop-service", "export", "env", "start-service", "verify", "remove-previous",
    ]  # fmt: skip


def test_the_stop_begun_by_the_preflight_is_waited_for_before_the_export(tmp_path: Path) -> None:
    session = session_for(tmp_path, unattended=True)
    session.stopping = object()  # type: ignore[assignment]  # begun by the preflight
    facts = ToFilesFacts("acme", db_verdict="reachable", key_count=10)
    steps = plan_for(session, facts)
    assert [s.name for s in steps] == ["stop-service", "service-stopped", "export", *TAIL]
    assert "begun by the preflight" in steps[0].description


@pytest.mark.parametrize(
    ("mirror", "source", "name"),
    [(None, SnapshotCopy, "install-snapshot"), ("/m", MirrorCopy, "install-mirror")],
)
def test_a_copy_installs_beside_the_stop(
    tmp_path: Path, mirror: str | None, source: type, name: str
) -> None:
    facts = ToFilesFacts("acme", db_verdict="outage", snapshot_age_s=60.0)
    facts.mirror_dir = mirror
    session = session_for(tmp_path)
    plan = ToFiles(session, facts)
    assert isinstance(plan.source, source)
    steps = plan.steps()
    assert [s.name for s in steps] == ["stop-service", name, "service-stopped", *TAIL]
    assert "the next step runs meanwhile" in steps[0].description
    assert (steps[1].undo is not None) == (source is MirrorCopy)  # the mirror it stopped


def test_a_rerun_in_file_mode_keeps_the_directory(tmp_path: Path) -> None:
    session = session_for(tmp_path)
    session.target.company_dir.mkdir(parents=True)
    facts = ToFilesFacts("acme", db_verdict="reachable", env_mode="file")
    plan = ToFiles(session, facts)
    assert isinstance(plan.source, KeptDirectory)
    assert [s.name for s in plan.steps()][:2] == ["stop-service", "keep-directory"]
    # the directory of another company's switch is not kept: exported anew
    SwitchState(company_id="other").write(session.target.state_file)
    assert isinstance(ToFiles(session, facts).source, LiveExport)


def test_the_way_back(tmp_path: Path) -> None:
    session = session_for(tmp_path)
    SwitchState(company_id="acme", previous_ref="main").write(session.target.state_file)
    facts = ToPostgresFacts("acme", db_verdict="reachable", env_mode="file")
    assert names(session, facts) == [
        "stop-service", "import", "env", "code", "start-service", "verify", "done",
    ]  # fmt: skip
    facts.env_mode = "postgres"  # a re-run after the env step keeps the database
    assert names(session, facts)[1] == "keep-database"
