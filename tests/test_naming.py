"""Baileys file naming: safety for hostile ids, the way back, legacy collisions."""

from __future__ import annotations

import base64
import os
import random
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience.authstate.model import KNOWN_KEY_TYPES, KeyRecord, ttl_for
from resilience.authstate.naming import (
    CREDS_FILE,
    Collision,
    company_dir_name,
    file_name_for,
    parse_file_name,
    resolve_collisions,
    safe_path,
    try_parse_file_name,
)
from resilience.errors import DataError, InputError

# --- safety ------------------------------------------------------------------------------------

_hostile = st.text(
    alphabet=st.sampled_from(["/", ".", ":", "\\", "\0", "-", "_", "a", "ж", "€", "\n", " "])
    | st.characters(),
    max_size=300,
)
_types = st.sampled_from(KNOWN_KEY_TYPES) | st.text(max_size=20)

HOSTILE_IDS = [
    "../../etc/passwd",
    "/abs/path",
    "..\\x",
    "..",
    ".",
    "../",
    "a/../../b",
    ":..:",
    "~root",
    "-rf",
]


@pytest.fixture(scope="module")
def box() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp) / "company_c1"


def _assert_single_component(name: str, box: Path) -> None:
    assert name and name not in (".", "..")
    assert "/" not in name and "\0" not in name
    assert len(name.encode("utf-8")) <= 255
    path = safe_path(box, name)
    assert path.parent == box
    assert os.path.normpath(path) == str(path)
    assert Path(os.path.realpath(path)).parent == Path(os.path.realpath(box))


@given(_types, _hostile)
def test_file_name_is_one_component_or_refused(box: Path, key_type: str, key_id: str) -> None:
    try:
        name = file_name_for(key_type, key_id)
    except InputError as exc:
        assert "\n" not in str(exc)
        assert len(str(exc)) < 400
        return
    _assert_single_component(name, box)
    assert name.endswith(".json")


@pytest.mark.parametrize("key_id", HOSTILE_IDS)
def test_hostile_ids_stay_inside(box: Path, key_id: str) -> None:
    name = file_name_for("session", key_id)
    _assert_single_component(name, box)


def test_file_name_is_baileys_fix_file_name() -> None:
    assert file_name_for("pre-key", "5") == "pre-key-5.json"
    assert file_name_for("pre", "key-5") == "pre-key-5.json"
    assert file_name_for("app-state-sync-key", "AAb/+x==") == "app-state-sync-key-AAb__+x==.json"
    assert (
        file_name_for("sender-key", "120363@g.us::7900_1::3")
        == "sender-key-120363@g.us--7900_1--3.json"
    )
    # `/` is fixed first, so an id's own `:` after a `/` still becomes `-`.
    assert file_name_for("t", "a/:b") == "t-a__-b.json"


@pytest.mark.parametrize(
    ("key_type", "key_id", "fragment"),
    [
        ("session", "", "empty key id"),
        ("", "1", "empty key type"),
        ("session", "a\0b", "NUL"),
        ("session", "x" * 250, "bytes"),
        ("session", "ж" * 124, "bytes"),
        ("session", "\ud800", "Unicode"),
    ],
)
def test_unnameable_ids_are_refused(key_type: str, key_id: str, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment) as caught:
        file_name_for(key_type, key_id)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 250


def test_longest_legal_name_is_accepted() -> None:
    name = file_name_for("session", "x" * (255 - len("session-.json")))
    assert len(name.encode()) == 255


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\0b", "/etc"])
def test_safe_path_refuses(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError):
        safe_path(tmp_path, name)


def test_safe_path_refuses_symlink(tmp_path: Path) -> None:
    (tmp_path / "link.json").symlink_to("/etc/passwd")
    with pytest.raises(InputError, match="symbolic link"):
        safe_path(tmp_path, "link.json")


def test_company_dir_name() -> None:
    assert company_dir_name("acme_1-2") == "company_acme_1-2"
    for bad in ["", "../x", "a/b", "x" * 51, "a b"]:
        with pytest.raises(InputError):
            company_dir_name(bad)


def test_ttl() -> None:
    for t in ("pre-key", "session", "sender-key", "lid-mapping", "old-lid-mapping-x"):
        assert ttl_for(t) == timedelta(days=7)
    for t in ("sender-key-memory", "app-state-sync-key", "device-list", "tctoken", "new-type"):
        assert ttl_for(t) == timedelta(days=14)


