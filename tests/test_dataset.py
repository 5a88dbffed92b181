"""The dataset generator: reproducible, realistic shapes, the observed age mix, legacy rows."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime, timedelta

from resilience.authstate.codec import canonical
from resilience.authstate.dataset import DEFAULT_KEYS, generate
from resilience.authstate.model import KNOWN_KEY_TYPES
from resilience.authstate.naming import file_name_for, resolve_collisions

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def test_same_arguments_same_dataset() -> None:
    a, b = generate("c1", 200, now=NOW), generate("c1", 200, now=NOW)
    assert [(k.key_type, k.key_id, canonical(k.value)) for k in a.keys] == [
        (k.key_type, k.key_id, canonical(k.value)) for k in b.keys
    ]
    assert canonical(a.creds) == canonical(b.creds)
    c = generate("c1", 200, seed=2, now=NOW)
    assert [k.key_id for k in a.keys] != [k.key_id for k in c.keys]


def test_default_size_types_and_unique_ids() -> None:
    data = generate("c1", now=NOW)
    canonical_keys = [k for k in data.keys if k.key_type != "pre"]
    assert len(canonical_keys) == DEFAULT_KEYS
    assert len({(k.key_type, k.key_id) for k in data.keys}) == len(data.keys)
    types = Counter(k.key_type for k in canonical_keys)
    for t in set(KNOWN_KEY_TYPES) - {"identity-key"}:  # the seed does not model identity-key
        assert types[t] > 0, t


def test_age_mix_matches_the_observed_one() -> None:
    data = generate("c1", 1000, now=NOW)
    ages = [NOW - k.updated_at for k in data.keys[:1000] if k.updated_at]
    buckets = Counter(
        "<1"
        if a < timedelta(days=1)
        else "1-7"
        if a < timedelta(days=7)
        else "7-14"
        if a < timedelta(days=14)
        else "14-30"
        for a in ages
    )
    assert buckets == {"<1": 240, "1-7": 380, "7-14": 350, "14-30": 30}


def test_real_id_shapes_are_present() -> None:
    ids = Counter()
    for k in generate("c1", now=NOW).keys:
        if k.key_type == "sender-key":
            assert re.fullmatch(r"[0-9-]+@g\.us::\d+::\d+", k.key_id)
            ids["old-group"] += "-" in k.key_id.split("@")[0]
        if k.key_type == "app-state-sync-key":
            ids["slash"] += "/" in k.key_id
            ids["plus"] += "+" in k.key_id
        if k.key_type == "session":
            assert re.fullmatch(r"\d+(_\w+)?\.\d+", k.key_id)
            ids["domain"] += "_" in k.key_id
        if k.key_type == "lid-mapping":
            ids["reverse"] += k.key_id.endswith("_reverse")
    assert all(ids[n] > 0 for n in ("old-group", "slash", "plus", "domain", "reverse")), ids


def test_both_encodings_and_colliding_legacy_rows() -> None:
    data = generate("c1", 300, now=NOW)
    styles = Counter(style for _, style in data.rows())
    assert styles["array"] > 0 and styles["base64"] > 0
    assert len(data.legacy) == 4
    _, collisions = resolve_collisions(data.keys)
    assert len(collisions) == 2
    for legacy in data.legacy:
        assert file_name_for(legacy.key_type, legacy.key_id).startswith("pre-key-")


def test_small_datasets_have_no_duplicate_rows() -> None:
    for n in (5, 14, 30, 50):
        for cid in (f"small_{i}" for i in range(40)):
            keys = generate(cid, n, now=NOW).keys
            assert len({(k.key_type, k.key_id) for k in keys}) == len(keys), (cid, n)
