"""The service's `.env` mode switch: line-preserving, atomic, idempotent, reversible."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from dotenv import dotenv_values

from resilience.errors import InputError
from resilience.service import envfile
from resilience.service.envfile import (
    current_mode,
    read_flags,
    restore_values,
    set_values,
)
from resilience.service.modes import FILE_MODE_FLAGS, POSTGRES_MODE_FLAGS

SECRET_DSN = "postgresql://svc:s3cr3t-pw@db.internal:5432/app"

POSTGRES_ENV = (
    "# Baileys service settings\n"
    "\n"
    f"DATABASE_URL='{SECRET_DSN}'\n"
    "export USE_REPOSITORY_PATTERN=true   # repository layer\n"
    'USE_DATABASE_AUTH_STATE="true"\n'
    "   # indented comment stays\n"
    "USE_LEGACY_SUPABASE = TRUE\n"
    "COMPANY_ID=acme_1\n"
    "\n"
    "# trailing comment\n"
)

EXPECTED_FILE_ENV = (
    "# Baileys service settings\n"
    "\n"
    f"DATABASE_URL='{SECRET_DSN}'\n"
    "export USE_REPOSITORY_PATTERN=false   # repository layer\n"
    'USE_DATABASE_AUTH_STATE="false"\n'
    "   # indented comment stays\n"
    "USE_LEGACY_SUPABASE = false\n"
    "COMPANY_ID=acme_1\n"
    "\n"
    "# trailing comment\n"
)


@pytest.fixture
def env_path(tmp_path: Path) -> Path:
    path = tmp_path / ".env"
    path.write_bytes(POSTGRES_ENV.encode())
    path.chmod(0o640)
    return path


def backups(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(path.name + ".bak"))


def test_switch_to_file_mode_changes_only_the_three_values(env_path: Path) -> None:
    assert current_mode(env_path) == "postgres"
    change = set_values(env_path, FILE_MODE_FLAGS)

    assert env_path.read_bytes() == EXPECTED_FILE_ENV.encode()
    assert change.changed
    assert change.before == {
        "USE_REPOSITORY_PATTERN": "true",
        "USE_DATABASE_AUTH_STATE": "true",
        "USE_LEGACY_SUPABASE": "TRUE",
    }
    assert current_mode(env_path) == "file"
    assert read_flags(env_path) == FILE_MODE_FLAGS
    assert dotenv_values(env_path)["DATABASE_URL"] == SECRET_DSN


def test_backup_holds_the_old_bytes_and_is_0600(env_path: Path) -> None:
    """It holds the DSN: owner only, whatever the mode of the file (0640 here)."""
    change = set_values(env_path, FILE_MODE_FLAGS)
    assert change.backup is not None
    assert change.backup.parent == env_path.parent
    assert change.backup.name.startswith(".env.bak-")
    assert change.backup.read_bytes() == POSTGRES_ENV.encode()
    assert stat.S_IMODE(change.backup.stat().st_mode) == 0o600
    assert change.backup.stat().st_uid == env_path.stat().st_uid
    assert stat.S_IMODE(env_path.stat().st_mode) == 0o640
    assert backups(env_path) == [change.backup]


def test_only_the_newest_five_backups_stay_each_0600(env_path: Path) -> None:
    """Each switch leaves a copy holding the DSN: they do not pile up. The oldest go once a new
    one is written (ordered by the time in the name, then by the counter of the same second);
    one an older version left readable is tightened; other files are not touched."""
    old = []
    for day in range(1, 7):
        path = env_path.with_name(f".env.bak-202001{day:02d}T000000Z")
        path.write_bytes(POSTGRES_ENV.encode())
        path.chmod(0o644)
        old.append(path)
    others = [env_path.with_name(name) for name in (".env.bak-custom", ".env.example")]
    for path in others:
        path.write_text("kept\n")

    first = set_values(env_path, FILE_MODE_FLAGS)
    assert first.backup is not None
    assert backups(env_path) == sorted([*old[2:], first.backup, others[0]])
    made = [first.backup]
    for flags in (POSTGRES_MODE_FLAGS, FILE_MODE_FLAGS, POSTGRES_MODE_FLAGS, FILE_MODE_FLAGS):
        change = set_values(env_path, flags)
        assert change.backup is not None
        made.append(change.backup)
    timestamped = [p for p in backups(env_path) if p not in others]
    assert set(timestamped) == set(made)  # the five made now: every older one removed
    assert [stat.S_IMODE(p.stat().st_mode) for p in timestamped] == [0o600] * 5
    assert all(p.read_text() == "kept\n" for p in others)

    # a burst within a second: counters go on past the ones removed, the newest always stays
    for flags in (POSTGRES_MODE_FLAGS, FILE_MODE_FLAGS, POSTGRES_MODE_FLAGS, FILE_MODE_FLAGS):
        change = set_values(env_path, flags)
        assert change.backup is not None and change.backup.exists()
        made.append(change.backup)
        remaining = {p for p in backups(env_path) if p not in others}
        assert remaining == set(made[-5:])  # the oldest went, never a newer one


def test_file_mode_bits_are_preserved(env_path: Path) -> None:
    env_path.chmod(0o600)
    set_values(env_path, FILE_MODE_FLAGS)
    assert stat.S_IMODE(env_path.stat().st_mode) == 0o600
    assert env_path.stat().st_uid == os.getuid()


def test_idempotent_second_call_writes_nothing(env_path: Path) -> None:
    first = set_values(env_path, FILE_MODE_FLAGS)
    inode, mtime = env_path.stat().st_ino, env_path.stat().st_mtime_ns
    second = set_values(env_path, FILE_MODE_FLAGS)

    assert first.changed and not second.changed
    assert second.backup is None
    assert second.before == FILE_MODE_FLAGS
    assert (env_path.stat().st_ino, env_path.stat().st_mtime_ns) == (inode, mtime)
    assert backups(env_path) == [first.backup]
    assert env_path.read_bytes() == EXPECTED_FILE_ENV.encode()


def test_restore_undoes_the_switch_byte_for_byte(env_path: Path) -> None:
    change = set_values(env_path, FILE_MODE_FLAGS)
    undo = restore_values(env_path, change.before)
    assert undo.changed
    assert undo.backup is None
    assert env_path.read_bytes() == POSTGRES_ENV.encode()
    assert current_mode(env_path) == "postgres"
    assert undo.before == FILE_MODE_FLAGS


def test_missing_keys_are_appended_and_restore_removes_them(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    original = "# only the DSN\r\nDATABASE_URL=postgresql://a:b@h/d\r\nUSE_LEGACY_SUPABASE=false"
    path.write_bytes(original.encode())

    change = set_values(path, FILE_MODE_FLAGS)
    text = path.read_bytes().decode()
    assert text == (
        "# only the DSN\r\nDATABASE_URL=postgresql://a:b@h/d\r\nUSE_LEGACY_SUPABASE=false\r\n"
        "USE_REPOSITORY_PATTERN=false\r\nUSE_DATABASE_AUTH_STATE=false\r\n"
    )
    assert change.before == {
        "USE_REPOSITORY_PATTERN": None,
        "USE_DATABASE_AUTH_STATE": None,
        "USE_LEGACY_SUPABASE": "false",
    }
    assert current_mode(path) == "file"

    restore_values(path, change.before)
    # values restored exactly; only the newline added to the unterminated last line remains
    assert path.read_bytes().decode() == original + "\r\n"
    assert read_flags(path) == {
        "USE_REPOSITORY_PATTERN": None,
        "USE_DATABASE_AUTH_STATE": None,
        "USE_LEGACY_SUPABASE": "false",
    }


@pytest.mark.parametrize(
    "flags",
    [
        {"USE_REPOSITORY_PATTERN": "false"},
        {"USE_REPOSITORY_PATTERN": "false", "USE_DATABASE_AUTH_STATE": "false"},
        {"USE_DATABASE_AUTH_STATE": "false", "USE_LEGACY_SUPABASE": "false"},
    ],
)
def test_setting_only_some_flags_is_not_file_mode(env_path: Path, flags: dict[str, str]) -> None:
    set_values(env_path, flags)
    assert current_mode(env_path) == "postgres"


def test_mode_detection_is_case_insensitive_and_needs_all_three(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("USE_REPOSITORY_PATTERN=False\nUSE_DATABASE_AUTH_STATE='FALSE'\n")
    assert current_mode(path) == "postgres"  # third flag absent
    path.write_text(path.read_text() + 'export USE_LEGACY_SUPABASE="false"\n')
    assert current_mode(path) == "file"


def test_last_duplicate_wins_and_is_the_one_rewritten(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text(
        "USE_REPOSITORY_PATTERN=false\nUSE_DATABASE_AUTH_STATE=false\nUSE_LEGACY_SUPABASE=false\n"
        "USE_REPOSITORY_PATTERN=true\n"
    )
    assert current_mode(path) == "postgres"
    change = set_values(path, FILE_MODE_FLAGS)
    assert change.before["USE_REPOSITORY_PATTERN"] == "true"
    assert path.read_text().splitlines() == [
        "USE_REPOSITORY_PATTERN=false",
        "USE_DATABASE_AUTH_STATE=false",
        "USE_LEGACY_SUPABASE=false",
        "USE_REPOSITORY_PATTERN=false",
    ]
    assert current_mode(path) == "file"


def test_tricky_lines_survive_untouched(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    tricky = (
        "\ufeffA=1\n"
        'MULTI="line one\nline two"\n'
        "HASH=abc#def\n"
        "EMPTY=\n"
        "COMMENTED= # nothing here\n"
        "not a valid line at all ===\n"
        "BARE\n"
        "USE_REPOSITORY_PATTERN='true' # single quoted\n"
        "Z=last"
    )
    path.write_bytes(tricky.encode())
    before = dotenv_values(path)
    set_values(path, {"USE_REPOSITORY_PATTERN": "false"})
    expected = tricky.replace("'true' # single", "'false' # single")
    assert path.read_bytes() == expected.encode()
    after = dotenv_values(path)
    assert after == {**before, "USE_REPOSITORY_PATTERN": "false"}


def test_value_needing_quotes_is_quoted_when_appended(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("A=1\n")
    set_values(path, {"GREETING": "hello world #1"})
    assert path.read_text() == 'A=1\nGREETING="hello world #1"\n'
    assert dotenv_values(path)["GREETING"] == "hello world #1"


def test_symlinked_env_keeps_the_link(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    target = shared / ".env"
    target.write_text(POSTGRES_ENV)
    link = tmp_path / ".env"
    link.symlink_to(target)

    change = set_values(link, FILE_MODE_FLAGS)
    assert link.is_symlink()
    assert target.read_text() == EXPECTED_FILE_ENV
    assert change.backup is not None and change.backup.parent == shared


def test_missing_env_file_is_an_input_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / ".env"
    with pytest.raises(InputError, match=r"service env file .*nope/\.env not found"):
        set_values(missing, FILE_MODE_FLAGS)
    with pytest.raises(InputError, match="not found"):
        current_mode(missing)
    assert not missing.parent.exists()


def test_invalid_key_changes_nothing(env_path: Path) -> None:
    with pytest.raises(InputError, match="invalid env variable name"):
        set_values(env_path, {"BAD KEY": "x"})
    assert env_path.read_bytes() == POSTGRES_ENV.encode()
    assert backups(env_path) == []


def test_errors_never_show_values(env_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        set_values(env_path, {"DATABASE_URL": "line\nbreak\\ and 'both\" quotes"})
    assert "s3cr3t" not in str(caught.value)
    assert "break" not in str(caught.value)
    assert env_path.read_bytes() == POSTGRES_ENV.encode()


def test_failed_write_leaves_the_file_and_no_temp(
    env_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(envfile.os, "replace", boom)
    with pytest.raises(InputError, match="No space left on device"):
        set_values(env_path, FILE_MODE_FLAGS)
    assert env_path.read_bytes() == POSTGRES_ENV.encode()
    leftovers = [p.name for p in env_path.parent.iterdir() if ".tmp-" in p.name]
    assert leftovers == []


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_owner_is_preserved_when_running_as_root(env_path: Path) -> None:
    os.chown(env_path, 65534, 65534)
    change = set_values(env_path, FILE_MODE_FLAGS)
    assert (env_path.stat().st_uid, env_path.stat().st_gid) == (65534, 65534)
    assert change.backup is not None
    assert (change.backup.stat().st_uid, change.backup.stat().st_gid) == (65534, 65534)
