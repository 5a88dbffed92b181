"""Fingerprints of auth state: one per key, and one order-independent digest per company.

Both depend only on decoded values (:func:`~resilience.authstate.codec.canonical`), so a key
stored with array Buffers in PostgreSQL and the same key with base64 Buffers in a file agree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from resilience.authstate.codec import canonical
from resilience.config import validate_company_id

_SEP = b"\0"


def _text(value: str) -> bytes:
    # PostgreSQL TEXT cannot hold NUL, so `type \0 id \0 value` is unambiguous for stored keys.
    return value.encode("utf-8", "surrogatepass")


class KeyFingerprint:
    """SHA-256 over ``type \\0 id \\0 canonical(value)``."""

    @staticmethod
    def of(key_type: str, key_id: str, value: Any) -> str:
        return KeyFingerprint.of_canonical(key_type, key_id, canonical(value))

    @staticmethod
    def of_canonical(key_type: str, key_id: str, canonical_form: bytes) -> str:
        """:meth:`of` from the value's canonical form, already computed."""
        digest = hashlib.sha256()
        digest.update(_text(key_type))
        digest.update(_SEP)
        digest.update(_text(key_id))
        digest.update(_SEP)
        digest.update(canonical_form)
        return digest.hexdigest()


def creds_fingerprint(creds: Any | None) -> str | None:
    """The fingerprint of creds (by decoded value), None for absent creds."""
    return None if creds is None else KeyFingerprint.of_canonical("creds", "", canonical(creds))


def next_pre_key_id(creds: Any | None) -> int | None:
    """Baileys' ``nextPreKeyId`` of creds: every pre-key id from it on is issued later."""
    value = creds.get("nextPreKeyId") if isinstance(creds, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def set_digest(creds: Any | None, keys: Iterable[tuple[str, str, Any]]) -> str:
    """SHA-256 hex over the creds (absent creds differ from JSON ``null``) and the sorted key
    fingerprints; independent of the order of ``keys``."""
    return digest_of_fingerprints(creds, (KeyFingerprint.of(t, i, v) for t, i, v in keys))


def digest_of_fingerprints(creds: Any | None, key_fingerprints: Iterable[str]) -> str:
    """:func:`set_digest` from key fingerprints already computed (a mirror keeps them)."""
    fingerprints = sorted(key_fingerprints)
    digest = hashlib.sha256()
    if creds is None:
        digest.update(b"creds:absent\n")
    else:
        creds_form = canonical(creds)
        digest.update(b"creds:%d:" % len(creds_form))
        digest.update(creds_form)
        digest.update(b"\n")
    digest.update(b"keys:%d\n" % len(fingerprints))
    if fingerprints:  # each fingerprint and a newline, in one update
        digest.update("\n".join(fingerprints).encode("ascii") + b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class AuthDigest:
    """What a company's auth state amounts to: key count and :func:`set_digest`."""

    company_id: str
    key_count: int
    digest: str


def digest_of(
    company_id: str, creds: Any | None, keys: Iterable[tuple[str, str, Any]]
) -> AuthDigest:
    """:class:`AuthDigest` of one company's creds and keys (the company id is validated)."""
    validate_company_id(company_id)
    materialised = list(keys)
    return AuthDigest(company_id, len(materialised), set_digest(creds, materialised))
