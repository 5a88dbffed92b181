"""The directory's side of the way back (:mod:`.wayback`): the key files read beside the base
the switch recorded, each decoded only when its bytes are not the base's."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resilience.authstate.codec import canonical, parse
from resilience.authstate.filestore import read_regular_file
from resilience.authstate.fingerprint import KeyFingerprint
from resilience.errors import DataError
from resilience.files.merge import InstalledBase, Side, file_hash

Ref = tuple[str, str]


@dataclass
class OurFiles:
    """The directory for the way back: every key file's :class:`Side`; the files with the
    base's bytes kept as read (parsed only if asked for), the others parsed."""

    raw: dict[str, bytes] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    sides: dict[str, Side] = field(default_factory=dict)

    def value(self, name: str) -> Any:
        """The file's value, Buffers as written."""
        if name in self.values:
            return self.values[name]
        return parse(self.raw[name], where=name)


def read_our_files(
    company_dir: Path, files: Mapping[str, Ref], base: InstalledBase | None
) -> OurFiles:
    """Every key file read; one whose bytes hash as the base recorded them has the base's
    fingerprint, every other one is decoded (:class:`DataError` naming a file that does not
    decode or vanished)."""
    hashes = (base.files or {}) if base is not None else {}
    ours = OurFiles()
    dir_fd = os.open(company_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name, ref in files.items():
            _read_one(company_dir, dir_fd, name, ref, base, hashes.get(name), ours)
    finally:
        os.close(dir_fd)
    return ours


def _read_one(
    company_dir: Path,
    dir_fd: int,
    name: str,
    ref: Ref,
    base: InstalledBase | None,
    known: str | None,
    ours: OurFiles,
) -> None:
    key_type, key_id = ref
    try:
        raw = read_regular_file(company_dir, name, dir_fd=dir_fd)
    except FileNotFoundError:
        raise DataError(
            f"{name[:80]!r} in {company_dir} vanished while it was being read"
        ) from None
    if base is not None and known is not None and known == file_hash(key_type, key_id, raw):
        ours.raw[name] = raw
        ours.sides[name] = Side(ref, base.keys[name])
        return
    value = parse(raw, where=name)
    form = canonical(value, where=name)
    ours.values[name] = value
    ours.sides[name] = Side(ref, KeyFingerprint.of_canonical(key_type, key_id, form))
