"""How one region gets the spooled files it lacks: barman-cloud-wal-archive's own uploader in
one process of barman's Python (`walbatch.py`), or one `barman-cloud-wal-archive` per file when
that Python is not found; RESILIENCE_WAL_PUSH_PROCESSES at a time, oldest first, each file
marked in the spool as its upload ends (`resilience.backup.wal` decides what leaves the spool)."""

from __future__ import annotations

import queue
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from resilience.backup.barman import Archive, find_command, last_error, run
from resilience.backup.walbatch import BATCH_FLAG
from resilience.config import Settings
from resilience.errors import ResilienceError
from resilience.infra.redact import Redactor

if TYPE_CHECKING:
    from resilience.backup.wal import WalSpool

Progress = Callable[[str], None]


@dataclass
class RegionPush:
    """What one pass did for one region: files sent (oldest first), the first failure (by
    file order) and the files it lacks that are older than its newest (a gap, until filled)."""

    sent: list[str] = field(default_factory=list)
    failure: str | None = None
    gap: list[str] = field(default_factory=list)


def _archive_one(settings: Settings, archive: Archive, spool: WalSpool, name: str) -> str | None:
    """One file to one region; None when it is there (marked), else why not."""
    path = spool.dir / name
    if not path.exists():
        return None
    try:
        run(
            settings,
            archive,
            "barman-cloud-wal-archive",
            [*_archive_args(archive), str(path)],
            what=f"archiving {name}",
            timeout=settings.wal_push_timeout,
        )
    except ResilienceError as exc:
        return str(exc)
    spool.mark(archive.mark, name)
    return None


def batch_interpreter(settings: Settings) -> str | None:
    """The Python that runs barman-cloud-wal-archive (its `#!` line), when it is one: the
    batch uploader runs there, beside barman's own modules."""
    try:
        command = find_command("barman-cloud-wal-archive", settings)
        with open(command, "rb") as script:
            first = script.readline(512).decode("utf-8", "replace").strip()
    except (ResilienceError, OSError):
        return None
    if not first.startswith("#!"):
        return None
    words = first[2:].split()
    if not words or "python" not in Path(words[-1] if words[0].endswith("env") else words[0]).name:
        return None
    return words[0] if not words[0].endswith("env") else shutil.which(words[-1])


def _archive_args(archive: Archive) -> list[str]:
    return [
        *archive.cloud_args(),
        "--gzip",  # switched segments are mostly zeros: gzip's fastest level
        "--compression-level",
        "1",
        "-e",
        "AES256",
        archive.url,
        archive.server,
    ]


def _push_batch(
    settings: Settings,
    python: str,
    archive: Archive,
    spool: WalSpool,
    todo: list[str],
    say: Progress,
) -> dict[str, str | None]:
    """Every file of `todo` to one region through one batch uploader (`walbatch.py`); each
    file is marked as its upload ends. A file without an answer within
    RESILIENCE_WAL_PUSH_TIMEOUT seconds of the previous one stops the uploader: the rest fail."""
    redactor = Redactor(settings.secret_values())
    # -I: the script's own directory (which holds our barman.py) stays off sys.path
    argv = [python, "-I", str(Path(__file__).with_name("walbatch.py")), BATCH_FLAG,
            str(settings.wal_push_processes), *_archive_args(archive)]  # fmt: skip
    outcome: dict[str, str | None] = {}
    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
            env=archive.environment(), text=True,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        stdout = proc.stdout

        def read() -> None:
            for line in stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        try:
            proc.stdin.write("".join(str(spool.dir / n) + "\n" for n in todo))
            proc.stdin.close()
            while True:
                line = lines.get(timeout=settings.wal_push_timeout)
                if line is None:
                    break
                verdict, _, rest = line.partition(" ")
                name, _, message = rest.partition(" ")
                if verdict == "ok" and name in todo:
                    spool.mark(archive.mark, name)
                    outcome[name] = None
                elif verdict == "gone" and name in todo:
                    outcome[name] = None  # as _archive_one: nothing left to send
                elif verdict == "error" and name in todo:
                    outcome[name] = (
                        f"region {archive.name} ({archive.store.bucket}): archiving {name} "
                        f"failed: {redactor.text(last_error(message))}"
                    )
                    say(f"region {archive.name}: {outcome[name]}")
        except (queue.Empty, OSError) as exc:
            waiting = [n for n in todo if n not in outcome]
            why = (
                f"no upload ended within {settings.wal_push_timeout:.0f} s"
                if isinstance(exc, queue.Empty)
                else f"the uploader stopped ({exc.strerror or exc})"
            )
            if waiting:
                outcome[waiting[0]] = (
                    f"region {archive.name} ({archive.store.bucket}): archiving {waiting[0]}: {why}"
                )
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if not any(outcome.values()) and any(n not in outcome for n in todo):
            errors.seek(0)  # it ended early without saying why: its own last error line
            tail = errors.read().decode("utf-8", "replace")
            waiting = [n for n in todo if n not in outcome]
            if waiting:
                outcome[waiting[0]] = (
                    f"region {archive.name} ({archive.store.bucket}): archiving {waiting[0]} "
                    f"failed: {redactor.text(last_error(tail) or f'exit {proc.returncode}')}"
                )
    return outcome


def push_region(
    settings: Settings, archive: Archive, spool: WalSpool, files: list[str], say: Progress
) -> RegionPush:
    """Send what this region lacks, oldest first, RESILIENCE_WAL_PUSH_PROCESSES at a time; no
    new upload starts after its first failure (those under way finish)."""
    todo = [n for n in files if not spool.has(archive.mark, n)]
    python = batch_interpreter(settings) if todo else None
    if python is not None:
        return _region_result(
            archive, spool, files, todo, _push_batch(settings, python, archive, spool, todo, say)
        )
    failed = threading.Event()
    outcome: dict[str, str | None] = {}

    def one(name: str) -> None:
        if failed.is_set():
            return  # not tried: the region failed in this pass
        error = _archive_one(settings, archive, spool, name)
        outcome[name] = error
        if error is not None:
            failed.set()
            say(f"region {archive.name}: {error}")

    workers = max(1, min(settings.wal_push_processes, len(todo)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"wal-{archive.name}") as pool:
        # submitted oldest first: the workers take them in that order
        list(pool.map(one, todo))
    return _region_result(archive, spool, files, todo, outcome)


def _region_result(
    archive: Archive,
    spool: WalSpool,
    files: list[str],
    todo: list[str],
    outcome: dict[str, str | None],
) -> RegionPush:
    done = RegionPush()
    done.sent = [
        n for n in todo if n in outcome and outcome[n] is None and spool.has(archive.mark, n)
    ]
    errors = [outcome[n] for n in todo if outcome.get(n) is not None]
    done.failure = errors[0] if errors else None
    held = [n for n in files if spool.has(archive.mark, n)]
    if held:
        newest = held[-1]
        done.gap = [n for n in files if n < newest and not spool.has(archive.mark, n)]
    return done
