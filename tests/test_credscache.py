"""The creds cache (resilience.authstate.credscache): TTL, true age, the on-disk copy and every
way a copy can be unusable. Pure: no stack, a fake clock."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilience.authstate.codec import canonical
from resilience.authstate.credscache import (
    DEFAULT_TTL_S,
    FORMAT,
    FORMAT_VERSION,
    MAX_COPY_BYTES,
    CacheEntry,
    CredsCache,
    decode_copy,
    encode_copy,
    file_name,
)
from resilience.authstate.dataset import make_creds
from resilience.errors import InputError

T0 = 1_750_000_000.0
COMPANY = "acme_1"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def creds() -> dict[str, Any]:
    import random

    return make_creds(random.Random(7), COMPANY)


def cache(tmp_path: Path, clock: Clock, ttl: float = DEFAULT_TTL_S) -> CredsCache:
    return CredsCache(ttl, tmp_path / "cache", clock=clock)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# --- memory and TTL -------------------------------------------------------------------------


def test_default_ttl_is_five_minutes() -> None:
    assert CredsCache().ttl_s == 300.0


def test_fresh_entry_gives_creds_and_true_age(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    memo = CredsCache(300, clock=clock)
    assert memo.get_fresh(COMPANY) is None
    memo.store(COMPANY, creds())
    clock.now += 299.5
    found = memo.get_fresh(COMPANY)
    assert found is not None
    got, age = found
    assert got == creds() and age == pytest.approx(299.5)
    clock.now += 0.5  # exactly the TTL: still fresh
    assert memo.get_fresh(COMPANY) is not None
    assert warnings(caplog) == []


def test_stale_entry_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    memo = CredsCache(10, clock=clock)
    memo.store(COMPANY, creds())
    clock.now += 10.25
    assert memo.get_fresh(COMPANY) is None
    entry = memo.entry(COMPANY)  # still there, for a caller that must say how old it is
    assert entry is not None and memo.age(entry) == pytest.approx(10.25)
    assert not memo.is_fresh(entry)
    [message] = warnings(caplog)
    assert "stale" in message and "10.2 s" in message and COMPANY in message


def test_a_save_refreshes_the_entry() -> None:
    clock = Clock()
    memo = CredsCache(10, clock=clock)
    memo.store(COMPANY, creds(), origin="load")
    clock.now += 8
    changed = {**creds(), "accountSyncCounter": 2}
    memo.store(COMPANY, changed, origin="save")
    clock.now += 8
    found = memo.get_fresh(COMPANY)
    assert found is not None and found[0] == changed and found[1] == pytest.approx(8)
    entry = memo.entry(COMPANY)
    assert entry is not None and entry.origin == "save"


def test_entries_are_per_company_and_copies() -> None:
    memo = CredsCache(60, clock=Clock())
    original = creds()
    memo.store(COMPANY, original)
    original["noiseKey"]["private"] = b"changed after store"
    found = memo.get_fresh(COMPANY)
    assert found is not None
    assert found[0]["noiseKey"]["private"] != b"changed after store"
    found[0]["registrationId"] = -1  # the caller's copy
    again = memo.get_fresh(COMPANY)
    assert again is not None and again[0]["registrationId"] != -1
    assert memo.get_fresh("other_company") is None


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf")])
def test_ttl_must_be_positive(ttl: float) -> None:
    with pytest.raises(InputError, match="TTL"):
        CredsCache(ttl)


@pytest.mark.parametrize("bad", [None, {}, "creds", []])
def test_empty_creds_are_not_cached(bad: Any) -> None:
    with pytest.raises(InputError, match="empty creds"):
        CredsCache(60).store(COMPANY, bad)


def test_company_ids_are_validated() -> None:
    memo = CredsCache(60)
    with pytest.raises(InputError):
        memo.store("../etc", creds())
    with pytest.raises(InputError):
        memo.get_fresh("a/b")
    with pytest.raises(InputError):
        file_name("x" * 51)


def test_repr_never_shows_creds() -> None:
    entry = CacheEntry(COMPANY, {"noiseKey": {"private": b"very-secret"}}, T0, "load")
    assert "very-secret" not in repr(entry)


# --- the on-disk copy ---------------------------------------------------------------------


def test_copy_survives_a_restart_with_bytes_and_age(tmp_path: Path) -> None:
    clock = Clock()
    cache(tmp_path, clock).store(COMPANY, creds())
    clock.now += 42.5
    restarted = cache(tmp_path, clock)  # a new process: nothing in memory
    found = restarted.get_fresh(COMPANY)
    assert found is not None
    got, age = found
    assert got == creds()
    assert isinstance(got["noiseKey"]["private"], bytes)
    assert age == pytest.approx(42.5)
    entry = restarted.entry(COMPANY)
    assert entry is not None and entry.source == "disk" and entry.stored_at == T0


def test_copy_is_0600_in_a_0700_dir_and_atomic(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        memo = cache(tmp_path, Clock())
        memo.store(COMPANY, creds())
        memo.store(COMPANY, {**creds(), "accountSyncCounter": 5}, origin="save")
    finally:
        os.umask(old)
    path = memo.path(COMPANY)
    assert path is not None and path.name == f"creds-{COMPANY}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left
    document = json.loads(path.read_text())
    assert document["format"] == FORMAT and document["version"] == FORMAT_VERSION
    assert document["company_id"] == COMPANY and document["origin"] == "save"
    assert document["creds"]["accountSyncCounter"] == 5
    # BufferJSON, base64 style: what Baileys writes to files
    assert document["creds"]["noiseKey"]["private"]["type"] == "Buffer"
    assert isinstance(document["creds"]["noiseKey"]["private"]["data"], str)


def test_an_existing_loose_directory_is_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    cache(tmp_path, Clock()).store(COMPANY, creds())
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_an_unwritable_copy_is_a_warning_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "cache").write_text("a file where the directory should be")
    memo = cache(tmp_path, Clock())
    memo.store(COMPANY, creds())
    assert memo.get_fresh(COMPANY) is not None  # memory still serves
    [message] = warnings(caplog)
    assert "cannot write the on-disk copy" in message


def _write_copy(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "cache" / file_name(COMPANY)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_bytes(document if isinstance(document, bytes) else json.dumps(document).encode())
    return path


def _good_document() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(encode_copy(CacheEntry(COMPANY, creds(), T0, "load")))
    return data


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"version": 2}, "format version 2"),
        ({"version": True}, "format version True"),
        ({"version": None}, "format version None"),
        ({"company_id": "someone_else"}, "written for company 'someone_else'"),
        ({"company_id": 5}, "written for company int"),
        ({"format": "something/else"}, "not a baileys-resilience/creds-cache"),
        ({"stored_at": "yesterday"}, "stored_at is not a time stamp"),
        ({"stored_at": True}, "stored_at is not a time stamp"),
        ({"stored_at": -5}, "stored_at is not a time stamp"),
        ({"stored_at": T0 + 3600}, "in the future"),
        ({"origin": "guess"}, "origin"),
        ({"creds": None}, "creds are missing"),
        ({"creds": {}}, "creds are missing"),
        ({"creds": [1, 2]}, "creds are missing"),
        ({"creds": {"noiseKey": {"type": "Buffer", "data": "%%%"}}}, "not valid base64"),
    ],
)
def test_a_bad_copy_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, change: dict[str, Any], needle: str
) -> None:
    document = {**_good_document(), **change}
    path = _write_copy(tmp_path, document)
    memo = cache(tmp_path, Clock(T0 + 1))
    assert memo.get_fresh(COMPANY) is None
    assert memo.entry(COMPANY) is None
    found = warnings(caplog)
    assert found and all(str(path) in m and "ignoring the on-disk copy" in m for m in found)
    assert needle in found[0]


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"\xff\xfe not utf-8", b"[]", b"null", b'{"format": 1}', b"NaN"],
)
def test_a_corrupt_copy_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, raw: bytes
) -> None:
    _write_copy(tmp_path, raw)
    assert cache(tmp_path, Clock()).get_fresh(COMPANY) is None
    assert any("corrupt" in m for m in warnings(caplog))


def test_a_stale_copy_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write_copy(tmp_path, _good_document())
    assert cache(tmp_path, Clock(T0 + 301)).get_fresh(COMPANY) is None
    assert any("stale" in m and "301.0 s" in m for m in warnings(caplog))
    assert cache(tmp_path, Clock(T0 + 299)).get_fresh(COMPANY) is not None


def test_a_slightly_future_copy_counts_as_age_zero(tmp_path: Path) -> None:
    _write_copy(tmp_path, _good_document())
    found = cache(tmp_path, Clock(T0 - 5)).get_fresh(COMPANY)
    assert found is not None and found[1] == 0.0


def test_a_symlink_or_huge_file_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_bytes(encode_copy(CacheEntry(COMPANY, creds(), T0, "load")))
    link = tmp_path / "cache" / file_name(COMPANY)
    link.parent.mkdir()
    link.symlink_to(target)
    assert cache(tmp_path, Clock()).get_fresh(COMPANY) is None
    assert any("symbolic link" in m for m in warnings(caplog))
    link.unlink()
    link.write_bytes(b" " * (MAX_COPY_BYTES + 10))
    assert cache(tmp_path, Clock()).get_fresh(COMPANY) is None
    assert any("larger than" in m for m in warnings(caplog))


def test_a_copy_of_another_company_under_our_name_is_refused(tmp_path: Path) -> None:
    other = CacheEntry("other", creds(), T0, "load")
    _write_copy(tmp_path, encode_copy(other))
    assert cache(tmp_path, Clock()).get_fresh(COMPANY) is None


def test_warnings_never_show_creds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = "S3CR3T-advSecretKey-value"
    document = {**_good_document(), "version": 9}
    document["creds"]["advSecretKey"] = secret
    _write_copy(tmp_path, document)
    assert cache(tmp_path, Clock()).get_fresh(COMPANY) is None
    assert caplog.records and all(secret not in r.getMessage() for r in caplog.records)


def test_forget_removes_memory_and_disk(tmp_path: Path) -> None:
    memo = cache(tmp_path, Clock())
    memo.store(COMPANY, creds())
    path = memo.path(COMPANY)
    assert path is not None and path.exists()
    memo.forget(COMPANY)
    assert not path.exists() and memo.get_fresh(COMPANY) is None
    memo.forget(COMPANY)  # twice is fine


# --- properties -------------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.binary(max_size=40)
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_creds = st.dictionaries(st.text(min_size=1, max_size=12), _values, min_size=1, max_size=6)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=_creds, age=st.floats(min_value=0, max_value=600, allow_nan=False))
def test_any_creds_round_trip_through_the_disk_copy(
    tmp_path: Path, value: dict[str, Any], age: float
) -> None:
    clock = Clock()
    directory = tmp_path / "prop"
    CredsCache(300, directory, clock=clock).store(COMPANY, value)
    clock.now += age
    restarted = CredsCache(300, directory, clock=clock)
    found = restarted.get_fresh(COMPANY)
    if age > 300:
        assert found is None
        return
    assert found is not None
    got, got_age = found
    assert got == value  # bytes stay bytes, floats stay floats
    assert canonical(got) == canonical(value)
    assert got_age == pytest.approx(age, abs=1e-6)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_reader(raw: bytes) -> None:
    from resilience.authstate.credscache import CopyIgnored

    try:
        entry = decode_copy(raw, COMPANY, now=T0)
    except CopyIgnored:
        return
    assert entry.company_id == COMPANY  # only a well-formed copy for this company passes


@settings(max_examples=150, deadline=None)
@given(document=st.dictionaries(st.sampled_from(list(_good_document())), _values, max_size=7))
def test_arbitrary_documents_never_crash_the_reader(document: dict[str, Any]) -> None:
    from resilience.authstate.credscache import CopyIgnored

    merged = {**_good_document(), **document}
    try:
        raw = json.dumps(merged, default=lambda b: list(b)).encode()
    except ValueError:
        return
    try:
        entry = decode_copy(raw, COMPANY, now=T0)
    except CopyIgnored:
        return
    assert entry.company_id == COMPANY and isinstance(entry.creds, dict) and entry.creds
