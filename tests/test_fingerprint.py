"""Key fingerprints and company digests depend on decoded values only, never on order."""

from __future__ import annotations

import base64
import hashlib
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience.authstate import codec
from resilience.authstate.fingerprint import AuthDigest, KeyFingerprint, digest_of, set_digest
from resilience.errors import InputError

CREDS = {"noiseKey": {"private": b"\x01" * 32, "public": b"\x02" * 32}, "registrationId": 42}


def test_fingerprint_definition() -> None:
    value = {"private": b"\x00\xff"}
    expected = hashlib.sha256(b"pre-key\x005\x00" + codec.canonical(value)).hexdigest()
    assert KeyFingerprint.of("pre-key", "5", value) == expected


@given(st.binary(max_size=64))
def test_fingerprint_ignores_buffer_encoding(raw: bytes) -> None:
    forms = [
        raw,
        {"type": "Buffer", "data": list(raw)},
        {"type": "Buffer", "data": base64.b64encode(raw).decode()},
    ]
    assert len({KeyFingerprint.of("session", "1.0", f) for f in forms}) == 1


@given(st.binary(max_size=16), st.binary(max_size=16))
def test_fingerprint_tells_values_apart(a: bytes, b: bytes) -> None:
    same = KeyFingerprint.of("session", "1.0", a) == KeyFingerprint.of("session", "1.0", b)
    assert same == (a == b)


def test_fingerprint_covers_type_and_id() -> None:
    prints = {
        KeyFingerprint.of("pre-key", "5", b""),
        KeyFingerprint.of("pre", "key-5", b""),  # same file name, different key
        KeyFingerprint.of("pre-key", "6", b""),
        KeyFingerprint.of("session", "5", b""),
    }
    assert len(prints) == 4


_keys = st.lists(
    st.tuples(
        st.sampled_from(["pre-key", "session", "x"]), st.text(max_size=5), st.binary(max_size=4)
    ),
    max_size=10,
)


@given(_keys, st.randoms(use_true_random=False))
def test_set_digest_ignores_order(keys: list[tuple[str, str, Any]], rnd: random.Random) -> None:
    shuffled = list(keys)
    rnd.shuffle(shuffled)
    array_form = [(t, i, codec.encode(v, "array")) for t, i, v in shuffled]
    assert set_digest(CREDS, keys) == set_digest(CREDS, array_form)
    assert set_digest(codec.encode(CREDS, "base64"), iter(keys)) == set_digest(CREDS, keys)


def test_set_digest_sees_every_change() -> None:
    keys = [("pre-key", "1", {"private": b"\x01"}), ("session", "1.0", b"\x02")]
    base = set_digest(CREDS, keys)
    variants = [
        set_digest(None, keys),
        set_digest({}, keys),
        set_digest(None, []),
        set_digest(CREDS, keys[:1]),
        set_digest(CREDS, [*keys, keys[0]]),
        set_digest(CREDS, [("pre-key", "1", {"private": b"\x03"}), keys[1]]),
        set_digest({**CREDS, "registrationId": 43}, keys),
    ]
    assert base not in variants
    assert len(set(variants)) == len(variants)


def test_digest_of() -> None:
    keys = [("pre-key", "1", b"\x01"), ("session", "1.0", b"\x02")]
    got = digest_of("acme", CREDS, (k for k in keys))
    assert got == AuthDigest("acme", 2, set_digest(CREDS, keys))
    with pytest.raises(InputError):
        digest_of("../acme", CREDS, keys)
