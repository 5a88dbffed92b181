"""The service's `.env`: read its mode flags, and change values without touching anything else.

Brief §4: the service runs on Baileys files only when all three of `USE_REPOSITORY_PATTERN`,
`USE_DATABASE_AUTH_STATE` and `USE_LEGACY_SUPABASE` are `false`; setting one of them was a real
incident. The flags and the modes live in :mod:`resilience.service.modes`.

Reading follows python-dotenv (the same parser, so quoting, `export ` prefixes, inline comments and
"the last assignment of a key wins" mean what they mean to dotenv). Writing is line-preserving:
every byte outside the value being changed (comments, blank lines, order, `export `, spacing
around `=`, the quote style, inline comments, line endings, unrelated keys) is kept as it was.

Values in this file can be secrets (`DATABASE_URL` lives beside the flags): nothing here logs a
value or puts one in an error message; only key names appear. The copy of the old file kept at
each change holds them too: it is 0600 whatever the file's mode, and only the newest
:data:`BACKUPS_KEPT` such copies are kept.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from dotenv.parser import Binding, parse_stream

from resilience.errors import DataError, InputError
from resilience.infra.fsutil import OwnershipError, atomic_write
from resilience.service.modes import FLAG_NAMES, Mode, mode_of

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Start of an assignment inside one dotenv binding: leading whitespace (blank lines included),
# optional `export `, the key (maybe single-quoted), spaces, `=` and the spaces after it.
_HEAD_RE = re.compile(
    r"(?P<lead>\s*)(?P<export>export[^\S\r\n]+)?(?P<key>'[^']+'|[^=#\s]+)"
    r"(?P<gap>[^\S\r\n]*)(?P<eq>=[^\S\r\n]*)?"
)
_SINGLE_QUOTED_RE = re.compile(r"'((?:\\.|[^'\\])*)'", re.DOTALL)
_DOUBLE_QUOTED_RE = re.compile(r'"((?:\\.|[^"\\])*)"', re.DOTALL)
_UNQUOTED_SAFE_RE = re.compile(r"^[^\s#'\"\\]*$")
_BOM = "\ufeff"

Style = Literal["unquoted", "single", "double"]

#: Timestamped copies (``<name>.bak-<UTC time>[.<n>]``) kept beside the file; older ones go.
BACKUPS_KEPT = 5
BACKUP_MODE = 0o600
_BACKUP_NAME_RE = re.compile(r"\.bak-(\d{8}T\d{6}Z)(?:\.(\d+))?")


@dataclass(frozen=True)
class EnvChange:
    """What :func:`set_values` or :func:`restore_values` did to one env file.

    ``before`` holds the previous effective value of every key the call touched (``None``: the key
    was absent); hand it to :func:`restore_values` to undo. ``backup`` is the copy of the old file,
    ``None`` when no backup was made (nothing changed, or the call does not keep one).
    """

    path: Path
    backup: Path | None
    before: Mapping[str, str | None] = field(default_factory=dict)
    changed: bool = False


# --- reading ---------------------------------------------------------------------------------


def _resolve(path: str | Path) -> Path:
    """The real file behind ``path`` (a deploy may symlink `.env`; we rewrite the target)."""
    given = Path(path)
    if not given.exists():
        raise InputError(f"service env file {given} not found")
    resolved = given.resolve()
    if not resolved.is_file():
        raise InputError(f"service env file {given} is not a regular file")
    return resolved


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"service env file {path} not found") from None
    except OSError as exc:
        raise InputError(f"cannot read service env file {path}: {exc.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"service env file {path} is not valid UTF-8") from None


def _bindings(text: str, path: Path) -> list[Binding]:
    """Split ``text`` (BOM removed) into dotenv bindings whose originals concatenate back to it."""
    bindings = list(parse_stream(io.StringIO(text, newline="")))
    if "".join(b.original.string for b in bindings) != text:
        raise DataError(f"service env file {path} could not be split losslessly; edit it by hand")
    return bindings


def _effective(bindings: list[Binding]) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for binding in bindings:
        if binding.key is not None and not binding.error:
            values[binding.key] = binding.value
    return values


def read_values(path: str | Path) -> dict[str, str | None]:
    """All effective assignments of the file, as python-dotenv reads them (last one wins)."""
    real = _resolve(path)
    text = _read_text(real).removeprefix(_BOM)
    return _effective(_bindings(text, real))


def read_flags(path: str | Path) -> dict[str, str | None]:
    """The three mode flags as written (``None`` when a flag is absent)."""
    values = read_values(path)
    return {key: values.get(key) for key in FLAG_NAMES}


def current_mode(path: str | Path) -> Mode:
    """``"file"`` only when all three flags are `false` (any case); anything else is postgres.

    One or two flags set to `false` is *not* file mode: the service still reads PostgreSQL.
    """
    return mode_of(read_flags(path))


# --- rewriting -------------------------------------------------------------------------------


def _fits(value: str, style: Style) -> bool:
    """Whether ``value`` can be written in ``style`` literally (no escapes needed by any reader)."""
    if style == "unquoted":
        return bool(_UNQUOTED_SAFE_RE.match(value))
    if "\n" in value or "\r" in value or "\\" in value:
        return False
    return ("'" if style == "single" else '"') not in value


def _format(value: str, preferred: Style, key: str) -> str:
    for style in (preferred, "unquoted", "double", "single"):
        if _fits(value, style):
            if style == "single":
                return f"'{value}'"
            if style == "double":
                return f'"{value}"'
            return value
    raise InputError(f"the value for {key} cannot be written to a .env file without escapes")


def _split_value(rest: str, equal_sign: str) -> tuple[str, Style]:
    """The value token at the start of ``rest`` (what follows `=` and its spaces) and its style."""
    if rest.startswith("'"):
        match = _SINGLE_QUOTED_RE.match(rest)
        if match:
            return match.group(0), "single"
    elif rest.startswith('"'):
        match = _DOUBLE_QUOTED_RE.match(rest)
        if match:
            return match.group(0), "double"
    if len(equal_sign) > 1 and rest.startswith("#"):
        return "", "unquoted"  # `KEY= # comment`: empty value, then a comment (dotenv rule)
    line = re.match(r"[^\r\n]*", rest)
    part = line.group(0) if line else ""
    return re.sub(r"\s+#.*", "", part).rstrip(), "unquoted"


def _rewrite(binding: Binding, key: str, value: str) -> str:
    """The binding's original text with only its value replaced."""
    text = binding.original.string
    head = _HEAD_RE.match(text)
    if head is None:  # cannot happen for a binding dotenv parsed as a key
        raise DataError(f"cannot locate the assignment of {key} in the service env file")
    rest = text[head.end() :]
    if head.group("eq") is None:  # `KEY` alone (no `=`): add one
        return text[: head.end()] + "=" + _format(value, "unquoted", key) + rest
    token, style = _split_value(rest, head.group("eq"))
    return text[: head.end()] + _format(value, style, key) + rest[len(token) :]


