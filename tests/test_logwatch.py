"""One log watch for commands and drills: mode lines matched line by line (anchored patterns)."""

from __future__ import annotations

from pathlib import Path

from resilience.config import Settings
from resilience.restore.verify import LogWatch


def test_the_last_mode_line_wins_and_anchored_patterns_match_per_line(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    log.write_text(
        "boot\n"
        "[auth] using PostgreSQL auth state for company acme\n"
        "connection open\n"
        "[auth] using file auth state in auth_info/company_acme for company acme\n"
        "connection open\n"
        "[auth] using PostgreSQL auth state for company other\n"
    )
    anchored = Settings(
        file_mode_pattern=r"^\[auth\] using file auth state .* for company {company}$",
        postgres_mode_pattern=r"^\[auth\] using PostgreSQL auth state for company {company}$",
    )
    for settings in (Settings(), anchored):
        assert LogWatch.whole(log).last_mode(settings, "acme") == "file"
        assert LogWatch.whole(log).last_mode(settings, "other") == "postgres"
        assert LogWatch.whole(log).last_mode(settings, "nobody") is None
    # a watch made now sees only what comes after
    watch = LogWatch(log)
    assert watch.last_mode(anchored, "acme") is None
    with log.open("a") as out:
        out.write("[auth] using PostgreSQL auth state for company acme\n")
    assert watch.last_mode(anchored, "acme") == "postgres"
