"""The preflight's rules without a stack: each refusal from facts alone, and the facts that pass.

The facts are what resilience.restore.preflight gathers (resilience.restore.facts); the rules
(resilience.restore.refusals) are pure, so each case is a dataclass and a list of problems. The
messages are the ones the drills and the stack tests assert on the real refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from resilience.config import Settings
from resilience.errors import DatabaseUnreachable, DataError, InputError
from resilience.restore.facts import Failure, ToFilesFacts, ToPostgresFacts
from resilience.restore.preflight import judged
from resilience.restore.refusals import (
    REFUSALS,
    ROOM_FOR_STATE,
    Problem,
    over_age_limit,
    problems_to_files,
    problems_to_postgres,
    refusal_kind,
)
from resilience.restore.session import SwitchOptions

GB = 1 << 30
PLAIN = SwitchOptions()
FORCED = SwitchOptions(force=True)
SETTINGS = Settings(
    service_dir=Path("/srv/wa"),
    auth_dir=Path("/srv/wa/auth_info"),
    fallback_tag="emergency-file-fallback-v1",
    snapshot_dir=Path("/var/snapshots"),
    snapshot_max_age=3600.0,
)


def to_files(**facts: object) -> ToFilesFacts:
    """Facts that pass: connected, reachable, a known company, room, a clean tree."""
    passing: dict[str, object] = {
        "db_verdict": "reachable",
        "db_connected": True,
        "key_count": 60,
        "service_company": "acme",
        "env_mode": "postgres",
        "pm2_status": "online",
        "company_dir": "/srv/wa/auth_info/company_acme",
        "disk_probe": "/srv/wa/auth_info",
        "disk_free": 10 * GB,
        "disk_writable": True,
        "disk_needed": 4096,
        "tag": "emergency-file-fallback-v1",
        "tag_commit": "abc123",
        "current_ref": "main",
    }
    return ToFilesFacts("acme", **{**passing, **facts})  # type: ignore[arg-type]


def down(**facts: object) -> ToFilesFacts:
    """PostgreSQL unreachable at connect."""
    error = "PostgreSQL unreachable at postgresql://u@db/x"
    return to_files(
        db_verdict="outage", db_error=error, db_connected=False, key_count=None, **facts
    )


def to_postgres(**facts: object) -> ToPostgresFacts:
    passing: dict[str, object] = {
        "db_verdict": "reachable",
        "db_connected": True,
        "key_count": 60,
        "service_company": "acme",
        "env_mode": "file",
        "pm2_status": "online",
        "company_dir": "/srv/wa/auth_info/company_acme",
        "disk_probe": "/srv/wa/auth_info",
        "disk_free": 10 * GB,
        "disk_writable": True,
        "directory_found": True,
        "previous_ref": "main",
    }
    return ToPostgresFacts("acme", **{**passing, **facts})  # type: ignore[arg-type]


def messages(problems: list[Problem]) -> list[str]:
    return [p.message for p in problems]


def files_says(facts: ToFilesFacts, options: SwitchOptions = PLAIN) -> list[str]:
    return messages(problems_to_files(facts, options, SETTINGS))


# --- what passes ---------------------------------------------------------------------------------
def test_the_facts_that_pass() -> None:
    assert problems_to_files(to_files(), PLAIN, SETTINGS) == []
    assert problems_to_postgres(to_postgres()) == []
    # a service that does not say which company it serves is a warning, not a refusal
    assert problems_to_files(to_files(service_company=None), PLAIN, SETTINGS) == []
    # a young snapshot, or the mirror's fresh position, when PostgreSQL is down
    assert files_says(down(snapshot_path="/var/snapshots/s1", copy_age_s=60.0)) == []
    assert files_says(down(mirror_dir="/m", snapshot_path=None, copy_age_s=2.0)) == []
    # the merge preview failing on an outage: the rules of the way back say nothing of it
    assert problems_to_postgres(to_postgres(merge_failure=Failure("outage", "gone"))) == []


def test_before_the_question_nothing_refuses_so_the_stop_may_begin() -> None:
    """What the gather asks before the database's statement (the early stop): connected, the
    answer not in yet."""
    partial = to_files(db_verdict="unknown", key_count=None, disk_needed=None)
    assert files_says(partial) == []


def test_judged_keeps_the_verdict_on_the_facts() -> None:
    facts = judged(to_files(key_count=0, pm2_error="PM2 has no app named 'wa'"), [])
    assert (facts.problems, facts.refusal) == ([], "input")
    facts = judged(facts, problems_to_files(facts, PLAIN, SETTINGS))
    assert facts.problems == [
        "PM2 has no app named 'wa'",
        "unknown company acme: no keys in the database",
    ]
    assert facts.to_dict()["direction"] == "to-files" and facts.to_dict()["db_reachable"]


# --- the database --------------------------------------------------------------------------------
def test_a_wrong_configuration_is_never_an_outage() -> None:
    facts = to_files(
        db_verdict="misconfigured",
        db_error="the DSN is wrong: it holds a '#'",
        db_connected=False,
        key_count=None,
        snapshot_path=None,
    )
    assert files_says(facts) == [
        "PostgreSQL is not down, the configuration is wrong (RESILIENCE_SERVICE_DSN): the DSN is "
        "wrong: it holds a '#'; fix it, no snapshot is used for a typo"
    ]


def test_a_failure_that_does_not_tell_is_not_an_outage() -> None:
    facts = to_files(db_verdict="unknown", db_error="permission denied", key_count=None)
    assert files_says(facts) == [
        "cannot tell whether PostgreSQL is down (permission denied): not falling back to a snapshot"
    ]


def test_a_connect_failure_is_said_first_a_failed_question_after_the_local_checks() -> None:
    wrong = {"db_verdict": "misconfigured", "db_error": "bad DSN", "key_count": None}
    at_connect = files_says(to_files(db_connected=False, env_error="no .env", **wrong))
    assert at_connect[0].startswith("PostgreSQL is not down") and at_connect[1] == "no .env"
    on_question = files_says(to_files(db_connected=True, env_error="no .env", **wrong))
    assert on_question[0] == "no .env" and on_question[1].startswith("PostgreSQL is not down")


def test_unknown_company() -> None:
    assert files_says(to_files(key_count=0)) == ["unknown company acme: no keys in the database"]


# --- the service and the auth directory ----------------------------------------------------------
def test_another_company_served() -> None:
    expected = (
        "the service serves company other, not acme: switch --company other, or fix "
        "RESILIENCE_COMPANY_ID"
    )
    assert files_says(to_files(service_company="other")) == [expected]
    assert messages(problems_to_postgres(to_postgres(service_company="other"))) == [expected]


def test_the_env_file_pm2_and_the_state_file() -> None:
    facts = to_files(
        env_error="service env file /srv/wa/.env not found",
        pm2_error="PM2 has no app named 'wa'",
        state_error="restore state /srv/wa/auth_info/.restore-state.json is unreadable: bad",
    )
    assert files_says(facts) == [
        "service env file /srv/wa/.env not found",
        "restore state /srv/wa/auth_info/.restore-state.json is unreadable: bad: fix or move it "
        "away (it holds the way back)",
        "PM2 has no app named 'wa'",
    ]


@pytest.mark.parametrize("direction", ["to-files", "to-postgres"])
def test_a_symlinked_company_directory(direction: str) -> None:
    expected = (
        "/srv/wa/auth_info/company_acme is a symlink: refusing to read or replace what it points "
        "to; make it a real directory"
    )
    # no room said beside it, and no directory to import on the way back
    if direction == "to-files":
        said = files_says(to_files(company_dir_symlink=True, disk_free=10, disk_needed=None))
    else:
        facts = to_postgres(company_dir_symlink=True, disk_free=10, directory_found=False)
        said = messages(problems_to_postgres(facts))
    assert said == [expected]


def test_no_room_for_the_switch_state() -> None:
    facts = to_files(disk_free=ROOM_FOR_STATE - 1, disk_needed=None)
    assert files_says(facts) == [
        f"no room in /srv/wa/auth_info ({ROOM_FOR_STATE - 1} bytes free): the switch writes its "
        "state there; free some space first"
    ]


def test_a_rerun_on_files_that_do_not_decode_is_a_data_refusal() -> None:
    broken = Failure("data", "creds.json in /srv/wa/auth_info/company_acme does not decode")
    problems = problems_to_files(to_files(files_failure=broken), PLAIN, SETTINGS)
    assert problems == [
        Problem(
            "creds.json in /srv/wa/auth_info/company_acme does not decode: nothing was stopped, "
            "the service keeps serving",
            "data",
        )
    ]
    assert refusal_kind([Problem("x"), *problems]) == "data"
    assert REFUSALS[refusal_kind(problems)] is DataError


# --- the code ------------------------------------------------------------------------------------
def test_the_tag_needs_the_service_dir() -> None:
    settings = SETTINGS.model_copy(update={"service_dir": None})
    assert messages(problems_to_files(to_files(tag=None), PLAIN, settings)) == [
        "RESILIENCE_FALLBACK_TAG needs RESILIENCE_SERVICE_DIR (the git tree)"
    ]
    no_tag = SETTINGS.model_copy(update={"fallback_tag": None})
    assert problems_to_files(to_files(tag=None, dirty=["x"]), PLAIN, no_tag) == []


def test_a_missing_tag() -> None:
    error = "git rev-parse --verify refs/tags/no-such-tag-v9 failed"
    assert files_says(to_files(code_error=error, tag_commit=None)) == [error]


def test_local_changes_refused_unless_forced() -> None:
    facts = to_files(dirty=["a.js", "b.js", "c.js", "d.js", "e.js", "f.js"])
    assert files_says(facts) == [
        "work tree /srv/wa has local changes (a.js, b.js, c.js, d.js, e.js): commit them, or "
        "--force (discards them)"
    ]
    assert files_says(facts, FORCED) == []


# --- the export ----------------------------------------------------------------------------------
def test_the_export_dir() -> None:
    assert files_says(to_files(disk_free=None)) == [
        "export dir /srv/wa/auth_info does not exist and neither does its parent"
    ]
    assert files_says(to_files(disk_writable=False)) == [
        "export dir /srv/wa/auth_info is not writable"
    ]
    # not connected: no export, so the export dir is not judged
    assert "export dir" not in " ".join(files_says(down(disk_free=None, snapshot_path="/s")))


def test_not_enough_disk_for_the_export() -> None:
    facts = to_files(disk_free=2 * ROOM_FOR_STATE, disk_needed=3 * ROOM_FOR_STATE)
    assert files_says(facts) == [
        f"not enough disk for the export: {2 * ROOM_FOR_STATE} bytes free in /srv/wa/auth_info, "
        f"about {3 * ROOM_FOR_STATE} needed"
    ]


# --- the copy, PostgreSQL down -------------------------------------------------------------------
def test_no_snapshot() -> None:
    assert files_says(down()) == [
        "PostgreSQL unreachable at postgresql://u@db/x, and there is no snapshot of company acme "
        "in /var/snapshots"
    ]


def test_a_snapshot_over_the_age_limit_unless_forced() -> None:
    facts = down(snapshot_path="/var/snapshots/s1", snapshot_age_s=7230.4, copy_age_s=7230.4)
    assert files_says(facts) == [
        "newest snapshot is 7230 s old, over the limit of 3600 s (RESILIENCE_SNAPSHOT_MAX_AGE): "
        "--force to use it"
    ]
    assert files_says(facts, FORCED) == []


def test_the_mirror_over_the_age_limit_unless_forced() -> None:
    facts = down(mirror_dir="/m", snapshot_path="/var/snapshots/s1", copy_age_s=4000.0)
    assert files_says(facts) == [
        "the mirror's last confirmed position is 4000 s old, over the limit of 3600 s "
        "(RESILIENCE_SNAPSHOT_MAX_AGE): --force to use it"
    ]
    assert files_says(facts, FORCED) == []


def test_the_age_limit() -> None:
    assert not over_age_limit(3600.0, SETTINGS, PLAIN)
    assert over_age_limit(3600.1, SETTINGS, PLAIN)
    assert not over_age_limit(1e9, SETTINGS, FORCED)


# --- the way back --------------------------------------------------------------------------------
def test_the_database_down_on_the_way_back_is_a_database_refusal() -> None:
    facts = to_postgres(
        db_verdict="outage", db_error="PostgreSQL unreachable", db_connected=False, key_count=None
    )
    problems = problems_to_postgres(facts)
    assert problems == [
        Problem("PostgreSQL must be reachable to switch back: PostgreSQL unreachable", "database")
    ]
    assert REFUSALS[refusal_kind([Problem("x", "data"), *problems])] is DatabaseUnreachable


def test_a_file_the_merge_preview_cannot_decode_is_a_data_refusal() -> None:
    broken = Failure("data", "session-x.json: not base64")
    problems = problems_to_postgres(to_postgres(merge_failure=broken))
    assert problems == [
        Problem(
            "session-x.json: not base64: nothing was stopped, the service keeps serving", "data"
        )
    ]
    other = problems_to_postgres(to_postgres(merge_failure=Failure("other", "manifest broken")))
    assert other == [Problem("manifest broken")]
    assert REFUSALS[refusal_kind(other)] is InputError


def test_no_directory_to_import() -> None:
    facts = to_postgres(directory_found=False)
    assert messages(problems_to_postgres(facts)) == [
        "no Baileys directory /srv/wa/auth_info/company_acme to import"
    ]


def test_unmappable_file_names_are_listed() -> None:
    names = [f"session-{i}-a__b.json" for i in range(12)]
    said = messages(problems_to_postgres(to_postgres(unmappable=names)))
    assert said == [
        "file names that cannot be mapped back to key ids without guessing: "
        + ", ".join(names[:10])
        + " and 2 more"
    ]
    few = messages(problems_to_postgres(to_postgres(unmappable=names[:2])))
    assert few[0].endswith("session-1-a__b.json")
