"""Baileys' multi-file layout (docs/domain.md §3): file names, safe paths, the way back, collisions.

``useMultiFileAuthState`` stores key ``(type, id)`` in ``<type>-<id>.json`` after
``fixFileName``: ``/`` becomes ``__``, then ``:`` becomes ``-``. That is not reversible in general
(``-`` may have been ``:``, ``__`` may have been ``/``), so :func:`parse_file_name` maps a name back
only where the id has one of the shapes Baileys 7 really writes, and refuses everything else.

Key ids come from the network: :func:`file_name_for` either returns one path component or raises,
and :func:`safe_path` refuses anything that would leave the company directory.
"""

from __future__ import annotations

import binascii
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from resilience.authstate.codec import canonical
from resilience.authstate.model import KNOWN_KEY_TYPES, KeyRecord
from resilience.config import validate_company_id
from resilience.errors import DataError, InputError

CREDS_FILE = "creds.json"
# Written beside the key files by an export; no key can be named so (no "-" in it).
MANIFEST_FILE = "manifest.json"
FILE_SUFFIX = ".json"
NAME_MAX = 255  # bytes in one path component on Linux (and macOS)


def _shown(text: str, limit: int = 60) -> str:
    """``repr`` of ``text`` cut to about ``limit`` characters: safe to print whatever it holds."""
    if len(text) > limit:
        return repr(text[: limit - 3]) + "..."
    return repr(text)


def company_dir_name(company_id: str) -> str:
    """``company_<id>`` for a valid company id (docs/domain.md §2), else :class:`InputError`."""
    return f"company_{validate_company_id(company_id)}"


def fix_file_name(name: str) -> str:
    """Baileys' ``fixFileName``: ``/`` -> ``__``, then ``:`` -> ``-``."""
    return name.replace("/", "__").replace(":", "-")


def file_name_for(key_type: str, key_id: str) -> str:
    """The file Baileys' multi-file store keeps key ``(key_type, key_id)`` in.

    Raises :class:`InputError` when the name cannot be one safe file name (empty type or id, NUL,
    unencodable text, longer than 255 bytes of UTF-8).
    """
    if not isinstance(key_type, str) or not isinstance(key_id, str):
        raise InputError("key type and key id must be strings")
    if not key_type:
        raise InputError(f"empty key type for key id {_shown(key_id)}")
    if not key_id:
        raise InputError(f"empty key id for key type {_shown(key_type)}")
    if "\0" in key_type or "\0" in key_id:
        raise InputError(
            f"key {_shown(key_type)}/{_shown(key_id)} contains a NUL byte: no file can be named so"
        )
    name = fix_file_name(f"{key_type}-{key_id}{FILE_SUFFIX}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise InputError(
            f"key {_shown(key_type)}/{_shown(key_id)} is not valid Unicode text"
        ) from None
    if size > NAME_MAX:
        raise InputError(
            f"key {_shown(key_type)}/{_shown(key_id)} gives a file name of {size} bytes "
            f"(the limit is {NAME_MAX})"
        )
    if name in (".", "..") or "/" in name:  # cannot happen after the fix; kept as a guard
        raise InputError(f"key {_shown(key_type)}/{_shown(key_id)} gives an unsafe file name")
    return name


def safe_path(directory: Path, name: str) -> Path:
    """``directory / name``, refusing a name that is not exactly one entry of ``directory``.

    Refused: empty, ``.``, ``..``, a separator or NUL in the name, and an existing symlink (which
    could lead outside the directory when read or written through).
    """
    if not name or name in (".", "..") or "/" in name or "\0" in name or os.sep in name:
        raise InputError(f"unsafe file name {_shown(name)}: it must be one entry of the directory")
    path = directory / name
    if path.parent != directory or path.name != name:
        raise InputError(f"unsafe file name {_shown(name)}: it leaves the directory")
    if path.is_symlink():
        raise InputError(f"refusing to use {_shown(name)}: it is a symbolic link")
    return path


# --- the way back: file name -> (type, id) ---------------------------------------------------

_GROUP = r"(?:\d+(?:-\d+)?@g\.us|status@broadcast)"
_SIGNAL_USER = r"\d+(?:_\d+)?"  # user, or user_<domainType> for LID / hosted addresses
_B64_ID = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def _identity_if(pattern: str) -> Callable[[str], str | None]:
    compiled = re.compile(pattern)

    def rule(fixed: str) -> str | None:
        return fixed if compiled.fullmatch(fixed) else None

    return rule


_SENDER_KEY = re.compile(rf"(?P<group>{_GROUP})--(?P<user>{_SIGNAL_USER})--(?P<device>\d+)")


def _sender_key(fixed: str) -> str | None:
    # `<group>@g.us::<user>::<device>`; a dash inside an old group id (`<phone>-<epoch>@g.us`)
    # is a real dash: group JIDs never hold a colon.
    match = _SENDER_KEY.fullmatch(fixed)
    if match is None:
        return None
    return f"{match['group']}::{match['user']}::{match['device']}"


def _app_state_sync_key(fixed: str) -> str | None:
    # Standard base64 has no `-` and no `_`: every `__` was a `/`.
    if "-" in fixed:
        return None
    restored = fixed.replace("__", "/")
    if not restored or not _B64_ID.fullmatch(restored):
        return None
    try:
        binascii.a2b_base64(restored, strict_mode=True)
    except binascii.Error:
        return None
    return restored


