"""A seeded, reproducible auth state that looks like a real tenant's (docs/domain.md §2, §3, §7).

Creds plus N keys across every key type with real id shapes, the observed age mix (24 % < 1 d,
38 % 1-7 d, 35 % 7-14 d, 3 % 14-30 d), both Buffer encodings, and a few legacy rows
(`key_type='pre', key_id='key-5'`), some of which collide with a `pre-key` row. The creds'
`nextPreKeyId` and `firstUnuploadedPreKeyId` are past every pre-key id Baileys sees in it (legacy
rows included), as Baileys leaves them after issuing those.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from resilience.authstate.codec import Style
from resilience.authstate.model import KeyRecord, ttl_for
from resilience.authstate.view import baileys_ref
from resilience.config import validate_company_id

DEFAULT_KEYS = 1313
# (upper bound in days, share) of the observed age mix
AGE_MIX = ((1, 0.24), (7, 0.38), (14, 0.35), (30, 0.03))
# share of each key type among generated keys (app-state-sync-version has fixed names)
TYPE_MIX = (
    ("pre-key", 0.40),
    ("session", 0.22),
    ("sender-key", 0.14),
    ("sender-key-memory", 0.04),
    ("app-state-sync-key", 0.05),
    ("lid-mapping", 0.09),
    ("device-list", 0.03),
    ("tctoken", 0.03),
)
APP_STATE_VERSIONS = (
    "critical_block",
    "critical_unblock_low",
    "regular",
    "regular_high",
    "regular_low",
)
BASE64_SHARE = 0.3  # rows migrated from files keep Baileys' base64 form


@dataclass
class Dataset:
    company_id: str
    creds: dict[str, Any]
    keys: list[KeyRecord]
    styles: dict[tuple[str, str], Style] = field(default_factory=dict)

    def rows(self) -> Iterator[tuple[KeyRecord, Style]]:
        for record in self.keys:
            yield record, self.styles.get((record.key_type, record.key_id), "array")

    @property
    def legacy(self) -> list[KeyRecord]:
        return [k for k in self.keys if k.key_type == "pre"]


class _Ids:
    """Realistic id shapes of Baileys 7 (docs/domain.md §3)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.seen: set[tuple[str, str]] = set()

    def user(self) -> str:
        return "79" + "".join(self.rng.choices("0123456789", k=9))

    def group(self) -> str:
        if self.rng.random() < 0.3:  # old group ids: <phone>-<epoch>@g.us
            return f"{self.user()}-{self.rng.randint(1_500_000_000, 1_700_000_000)}@g.us"
        return f"120363{self.rng.randint(10**11, 10**12 - 1)}@g.us"

    def make(self, key_type: str, n: int) -> str:
        rng = self.rng
        if key_type == "pre-key":
            return str(n + 1)
        if key_type == "session":
            suffix = rng.choice(["", "", "_1", "_lid"])
            return f"{self.user()}{suffix}.{rng.choice([0, 0, 1, 2, 21])}"
        if key_type == "sender-key":
            return f"{self.group()}::{self.user()}::{rng.choice([0, 1, 2])}"
        if key_type == "sender-key-memory":
            return self.group()
        if key_type == "app-state-sync-key":
            # 6-byte key ids, base64: contain '/', '+' and '=' in the wild
            raw = rng.choice([b"\xfb\xef", b"\xff\xf0", b""]) + rng.randbytes(4)
            return base64.b64encode(raw).decode() if n % 2 else base64.b64encode(raw[:5]).decode()
        if key_type == "lid-mapping":
            return self.user() + ("_reverse" if n % 2 else "")
        return self.user()  # device-list, tctoken

    def unique(self, key_type: str, n: int) -> str:
        for _ in range(1000):
            key_id = self.make(key_type, n)
            if (key_type, key_id) not in self.seen:
                self.seen.add((key_type, key_id))
                return key_id
        raise RuntimeError("id space exhausted")  # pragma: no cover


def _value(key_type: str, key_id: str, rng: random.Random) -> Any:
    def buf(n: int) -> bytes:
        return rng.randbytes(n)

    if key_type == "pre-key":
        return {"private": buf(32), "public": buf(32)}
    if key_type in ("session", "sender-key"):
        return buf(rng.randint(120, 900))
    if key_type == "sender-key-memory":
        return {f"{rng.randint(10**10, 10**11)}:{rng.randint(0, 3)}@s.whatsapp.net": True}
    if key_type == "app-state-sync-key":
        return {
            "keyData": buf(32),
            "fingerprint": {
                "rawId": rng.randint(1, 2**31),
                "currentIndex": 1,
                "deviceIndexes": [0, 1],
            },
            "timestamp": str(rng.randint(1_700_000_000_000, 1_760_000_000_000)),
        }
    if key_type == "app-state-sync-version":
        return {
            "version": rng.randint(1, 900),
            "hash": buf(128),
            "indexValueMap": {
                base64.b64encode(buf(32)).decode(): {"valueMac": buf(32)} for _ in range(3)
            },
        }
    if key_type == "lid-mapping":
        return f"{rng.randint(10**13, 10**14)}" if not key_id.endswith("_reverse") else key_id
    if key_type == "device-list":
        return [str(d) for d in sorted(rng.sample(range(0, 30), 3))]
    return {"token": buf(24), "timestamp": str(rng.randint(1_700_000_000, 1_760_000_000))}