def _removed(binding: Binding) -> str:
    """What stays of a binding once its assignment is removed: the blank lines before it."""
    text = binding.original.string
    head = _HEAD_RE.match(text)
    lead = head.group("lead") if head else ""
    # keep whole preceding lines only (the lead may end with the key's own indentation)
    cut = max(lead.rfind("\n"), lead.rfind("\r"))
    return lead[: cut + 1]


def _newline_of(text: str) -> str:
    match = re.search(r"\r\n|\n|\r", text)
    return match.group(0) if match else "\n"


def _apply(
    text: str, path: Path, updates: Mapping[str, str | None]
) -> tuple[str, dict[str, str | None]]:
    """New text with ``updates`` applied, and the previous effective values of those keys."""
    bom = _BOM if text.startswith(_BOM) else ""
    body = text.removeprefix(_BOM)
    bindings = _bindings(body, path)
    before = _effective(bindings)
    previous = {key: before.get(key) for key in updates}

    last: dict[str, int] = {}
    for index, binding in enumerate(bindings):
        if binding.key is not None and not binding.error:
            last[binding.key] = index

    pieces = [b.original.string for b in bindings]
    for key, value in updates.items():
        if value is None:
            for index, binding in enumerate(bindings):
                if binding.key == key and not binding.error:
                    pieces[index] = _removed(binding)
        elif key in last and previous[key] != value:
            pieces[last[key]] = _rewrite(bindings[last[key]], key, value)
    new_body = "".join(pieces)

    newline = _newline_of(body)
    appended = [
        f"{key}={_format(value, 'unquoted', key)}{newline}"
        for key, value in updates.items()
        if value is not None and key not in last
    ]
    if appended:
        if new_body and not new_body.endswith(("\n", "\r")):
            new_body += newline
        new_body += "".join(appended)

    # Self-check before anything touches the disk: dotenv must read exactly what we meant.
    after = _effective(_bindings(new_body, path))
    for key, value in updates.items():
        if after.get(key) != value or (value is None and key in after):
            raise DataError(f"rewriting {key} in {path} would not take effect; nothing was written")
    for key, value in before.items():
        if key not in updates and (key not in after or after[key] != value):
            raise DataError(f"rewriting {path} would change unrelated keys; nothing was written")
    return bom + new_body, previous