# --- the way back ----------------------------------------------------------------------------

_digits = st.from_regex(r"[1-9][0-9]{5,15}", fullmatch=True)
_signal_user = st.builds(lambda u, d: u + d, _digits, st.sampled_from(["", "_1", "_128", "_129"]))
_device = st.integers(0, 99).map(str)
_group = (
    _digits.map(lambda d: f"{d}@g.us")
    | st.builds(lambda p, e: f"{p}-{e}@g.us", _digits, st.integers(10**9, 2 * 10**9))
    | st.just("status@broadcast")
)
SHAPES: dict[str, st.SearchStrategy[str]] = {
    "pre-key": st.integers(0, 2**24).map(str),
    "session": st.builds(lambda u, d: f"{u}.{d}", _signal_user, _device),
    "identity-key": st.builds(lambda u, d: f"{u}.{d}", _signal_user, _device),
    "sender-key": st.builds(lambda g, u, d: f"{g}::{u}::{d}", _group, _signal_user, _device),
    "sender-key-memory": _group,
    "app-state-sync-key": st.binary(min_size=1, max_size=32).map(
        lambda b: base64.b64encode(b).decode()
    ),
    "app-state-sync-version": st.sampled_from(
        ["regular", "regular_high", "regular_low", "critical_block", "critical_unblock_low"]
    ),
    "lid-mapping": st.builds(lambda u, r: u + r, _digits, st.sampled_from(["", "_reverse"])),
    "device-list": _digits,
    "tctoken": st.builds(lambda u, s: u + s, _digits, st.sampled_from(["@lid", "@s.whatsapp.net"]))
    | st.just("__index"),
}


def test_every_known_type_has_a_shape() -> None:
    assert set(SHAPES) == set(KNOWN_KEY_TYPES)


@given(st.sampled_from(sorted(SHAPES)).flatmap(lambda t: st.tuples(st.just(t), SHAPES[t])))
def test_realistic_ids_round_trip(pair: tuple[str, str]) -> None:
    key_type, key_id = pair
    assert parse_file_name(file_name_for(key_type, key_id)) == (key_type, key_id)


@given(st.sampled_from(KNOWN_KEY_TYPES), _hostile)
def test_parse_never_guesses_a_different_file(key_type: str, key_id: str) -> None:
    try:
        name = file_name_for(key_type, key_id)
    except InputError:
        return
    parsed = try_parse_file_name(name)
    if parsed is not None:
        # Whatever comes back names exactly the same file: no invented ids.
        assert file_name_for(*parsed) == name


@given(SHAPES["app-state-sync-key"].filter(lambda s: "/" in s or "+" in s))
def test_base64_with_slash_and_plus(key_id: str) -> None:
    name = file_name_for("app-state-sync-key", key_id)
    assert "/" not in name
    assert parse_file_name(name) == ("app-state-sync-key", key_id)


@pytest.mark.parametrize(
    "name",
    [
        "session-foo-bar.json",  # `-` may have been `:`
        "session-a__b.json",  # `__` may have been `/`
        "sender-key-120363@g.us--abc--0.json",
        "sender-key-120363@g.us-7900-0.json",
        "app-state-sync-key-AA-B.json",
        "app-state-sync-key-AA___B.json",
        "app-state-sync-key-A__.json",  # "A/" is not base64, so `__` was not a `/`
        "pre-key-1-2.json",
        "tctoken-x__y.json",
        "unknown-type-1.json",
        "pre-1.json",
        "prekey-1.json",
        "pre-key-.json",
        "pre-key.json",
        CREDS_FILE,
        "readme.txt",
        ".json",
    ],
)
def test_ambiguous_names_are_refused(name: str) -> None:
    with pytest.raises(DataError) as caught:
        parse_file_name(name)
    assert "\n" not in str(caught.value)
    assert try_parse_file_name(name) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("pre-key-5.json", ("pre-key", "5")),
        ("sender-key-memory-120363@g.us.json", ("sender-key-memory", "120363@g.us")),
        (
            "sender-key-79001234567-1600000000@g.us--79001234567--0.json",
            ("sender-key", "79001234567-1600000000@g.us::79001234567::0"),
        ),
        ("session-79001234567_1.12.json", ("session", "79001234567_1.12")),
        ("lid-mapping-123_reverse.json", ("lid-mapping", "123_reverse")),
        ("app-state-sync-key-AAAAAB__m.json", ("app-state-sync-key", "AAAAAB/m")),
        ("tctoken-__index.json", ("tctoken", "__index")),
        ("device-list-79001234567.json", ("device-list", "79001234567")),
        ("session-weird_but@plain.json", ("session", "weird_but@plain")),
    ],
)
def test_known_names(name: str, expected: tuple[str, str]) -> None:
    assert parse_file_name(name) == expected