def _tctoken(fixed: str) -> str | None:
    # JIDs, plus Baileys' sentinel `__index` (TC_TOKEN_INDEX_KEY); a JID never starts with `/`.
    return fixed if fixed == "__index" else None


_SHAPES: dict[str, Callable[[str], str | None]] = {
    "pre-key": _identity_if(r"\d+"),
    "session": _identity_if(rf"{_SIGNAL_USER}\.\d+"),
    "identity-key": _identity_if(rf"{_SIGNAL_USER}\.\d+"),
    "sender-key": _sender_key,
    "sender-key-memory": _identity_if(_GROUP),
    "app-state-sync-key": _app_state_sync_key,
    "app-state-sync-version": _identity_if(r"[a-z]+(?:_[a-z]+)*"),
    "lid-mapping": _identity_if(r"\d+(?:_reverse)?"),
    "device-list": _identity_if(rf"{_SIGNAL_USER}"),
    "tctoken": _tctoken,
}

# Longest first, so `sender-key-memory` wins over `sender-key`.
_TYPES_LONGEST_FIRST = sorted(KNOWN_KEY_TYPES, key=len, reverse=True)


def parse_file_name(name: str) -> tuple[str, str]:
    """``(key_type, key_id)`` for a key file name, where that needs no guessing.

    The type is the longest known type followed by ``-``. The id must have a shape Baileys 7
    writes for that type (docs/domain.md §3), or contain neither ``-`` nor ``__`` (then the fix
    changed nothing). Anything else raises :class:`DataError`: the name alone cannot tell.
    What comes back always names the same file again; the one guess left is the type split
    itself (a ``sender-key`` id starting ``memory-`` would read as ``sender-key-memory``),
    which no real Baileys id does.
    """
    if name == CREDS_FILE:
        raise DataError(f"{CREDS_FILE} holds the credentials, not a key")
    if not name.endswith(FILE_SUFFIX) or len(name) <= len(FILE_SUFFIX):
        raise DataError(f"file name {_shown(name)} is not a key file (<type>-<id>.json)")
    stem = name[: -len(FILE_SUFFIX)]
    key_type = next((t for t in _TYPES_LONGEST_FIRST if stem.startswith(t + "-")), None)
    if key_type is None:
        raise DataError(
            f"file name {_shown(name)} does not start with a known key type: "
            "cannot map it back to a key id without guessing"
        )
    fixed_id = stem[len(key_type) + 1 :]
    if fixed_id:
        shaped = _SHAPES.get(key_type)
        key_id = shaped(fixed_id) if shaped is not None else None
        if key_id is None and "-" not in fixed_id and "__" not in fixed_id:
            key_id = fixed_id
        if key_id is not None:
            return key_type, key_id
    raise DataError(f"cannot map file name {_shown(name)} back to a key id without guessing")


def try_parse_file_name(name: str) -> tuple[str, str] | None:
    """:func:`parse_file_name`, or ``None`` where it would raise."""
    try:
        return parse_file_name(name)
    except DataError:
        return None


# --- legacy collisions -------------------------------------------------------------------------

KeyRef = tuple[str, str, datetime | None]


@dataclass(frozen=True)
class Collision:
    """Several rows name one file: which one was kept and which were not written."""

    file_name: str
    chosen: KeyRef
    dropped: list[KeyRef] = field(default_factory=list)


_EPOCH = datetime.min.replace(tzinfo=UTC)
_KNOWN = frozenset(KNOWN_KEY_TYPES)


def _aware(moment: datetime | None) -> datetime:
    if moment is None:
        return _EPOCH
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _preference(record: KeyRecord) -> tuple[datetime, bool]:
    return _aware(record.updated_at), record.key_type in _KNOWN


def resolve_collisions(
    records: Iterable[KeyRecord],
) -> tuple[dict[str, KeyRecord], list[Collision]]:
    """Group one company's records by file name and keep one record per file.

    Where several records name one file (legacy ``pre``/``key-5`` beside ``pre-key``/``5``), the
    newest ``updated_at`` wins (``None`` counts as oldest), then a known key type, then the
    lexicographically smallest ``(type, id)`` (then the smallest canonical value, so even
    exact duplicates resolve the same way). The result does not depend on input order; every
    record not kept appears in exactly one :class:`Collision` (sorted by file name).
    Raises :class:`InputError` for records of several companies or an id no file can be named by.
    """
    groups: dict[str, list[KeyRecord]] = defaultdict(list)
    companies: set[str] = set()
    for record in records:
        companies.add(record.company_id)
        if len(companies) > 1:
            raise InputError("resolve_collisions got records of more than one company")
        groups[file_name_for(record.key_type, record.key_id)].append(record)
    chosen: dict[str, KeyRecord] = {}
    collisions: list[Collision] = []
    for name in sorted(groups):
        # Best first: newest, known type, then smallest (type, id); full sort keeps it total.
        ranked = groups[name]
        if len(ranked) > 1:
            ranked = sorted(ranked, key=lambda r: (r.key_type, r.key_id, canonical(r.value)))
            ranked.sort(key=_preference, reverse=True)
        winner = ranked[0]
        chosen[name] = winner
        if len(ranked) > 1:
            collisions.append(
                Collision(
                    file_name=name,
                    chosen=(winner.key_type, winner.key_id, winner.updated_at),
                    dropped=[(r.key_type, r.key_id, r.updated_at) for r in ranked[1:]],
                )
            )
    return chosen, collisions