def _write_like(
    target: Path, data: bytes, like: os.stat_result, *, replace: bool, mode: int | None = None
) -> None:
    """Write ``data`` atomically to ``target`` with the owner of ``like`` and its mode (or
    ``mode``).

    ``replace=False`` never overwrites an existing ``target`` (hard link, then unlink the temp).
    """
    try:
        atomic_write(
            target,
            data,
            mode=like.st_mode & 0o7777 if mode is None else mode,
            temp_prefix=f".{target.name}.tmp-",
            owner=(like.st_uid, like.st_gid),
            replace=replace,
        )
    except OwnershipError:
        raise InputError(
            f"cannot keep the owner of {target} (uid {like.st_uid}, "
            f"gid {like.st_gid}): run as that user or as root"
        ) from None
    except OSError as exc:
        if exc.filename and ".tmp-" in str(exc.filename):  # the temp file: no write access
            raise InputError(f"cannot write in {target.parent}: {exc.strerror}") from None
        raise


def _timestamped_backups(real: Path) -> list[Path]:
    """The timestamped backups of ``real`` beside it, oldest first (by the time in the name,
    then the counter a backup of the same second got)."""
    found: list[tuple[str, int, Path]] = []
    for entry in real.parent.iterdir():
        if not entry.name.startswith(real.name):
            continue
        match = _BACKUP_NAME_RE.fullmatch(entry.name[len(real.name) :])
        if match and entry.is_file() and not entry.is_symlink():
            found.append((match.group(1), int(match.group(2) or 0), entry))
    return [entry for _, _, entry in sorted(found)]


def _prune_backups(real: Path, new: Path) -> None:
    """Keep ``new`` and the newest of the other timestamped backups of ``real``,
    :data:`BACKUPS_KEPT` in all, each 0600 (a copy an older version left readable is
    tightened); best effort: a backup that cannot be removed or tightened never fails the
    change that was made."""
    others = [b for b in _timestamped_backups(real) if b != new]
    drop = max(0, len(others) - (BACKUPS_KEPT - 1))
    for old in others[:drop]:
        with contextlib.suppress(OSError):
            old.unlink()
    for backup in others[drop:]:
        with contextlib.suppress(OSError):
            if backup.stat().st_mode & 0o7777 != BACKUP_MODE:
                backup.chmod(BACKUP_MODE)