# --- collisions --------------------------------------------------------------------------------

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def rec(key_type: str, key_id: str, hours: float | None, value: object = b"v") -> KeyRecord:
    at = None if hours is None else T0 + timedelta(hours=hours)
    return KeyRecord("c1", key_type, key_id, value, updated_at=at)


def test_legacy_row_newest_wins_and_is_reported() -> None:
    new = rec("pre-key", "5", 2)
    old = rec("pre", "key-5", 1)
    other = rec("session", "1.0", None)
    chosen, collisions = resolve_collisions([old, other, new])
    assert chosen == {"pre-key-5.json": new, "session-1.0.json": other}
    assert collisions == [
        Collision(
            "pre-key-5.json", ("pre-key", "5", new.updated_at), [("pre", "key-5", old.updated_at)]
        )
    ]


def test_newer_legacy_row_wins() -> None:
    chosen, collisions = resolve_collisions([rec("pre-key", "5", 1), rec("pre", "key-5", 3)])
    assert chosen["pre-key-5.json"].key_type == "pre"
    assert collisions[0].dropped == [("pre-key", "5", T0 + timedelta(hours=1))]


def test_none_is_oldest_and_ties_prefer_known_type() -> None:
    chosen, _ = resolve_collisions([rec("pre-key", "5", None), rec("pre", "key-5", 0)])
    assert chosen["pre-key-5.json"].key_type == "pre"
    chosen, _ = resolve_collisions([rec("pre", "key-5", 0), rec("pre-key", "5", 0)])
    assert chosen["pre-key-5.json"].key_type == "pre-key"
    chosen, _ = resolve_collisions([rec("pre", "key-5", None), rec("pre-key", "5", None)])
    assert chosen["pre-key-5.json"].key_type == "pre-key"
    # Both unknown: the smallest (type, id).
    chosen, _ = resolve_collisions([rec("x-y", "z", 0), rec("x", "y-z", 0)])
    assert chosen["x-y-z.json"].key_type == "x"


def test_naive_and_aware_times_compare() -> None:
    naive = KeyRecord("c1", "pre", "key-5", b"", updated_at=datetime(2030, 1, 1))
    chosen, _ = resolve_collisions([naive, rec("pre-key", "5", 0)])
    assert chosen["pre-key-5.json"] is naive


def test_mixed_companies_are_refused() -> None:
    with pytest.raises(InputError, match="more than one company"):
        resolve_collisions([rec("a", "1", 0), KeyRecord("c2", "a", "2", b"")])


_colliding = st.lists(
    st.tuples(
        st.sampled_from(
            [
                ("pre-key", "5"),
                ("pre", "key-5"),
                ("pre-key-5", "x"),
                ("session", "1.0"),
                ("session", "1:0"),
                ("session-1", "0"),
                ("sender-key", "g@g.us::1::0"),
            ]
        ),
        st.none() | st.integers(0, 3),
        st.binary(max_size=2),
    ),
    max_size=12,
)


@given(_colliding, st.randoms(use_true_random=False))
def test_resolution_ignores_input_order(
    rows: list[tuple[tuple[str, str], int | None, bytes]], rnd: random.Random
) -> None:
    records = [rec(t, i, h, v) for (t, i), h, v in rows]
    chosen, collisions = resolve_collisions(records)
    shuffled = list(records)
    rnd.shuffle(shuffled)
    assert resolve_collisions(shuffled) == (chosen, collisions)
    # Nothing vanishes: every record is either chosen or listed as dropped.
    kept = [(r.key_type, r.key_id, r.updated_at) for r in chosen.values()]
    dropped = [d for c in collisions for d in c.dropped]
    assert sorted(kept + dropped, key=repr) == sorted(
        [(r.key_type, r.key_id, r.updated_at) for r in records], key=repr
    )
    for collision in collisions:
        winner = chosen[collision.file_name]
        assert collision.chosen == (winner.key_type, winner.key_id, winner.updated_at)
        for _, _, at in collision.dropped:
            assert (at or datetime.min.replace(tzinfo=UTC)) <= (
                winner.updated_at or datetime.min.replace(tzinfo=UTC)
            )
