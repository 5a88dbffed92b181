"""The auth-state records as stored (docs/domain.md §2-§3): key types, one key row, the TTL rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

#: Key types Baileys writes. Types not listed here pass through untouched everywhere; this list
#: only decides naming preferences (file-name parsing, collision tie-breaks). ``identity-key``
#: is written by Baileys 7.0.0-rc14 (``saveIdentity``).
KNOWN_KEY_TYPES: tuple[str, ...] = (
    "pre-key",
    "session",
    "sender-key",
    "sender-key-memory",
    "app-state-sync-key",
    "app-state-sync-version",
    "lid-mapping",
    "device-list",
    "tctoken",
    "identity-key",
)

SHORT_TTL = timedelta(days=7)
LONG_TTL = timedelta(days=14)
_SHORT_TTL_TYPES = frozenset({"pre-key", "session", "sender-key"})


@dataclass(frozen=True)
class KeyRecord:
    """One row of ``whatsapp_keys``; ``value`` is decoded (Buffers as ``bytes``)."""

    company_id: str
    key_type: str
    key_id: str
    value: Any
    updated_at: datetime | None = None
    expires_at: datetime | None = None
    #: the row version read (its ``xmin``), when read from PostgreSQL by
    #: :meth:`~resilience.authstate.pgstore.PgAuthStore.stream_company`: the way back tells a
    #: row untouched since an export by it
    version: str | None = field(default=None, compare=False)


def ttl_for(key_type: str) -> timedelta:
    """TTL the service writes on every upsert: 7 days for pre-key, session, sender-key and any
    type containing ``lid-mapping``; 14 days for everything else."""
    if key_type in _SHORT_TTL_TYPES or "lid-mapping" in key_type:
        return SHORT_TTL
    return LONG_TTL
