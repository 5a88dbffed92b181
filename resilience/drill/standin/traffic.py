"""Live traffic of the stand-in service: a deterministic stream of key writes (docs/domain.md §3).

Each batch is what one Baileys ``keys.set`` call would carry: pre-key rotations (new ids, used
ones deleted by ``None``), session updates (``<user>.<device>``, ``<user>_<domain>.<device>``),
sender keys (``<group>@g.us::<user>::<device>``, old groups ``<phone>-<epoch>@g.us``) with their
sender-key-memory, app-state-sync keys (base64 ids with ``/`` and ``+``), app-state-sync versions,
lid-mapping pairs (``<pn>`` and ``<lid>_reverse``), types this project does not model
(``device-list``, ``tctoken``), and deletions by ``None``.

Pre-key ids are issued as Baileys issues them: upwards from the creds' ``nextPreKeyId`` (from the
highest pre-key id held plus one when the creds lack it or it is behind that id), never twice by
one :class:`Traffic`. Once a batch issuing pre-keys was acknowledged, Baileys moves
``nextPreKeyId`` and ``firstUnuploadedPreKeyId`` past them and saves its creds
(``creds.update``): :func:`creds_after_pre_keys` gives those creds.

The stream depends only on the seed, the starting sequence number, the keys held at start and the
creds' ``nextPreKeyId`` then, and on which batches were acknowledged: :meth:`Traffic.next_batch`
is called again only after :meth:`Traffic.applied`, so a failed batch is retried unchanged.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

APP_STATE_VERSION_NAMES = (
    "critical_block",
    "critical_unblock_low",
    "regular",
    "regular_high",
    "regular_low",
)
# Domain types Baileys 7 puts in Signal addresses: 1 = LID, 128 = hosted.
_DOMAINS = (1, 128)
_DEVICES = (0, 0, 0, 1, 2, 21)


@dataclass(frozen=True)
class KeyWrite:
    """One key write: ``value`` ``None`` deletes the key, as in Baileys."""

    key_type: str
    key_id: str
    value: Any | None

    @property
    def deleted(self) -> bool:
        return self.value is None

    @property
    def ref(self) -> tuple[str, str]:
        return self.key_type, self.key_id


def _pre_key_number(key_id: str) -> int | None:
    """A pre-key id as Baileys numbers them (None for an id that is not a number)."""
    return int(key_id) if key_id.isascii() and key_id.isdigit() and len(key_id) < 10 else None


def creds_after_pre_keys(creds: Any, writes: Iterable[KeyWrite]) -> Any | None:
    """The creds once Baileys uploaded the pre-keys ``writes`` issue (``creds.update`` of
    ``uploadPreKeys``): ``nextPreKeyId`` and ``firstUnuploadedPreKeyId`` past the highest of
    them, never moved back; None when ``writes`` issue no pre-key (or the creds are no object)."""
    issued = [
        number
        for write in writes
        if write.key_type == "pre-key"
        and not write.deleted
        and (number := _pre_key_number(write.key_id)) is not None
    ]
    if not issued or not isinstance(creds, dict):
        return None
    past = max(issued) + 1

    def counter(name: str) -> int:
        value = creds.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return {
        **creds,
        "nextPreKeyId": max(past, counter("nextPreKeyId")),
        "firstUnuploadedPreKeyId": max(past, counter("firstUnuploadedPreKeyId")),
    }


class _IdPool:
    """Ids of one key type currently held, with deterministic O(1) random pick and removal."""

    def __init__(self, ids: Iterable[str]) -> None:
        self.items: list[str] = sorted(set(ids))
        self.index: dict[str, int] = {key_id: n for n, key_id in enumerate(self.items)}

    def __len__(self) -> int:
        return len(self.items)

    def add(self, key_id: str) -> None:
        if key_id not in self.index:
            self.index[key_id] = len(self.items)
            self.items.append(key_id)

    def remove(self, key_id: str) -> None:
        position = self.index.pop(key_id, None)
        if position is None:
            return
        last = self.items.pop()
        if position < len(self.items):
            self.items[position] = last
            self.index[last] = position

    def pick(self, rng: random.Random) -> str | None:
        return self.items[rng.randrange(len(self.items))] if self.items else None


class Traffic:
    """The write stream; see the module docstring."""

    def __init__(
        self,
        seed: str,
        start_seq: int,
        keys: Iterable[tuple[str, str]] | Mapping[Any, Any],
        next_pre_key_id: int | None = None,
    ) -> None:
        """``next_pre_key_id``: the creds' ``nextPreKeyId`` (None: the creds lack it)."""
        self.rng = random.Random(f"standin:{seed}:{start_seq}")
        by_type: dict[str, list[str]] = {}
        for key_type, key_id in keys:
            by_type.setdefault(key_type, []).append(key_id)
        self.pools: dict[str, _IdPool] = {t: _IdPool(ids) for t, ids in by_type.items()}
        numeric = [_pre_key_number(i) for i in by_type.get("pre-key", [])]
        past_held = max((n for n in numeric if n is not None), default=0) + 1
        self.next_pre_key = max(past_held, next_pre_key_id or 0)
        self._ops: tuple[tuple[Callable[[], list[KeyWrite]], int], ...] = (
            (self._session_update, 28),
            (self._pre_key_rotation, 15),
            (self._sender_key, 15),
            (self._app_state_sync_key, 8),
            (self._app_state_version, 6),
            (self._lid_mapping, 10),
            (self._deletion, 12),
            (self._pass_through, 6),
        )

    def pool(self, key_type: str) -> _IdPool:
        return self.pools.setdefault(key_type, _IdPool(()))

    # --- the stream ----------------------------------------------------------------------------

    def next_batch(self) -> list[KeyWrite]:
        """The next batch: at least one write, no key twice."""
        ops = [op for op, _ in self._ops]
        weights = [weight for _, weight in self._ops]
        while True:
            batch = self.rng.choices(ops, weights)[0]()
            if batch:
                unique: dict[tuple[str, str], KeyWrite] = {}
                for write in batch:
                    unique[write.ref] = write
                return list(unique.values())

    def applied(self, writes: Iterable[KeyWrite]) -> None:
        """Record acknowledged writes so later batches update and delete keys that exist."""
        for write in writes:
            pool = self.pool(write.key_type)
            if write.deleted:
                pool.remove(write.key_id)
            else:
                pool.add(write.key_id)
            number = _pre_key_number(write.key_id) if write.key_type == "pre-key" else None
            if number is not None:
                self.next_pre_key = max(self.next_pre_key, number + 1)

    # --- ids -----------------------------------------------------------------------------------

    def _user(self) -> str:
        return "79" + "".join(self.rng.choices("0123456789", k=9))

    def _signal_user(self) -> str:
        if self.rng.random() < 0.35:
            return f"{self._user()}_{self.rng.choice(_DOMAINS)}"
        return self._user()

    def _group(self) -> str:
        if self.rng.random() < 0.35:  # old group ids: <phone>-<epoch>@g.us
            return f"{self._user()}-{self.rng.randint(1_500_000_000, 1_700_000_000)}@g.us"
        return f"120363{self.rng.randint(10**11, 10**12 - 1)}@g.us"

    def _buf(self, low: int, high: int | None = None) -> bytes:
        return self.rng.randbytes(low if high is None else self.rng.randint(low, high))

    # --- operations ----------------------------------------------------------------------------

    def _session_update(self) -> list[KeyWrite]:
        existing = self.pool("session").pick(self.rng) if self.rng.random() < 0.6 else None
        key_id = existing or f"{self._signal_user()}.{self.rng.choice(_DEVICES)}"
        return [KeyWrite("session", key_id, self._buf(150, 900))]

    def _pre_key_rotation(self) -> list[KeyWrite]:
        writes: list[KeyWrite] = []
        pool = self.pool("pre-key")
        for _ in range(min(len(pool), self.rng.randint(1, 2))):
            used = pool.pick(self.rng)
            if used is not None and all(w.key_id != used for w in writes):
                writes.append(KeyWrite("pre-key", used, None))
        for _ in range(self.rng.randint(1, 3)):
            key_id = str(self.next_pre_key)
            self.next_pre_key += 1
            writes.append(
                KeyWrite("pre-key", key_id, {"private": self._buf(32), "public": self._buf(32)})
            )
        return writes

    def _sender_key(self) -> list[KeyWrite]:
        existing = self.pool("sender-key").pick(self.rng) if self.rng.random() < 0.4 else None
        if existing is not None:
            return [KeyWrite("sender-key", existing, self._buf(120, 600))]
        group = self._group()
        user = self._signal_user()
        device = self.rng.choice(_DEVICES)
        writes = [KeyWrite("sender-key", f"{group}::{user}::{device}", self._buf(120, 600))]
        if self.rng.random() < 0.5:
            memory = {f"{user.split('_')[0]}:{device}@s.whatsapp.net": True}
            writes.append(KeyWrite("sender-key-memory", group, memory))
        return writes

    def _app_state_sync_key(self) -> list[KeyWrite]:
        # Prefixes that make the base64 id start with `++` or `//`; 5-byte ids end with `=`.
        raw = self.rng.choice((b"\xfb\xef", b"\xff\xf0", b"")) + self._buf(4)
        if self.rng.random() < 0.3:
            raw = raw[:5]
        key_id = base64.b64encode(raw).decode("ascii")
        value = {
            "keyData": self._buf(32),
            "fingerprint": {
                "rawId": self.rng.randint(1, 2**31),
                "currentIndex": self.rng.randint(0, 9),
                "deviceIndexes": [0, 1],
            },
            "timestamp": str(self.rng.randint(1_700_000_000_000, 1_760_000_000_000)),
        }
        return [KeyWrite("app-state-sync-key", key_id, value)]

    def _app_state_version(self) -> list[KeyWrite]:
        name = self.rng.choice(APP_STATE_VERSION_NAMES)
        value = {
            "version": self.rng.randint(1, 5000),
            "hash": self._buf(128),
            "indexValueMap": {
                base64.b64encode(self._buf(32)).decode("ascii"): {"valueMac": self._buf(32)}
                for _ in range(self.rng.randint(1, 3))
            },
        }
        return [KeyWrite("app-state-sync-version", name, value)]

    def _lid_mapping(self) -> list[KeyWrite]:
        pn = self._user()
        lid = str(self.rng.randint(10**13, 10**14 - 1))
        return [KeyWrite("lid-mapping", pn, lid), KeyWrite("lid-mapping", f"{lid}_reverse", pn)]

    def _deletion(self) -> list[KeyWrite]:
        key_type = self.rng.choice(("session", "session", "sender-key", "lid-mapping"))
        victim = self.pool(key_type).pick(self.rng)
        return [] if victim is None else [KeyWrite(key_type, victim, None)]

    def _pass_through(self) -> list[KeyWrite]:
        user = self._user()
        if self.rng.random() < 0.5:
            devices = sorted(self.rng.sample(range(30), self.rng.randint(1, 4)))
            return [KeyWrite("device-list", user, [str(d) for d in devices])]
        token = {
            "token": self._buf(24),
            "timestamp": str(self.rng.randint(1_700_000_000, 1_760_000_000)),
        }
        return [KeyWrite("tctoken", f"{user}@s.whatsapp.net", token)]
