"""What one direction of the switch leaves for the other: `.restore-state.json` in the auth root.

Written before each change it protects (the code checkout, the env flags), so a crash at any step
keeps the way back: the ref to return to, the flags as they were, and which company was switched.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from resilience.authstate.filestore import DIR_MODE
from resilience.errors import InputError
from resilience.infra.fsutil import atomic_write


@dataclass
class SwitchState:
    company_id: str | None = None
    previous_ref: str | None = None  # the ref checked out before the fallback tag
    tag_commit: str | None = None  # the commit the tag named when the switch checked it out
    env_before: dict[str, str | None] | None = None  # the three flags before the switch
    switched_to_files_at: str | None = None

    @classmethod
    def read(cls, path: Path) -> SwitchState | None:
        try:
            data: Any = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise InputError(f"restore state {path} is unreadable: {exc}") from None
        if not isinstance(data, dict):
            raise InputError(f"restore state {path} is unreadable: not a JSON object")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        atomic_write(path, json.dumps(asdict(self), indent=2).encode())