def make_creds(rng: random.Random, company_id: str) -> dict[str, Any]:
    def pair() -> dict[str, bytes]:
        return {"private": rng.randbytes(32), "public": rng.randbytes(32)}

    return {
        "noiseKey": pair(),
        "pairingEphemeralKeyPair": pair(),
        "signedIdentityKey": pair(),
        "signedPreKey": {"keyPair": pair(), "signature": rng.randbytes(64), "keyId": 1},
        "registrationId": rng.randint(1, 16380),
        "advSecretKey": base64.b64encode(rng.randbytes(32)).decode(),
        "processedHistoryMessages": [],
        "nextPreKeyId": 1400,
        "firstUnuploadedPreKeyId": 1400,
        "accountSyncCounter": 1,
        "accountSettings": {"unarchiveChats": False},
        "registered": True,
        "pairingCode": None,
        "me": {"id": f"79{rng.randint(10**8, 10**9)}:12@s.whatsapp.net", "name": company_id},
        "platform": "android",
    }


def generate(
    company_id: str = "drill",
    n: int = DEFAULT_KEYS,
    *,
    seed: int = 1313,
    legacy: int = 4,
    now: datetime | None = None,
) -> Dataset:
    """Creds plus `n` keys (plus `legacy` legacy rows), identical for the same arguments."""
    validate_company_id(company_id)
    rng = random.Random(f"{seed}:{company_id}:{n}")
    now = now or datetime.now(UTC)
    ids = _Ids(rng)
    plan: list[str] = [t for t in APP_STATE_VERSIONS[: min(n, len(APP_STATE_VERSIONS))]]
    types = [t for t, _ in TYPE_MIX]
    weights = [w for _, w in TYPE_MIX]
    plan_types = ["app-state-sync-version"] * len(plan) + rng.choices(
        types, weights, k=n - len(plan)
    )
    ages = _ages(rng, n)
    keys: list[KeyRecord] = []
    styles: dict[tuple[str, str], Style] = {}
    counters: dict[str, int] = {}
    for i, key_type in enumerate(plan_types):
        if key_type == "app-state-sync-version":
            key_id = plan[i]
            ids.seen.add((key_type, key_id))
        else:
            counters[key_type] = counters.get(key_type, 0) + 1
            key_id = ids.unique(key_type, counters[key_type] - 1)
        updated = now - ages[i]
        keys.append(
            KeyRecord(
                company_id,
                key_type,
                key_id,
                _value(key_type, key_id, rng),
                updated,
                updated + ttl_for(key_type),
            )
        )
        styles[(key_type, key_id)] = "base64" if rng.random() < BASE64_SHARE else "array"
    keys += _legacy_rows(company_id, keys, legacy, rng, now)
    for record in keys[n:]:
        styles[(record.key_type, record.key_id)] = "base64"
    creds = make_creds(rng, company_id)
    creds["nextPreKeyId"] = creds["firstUnuploadedPreKeyId"] = next_pre_key_past(keys)
    return Dataset(company_id, creds, keys, styles)


def next_pre_key_past(keys: list[KeyRecord]) -> int:
    """The ``nextPreKeyId`` past every pre-key id Baileys sees among ``keys`` (legacy rows are
    read as the pre-keys they name): the highest plus one, 1 without any."""
    numbers = [
        int(key_id)
        for key_type, key_id in (baileys_ref(k.key_type, k.key_id) for k in keys)
        if key_type == "pre-key" and key_id.isascii() and key_id.isdigit()
    ]
    return max(numbers, default=0) + 1


def _ages(rng: random.Random, n: int) -> list[timedelta]:
    """Exactly the observed mix (rounded), shuffled; ages within a bucket are uniform."""
    counts = [round(share * n) for _, share in AGE_MIX]
    counts[1] += n - sum(counts)
    ages: list[timedelta] = []
    low = 0.0
    for (high, _), count in zip(AGE_MIX, counts, strict=True):
        ages += [timedelta(days=rng.uniform(low, high)) for _ in range(count)]
        low = float(high)
    rng.shuffle(ages)
    return ages


def _legacy_rows(
    company_id: str, keys: list[KeyRecord], count: int, rng: random.Random, now: datetime
) -> list[KeyRecord]:
    """Rows of the old migration that split names at the first dash: `pre` / `key-<n>`.

    Half collide with an existing `pre-key` (alternately newer and older than it), the rest
    name pre-keys that exist only as legacy rows.
    """
    pre_keys = [k for k in keys if k.key_type == "pre-key"]
    wanted = min(len(pre_keys), (count + 1) // 2)
    twins = rng.sample(pre_keys, wanted)  # distinct: two legacy rows never share a twin
    rows: list[KeyRecord] = []
    for i in range(count):
        if i % 2 == 0 and i // 2 < wanted:
            twin = twins[i // 2]
            assert twin.updated_at is not None
            shift = timedelta(hours=1) if i % 4 == 0 else -timedelta(days=3)
            # never in the future: a live write must be able to be the newest row
            updated = min(twin.updated_at + shift, now - timedelta(minutes=1))
            key_id = f"key-{twin.key_id}"
        else:
            updated = now - timedelta(days=rng.uniform(1, 7))
            key_id = f"key-{100000 + i}"
        rows.append(KeyRecord(company_id, "pre", key_id, _value("pre-key", key_id, rng), updated))
    return rows
