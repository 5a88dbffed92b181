"""File mode: Baileys' multi-file auth state (``useMultiFileAuthState``), one file per key."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resilience.authstate.filestore import FileAuthStore
from resilience.drill.standin.service.backends.base import (
    CredsSaveFailed,
    KeyMap,
    KeyReadFailed,
    WriteFailed,
    exc_reason,
)
from resilience.drill.standin.service.lines import FILE_MODE_LINE
from resilience.drill.standin.traffic import KeyWrite
from resilience.errors import ResilienceError
from resilience.service.modes import Mode


class FileBackend:
    """Baileys' multi-file store: one file write (or deletion) per key, in order."""

    mode: Mode = "file"

    def __init__(self, root: Path, company: str) -> None:
        self.store = FileAuthStore(root)
        self.company = company

    def mode_line(self) -> str:
        return FILE_MODE_LINE.format(
            directory=self.store.company_dir(self.company), company=self.company
        )

    def load(self) -> tuple[Any | None, KeyMap]:
        creds = self.store.read_creds(self.company)
        if creds is None:
            return None, {}
        return creds, self.store.read_keys(self.company)

    def write(self, writes: Sequence[KeyWrite]) -> None:
        for done, write in enumerate(writes):
            try:
                self.store.write_key(self.company, write.key_type, write.key_id, write.value)
            except (ResilienceError, OSError) as exc:
                raise WriteFailed(done, exc_reason(exc)) from None

    def save_creds(self, creds: Any) -> None:
        try:
            self.store.write_creds(self.company, creds)
        except (ResilienceError, OSError) as exc:
            raise CredsSaveFailed(exc_reason(exc)) from None

    def read_keys(self, key_type: str, ids: Sequence[str]) -> dict[str, Any]:
        wanted = set(ids)
        try:
            held = self.store.read_keys(self.company)
        except (ResilienceError, OSError) as exc:
            raise KeyReadFailed(
                f"cannot read {key_type} keys of company {self.company} from "
                f"{self.store.company_dir(self.company)}: {exc_reason(exc)}"
            ) from None
        return {i: v for (t, i), v in held.items() if t == key_type and i in wanted}

    def health_extras(self) -> dict[str, Any]:
        return {"pool": None, "latency": None}  # no pool and no SQL in file mode

    def close(self) -> None:
        pass