def _backup_path(real: Path, suffix: str | None) -> Path:
    if suffix is None:  # timestamped: a second backup of the same second gets the next counter
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        taken = [
            int(m.group(2) or 0)
            for b in _timestamped_backups(real)
            if (m := _BACKUP_NAME_RE.fullmatch(b.name[len(real.name) :])) and m.group(1) == stamp
        ]
        if not taken:
            return real.with_name(f"{real.name}.bak-{stamp}")
        return real.with_name(f"{real.name}.bak-{stamp}.{max(taken) + 1}")
    candidate = real.with_name(real.name + suffix)
    counter = 1
    while candidate.exists():
        candidate = real.with_name(f"{real.name}{suffix}.{counter}")
        counter += 1
    return candidate


def _change(
    path: str | Path,
    updates: Mapping[str, str | None],
    *,
    keep_backup: bool,
    backup_suffix: str | None,
) -> EnvChange:
    for key in updates:
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise InputError(f"invalid env variable name {key!r}: use A-Z, a-z, 0-9 and '_'")
    real = _resolve(path)
    given = Path(path)
    try:
        old_bytes = real.read_bytes()
        stat = real.stat()
    except OSError as exc:
        raise InputError(f"cannot read service env file {given}: {exc.strerror}") from None
    try:
        old_text = old_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"service env file {given} is not valid UTF-8") from None
    new_text, previous = _apply(old_text, given, updates)
    if new_text == old_text:
        return EnvChange(path=given, backup=None, before=previous, changed=False)
    backup: Path | None = None
    if keep_backup:
        backup = _backup_path(real, backup_suffix)
        try:
            _write_like(backup, old_bytes, stat, replace=False, mode=BACKUP_MODE)
        except FileExistsError:
            raise InputError(f"backup {backup} appeared while writing it; retry") from None
    try:
        _write_like(real, new_text.encode("utf-8"), stat, replace=True)
    except OSError as exc:
        raise InputError(f"cannot write service env file {given}: {exc.strerror}") from None
    if backup is not None:
        _prune_backups(real, backup)
    return EnvChange(path=given, backup=backup, before=previous, changed=True)


def set_values(
    path: str | Path,
    values: Mapping[str, str],
    *,
    backup_suffix: str | None = None,
) -> EnvChange:
    """Set ``values`` in the env file at ``path``, changing nothing else, atomically.

    - An existing key is changed in place, keeping its quote style when the new value fits it.
      When a key is assigned more than once, the *last* assignment is the one dotenv (Python and
      Node alike) uses, so that is the one rewritten; earlier duplicates are left as they were
      (they have no effect).
    - A missing key is appended at the end, unquoted when possible, with the file's line ending.
    - When the content would not change, nothing is written and no backup is made
      (``changed=False``): calling it twice is the same as calling it once.
    - Otherwise a copy of the old file is kept beside it first, named ``<name><backup_suffix>``
      (default ``.bak-<UTC timestamp>``; a counter is added rather than overwrite an existing
      backup), mode 0600 (it holds the file's secrets) and the same owner, and then the file is
      replaced atomically (temp file in the same directory, fsync, rename, fsync of the
      directory) keeping its mode and owner. Of the timestamped backups only the newest
      :data:`BACKUPS_KEPT` stay: older ones are removed once the new one is written.
      A symlinked `.env` is followed: its target is rewritten and the link kept.

    Raises :class:`InputError` when the file is missing, unreadable or not writable, and
    :class:`DataError` when the rewrite would not read back as intended (nothing is written then).
    """
    return _change(path, dict(values), keep_backup=True, backup_suffix=backup_suffix)


def restore_values(
    path: str | Path,
    before: Mapping[str, str | None],
    *,
    keep_backup: bool = False,
    backup_suffix: str | None = None,
) -> EnvChange:
    """Undo :func:`set_values`: give each key its ``before`` value; ``None`` removes the key.

    This restores values, not bytes (the file may have been edited since); a line appended by
    :func:`set_values` is removed, but a final newline it had to add stays. The backup kept by
    :func:`set_values` has the exact old bytes. Same atomic write; no backup unless asked for.
    """
    return _change(path, dict(before), keep_backup=keep_backup, backup_suffix=backup_suffix)
