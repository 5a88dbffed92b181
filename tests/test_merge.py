"""The way back's three-way merge (resilience.files.merge): base, directory, PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience.errors import DataError
from resilience.files.merge import (
    InstalledBase,
    Side,
    base_path,
    plan_merge,
    pre_keys_issued_in_files,
    record_base,
)
from resilience.files.untouched import versions_sum


def side(name: str, value: str) -> Side:
    return Side(("session", name), f"{name}:{value}")


def base_of(**keys: str) -> InstalledBase:
    return InstalledBase(
        "acme", "install-snapshot", "2026-01-01T00:00:00+00:00", "d", "creds-0",
        {f"{n}.json": f"{n}:{v}" for n, v in keys.items()},
    )  # fmt: skip


def sides(**keys: str) -> dict[str, Side]:
    return {f"{n}.json": side(n, v) for n, v in keys.items()}


def test_every_class_of_change_goes_where_it_belongs() -> None:
    base = base_of(same="1", file_changed="1", pg_changed="1", both="1", file_deleted="1",
                   pg_deleted="1", both_deleted="1", file_deleted_pg_changed="1")  # fmt: skip
    ours = sides(same="1", file_changed="2", pg_changed="1", both="2", pg_deleted="1",
                 file_new="1")  # fmt: skip
    theirs = sides(same="1", file_changed="1", pg_changed="2", both="3", file_deleted="1",
                   pg_new="1", file_deleted_pg_changed="2")  # fmt: skip
    plan = plan_merge(base, ours, theirs, "creds-1")
    assert set(plan.from_files) == {
        "file_changed.json", "both.json", "file_new.json",
    }  # fmt: skip
    assert sorted(plan.deleted_in_files) == ["file_deleted.json", "file_deleted_pg_changed.json"]
    assert set(plan.from_postgres) == {"same.json", "pg_changed.json", "pg_new.json"}
    assert sorted(plan.changed_in_postgres) == ["pg_changed.json", "pg_new.json"]
    assert plan.deleted_in_postgres == ["pg_deleted.json"]
    assert sorted(plan.conflicts) == ["both.json", "file_deleted_pg_changed.json"]
    assert plan.unchanged == 1
    assert plan.creds_replaced  # PostgreSQL's creds moved since the base
    summary = plan.summary()
    assert summary["conflicts_files_won"] == {
        "count": 2, "first": ["both.json", "file_deleted_pg_changed.json"],
    }  # fmt: skip
    assert summary["written_from_files"]["count"] == 2  # conflicts counted apart


def test_the_same_change_on_both_sides_is_no_conflict() -> None:
    plan = plan_merge(base_of(k="1"), sides(k="2"), sides(k="2"), "creds-0")
    assert plan.conflicts == [] and set(plan.from_files) == {"k.json"}
    assert not plan.creds_replaced


def test_without_a_base_the_directory_is_taken_whole() -> None:
    plan = plan_merge(None, sides(a="1", b="2"), sides(a="1", c="1"), "x")
    assert set(plan.from_files) == {"a.json", "b.json"}
    assert plan.deleted_in_files == ["c.json"]
    assert plan.from_postgres == {} and plan.unchanged == 1
    assert plan.summary()["base"].startswith("none recorded")


values = st.dictionaries(st.sampled_from("abcdefgh"), st.sampled_from("123"), max_size=8)


@given(values, values, values)
def test_merge_result_is_theirs_where_files_did_not_move_and_ours_where_they_did(
    base_keys: dict[str, str], our_keys: dict[str, str], their_keys: dict[str, str]
) -> None:
    base, ours, theirs = base_of(**base_keys), sides(**our_keys), sides(**their_keys)
    plan = plan_merge(base, ours, theirs, None)
    result = {n: ours[n] for n in plan.from_files} | {n: theirs[n] for n in plan.from_postgres}
    for name in set(base.keys) | set(ours) | set(theirs):
        mine = ours[name].fingerprint if name in ours else None
        if mine != base.keys.get(name):  # file mode touched it: as the directory has it
            assert (result[name].fingerprint if name in result else None) == mine
        else:  # untouched in file mode: as PostgreSQL has it
            other = theirs[name].fingerprint if name in theirs else None
            assert (result[name].fingerprint if name in result else None) == other
    # after a live export (theirs == base) the merge is the directory: today's import
    plan = plan_merge(base_of(**their_keys), ours, theirs, None)
    live = {n: ours[n] for n in plan.from_files} | {n: theirs[n] for n in plan.from_postgres}
    assert live == ours and plan.conflicts == []


def test_the_base_is_written_0600_and_read_back(tmp_path: Path) -> None:
    base = record_base(tmp_path, "acme", "export", "d", "c", {"a.json": "fp"})
    path = base_path(tmp_path, "acme")
    assert path.stat().st_mode & 0o777 == 0o600
    assert InstalledBase.read(tmp_path, "acme") == base
    assert InstalledBase.read(tmp_path, "other") is None


def test_a_base_with_row_versions_records_signatures_and_their_sum(tmp_path: Path) -> None:
    directory = tmp_path / "company_acme"
    directory.mkdir()
    for name in ("a.json", "manifest.json"):
        (directory / name).write_bytes(b"{}")
    rows = {"a.json": ["session", "a", "1234"]}
    base = record_base(tmp_path, "acme", "export", "d", "c", {"a.json": "fp"}, rows=rows)
    assert base.stats is not None and set(base.stats) == {"a.json", "manifest.json"}
    assert base.versions_sum() == versions_sum(rows.values())
    assert InstalledBase.read(tmp_path, "acme") == base
    data = json.loads(base_path(tmp_path, "acme").read_bytes())
    for broken in ({"rows": {"b.json": ["session", "b", "1"]}}, {"stats": {"a.json": "1:2"}},
                   {"row_sum": "x"}):  # fmt: skip
        base_path(tmp_path, "acme").write_bytes(json.dumps({**data, **broken}).encode())
        with pytest.raises(DataError, match="move it away"):
            InstalledBase.read(tmp_path, "acme")


@pytest.mark.parametrize("content", [b"not json", b"[]", b'{"company_id": "other"}'])
def test_an_unreadable_or_foreign_base_is_refused_never_guessed(
    tmp_path: Path, content: bytes
) -> None:
    base_path(tmp_path, "acme").write_bytes(content)
    with pytest.raises(DataError, match="move it away"):
        InstalledBase.read(tmp_path, "acme")


def test_pre_keys_issued_and_used_in_file_mode_are_deleted_as_conflicts() -> None:
    """On a snapshot the service issues again the ids PostgreSQL issued after it; one it used
    (deleted) in file mode leaves no file, yet PostgreSQL's older key of that id must go."""
    base = InstalledBase(
        "acme", "install-snapshot", "t", "d", "c",
        {"pre-key-10.json": "pk10", "pre-key-11.json": "pk11"}, next_pre_key_id=12,
    )  # fmt: skip
    ours = {"pre-key-10.json": Side(("pre-key", "10"), "pk10"),
            "pre-key-14.json": Side(("pre-key", "14"), "mine14")}  # fmt: skip
    theirs = {
        "pre-key-10.json": Side(("pre-key", "10"), "pk10"),
        "pre-key-11.json": Side(("pre-key", "11"), "pk11"),
        "pre-key-12.json": Side(("pre-key", "12"), "pg12"),  # issued again and used in files
        "pre-key-20.json": Side(("pre-key", "20"), "pg20"),  # beyond what file mode issued
    }
    for next_pre_key in (15, None):  # by nextPreKeyId, or by the highest id of each side
        owned = pre_keys_issued_in_files(base, next_pre_key, ours, theirs)
        assert owned == {"pre-key-12.json"}
        plan = plan_merge(base, ours, theirs, "c", owned)
        assert plan.deleted_in_files == ["pre-key-11.json", "pre-key-12.json"]
        assert "pre-key-12.json" in plan.conflicts
        assert set(plan.from_postgres) == {"pre-key-10.json", "pre-key-20.json"}
    assert pre_keys_issued_in_files(None, 15, ours, theirs) == set()
