"""The service's two auth-state modes and the three `.env` flags that choose between them.

Brief §4: the service runs on Baileys files only when all three of `USE_REPOSITORY_PATTERN`,
`USE_DATABASE_AUTH_STATE` and `USE_LEGACY_SUPABASE` are `false` (any case); anything else,
including one or two of them `false` (a real incident), is PostgreSQL mode. This module is the
one home of these names: the env switch, the switch's plans and the stand-in all read them here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

Mode = Literal["file", "postgres"]

FLAG_NAMES: tuple[str, str, str] = (
    "USE_REPOSITORY_PATTERN",
    "USE_DATABASE_AUTH_STATE",
    "USE_LEGACY_SUPABASE",
)

FILE_MODE_FLAGS: dict[str, str] = dict.fromkeys(FLAG_NAMES, "false")
"""The flags that together put the service in Baileys file mode."""

POSTGRES_MODE_FLAGS: dict[str, str] = {
    "USE_REPOSITORY_PATTERN": "true",
    "USE_DATABASE_AUTH_STATE": "true",
    "USE_LEGACY_SUPABASE": "false",
}
"""The flags of PostgreSQL mode as deployed; the way back restores what was there before the
switch and falls back to these only when nothing was recorded."""


def mode_of(values: Mapping[str, str | None]) -> Mode:
    """``"file"`` iff all three flags are ``false`` (any case); otherwise ``"postgres"``.

    A missing flag is not ``false``: setting only one or two of them leaves PostgreSQL mode.
    """
    falses = [(values.get(name) or "").strip().lower() == "false" for name in FLAG_NAMES]
    return "file" if all(falses) else "postgres"
