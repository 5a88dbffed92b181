"""How the regions get the spooled files they lack: barman-cloud-wal-archive's own uploader in
one process of barman's Python for all regions (`walbatch.py`, each file compressed once), or
one `barman-cloud-wal-archive` per file and region when that Python is not found;
RESILIENCE_WAL_PUSH_PROCESSES at a time per region, oldest first, each file marked in the spool
as its upload ends (`resilience.backup.wal` decides what leaves the spool)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from resilience.backup.barman import Archive, find_command, last_error, run
from resilience.backup.walbatch import BATCH_FLAG
from resilience.config import Settings
from resilience.errors import ResilienceError
from resilience.infra.redact import Redactor
from resilience.infra.s3 import s3_environment

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


def batch_request(work: list[tuple[Archive, list[Path]]]) -> str:
    """The batch uploader's stdin: each region's barman arguments, AWS_* variables
    (credentials, region id) and the paths it lacks, oldest first."""
    regions = [
        {
            "name": archive.name,
            "args": _archive_args(archive),
            "env": {k: v for k, v in archive.environment().items() if k.startswith("AWS_")},
            "paths": [str(p) for p in paths],
        }
        for archive, paths in work
    ]
    return json.dumps({"regions": regions})


def batch_environment() -> dict[str, str]:
    """The batch uploader's environment: ours without AWS_* (each region brings its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, **s3_environment()}


def _push_batch(
    settings: Settings,
    python: str,
    busy: list[Archive],
    spool: WalSpool,
    todos: dict[str, list[str]],
    say: Progress,
) -> dict[str, dict[str, str | None]]:
    """Every region's files through one batch uploader (`walbatch.py`), each file compressed
    once; each is marked as its upload ends. A region without an answer within
    RESILIENCE_WAL_PUSH_TIMEOUT seconds of its previous one fails there (the rest of it fails;
    the other regions go on)."""
    # -I: the script's own directory (which holds our barman.py) stays off sys.path
    argv = [python, "-I", str(Path(__file__).with_name("walbatch.py")), BATCH_FLAG,
            str(settings.wal_push_processes)]  # fmt: skip
    request = batch_request([(a, [spool.dir / n for n in todos[a.name]]) for a in busy])
    outcomes: dict[str, dict[str, str | None]] = {a.name: {} for a in busy}
    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
            env=batch_environment(), text=True,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        stdout = proc.stdout

        def read() -> None:
            for line in stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        try:
            proc.stdin.write(request)
            proc.stdin.close()
            _read_answers(settings, busy, spool, todos, outcomes, lines, say)
        except OSError as exc:
            why = f"the uploader stopped ({exc.strerror or exc})"
            for archive in busy:
                _fail_first_waiting(archive, todos[archive.name], outcomes[archive.name], why)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        _explain_early_end(settings, busy, todos, outcomes, errors, proc.returncode)
    return outcomes


def _fail_first_waiting(
    archive: Archive, todo: list[str], outcome: dict[str, str | None], why: str
) -> None:
    waiting = [n for n in todo if n not in outcome]
    if waiting:
        outcome[waiting[0]] = (
            f"region {archive.name} ({archive.store.bucket}): archiving {waiting[0]}: {why}"
        )


def _read_answers(
    settings: Settings,
    busy: list[Archive],
    spool: WalSpool,
    todos: dict[str, list[str]],
    outcomes: dict[str, dict[str, str | None]],
    lines: queue.SimpleQueue[str | None],
    say: Progress,
) -> None:
    """The uploader's answers until it ends; a region waiting RESILIENCE_WAL_PUSH_TIMEOUT
    seconds since its last answer fails there, and once no region waits for one any more the
    uploader is not waited for (it is stopped)."""
    redactor = Redactor(settings.secret_values())
    by_name = {a.name: a for a in busy}
    timeout = settings.wal_push_timeout
    deadlines = {a.name: time.monotonic() + timeout for a in busy}
    while True:
        waiting = [r for r in deadlines if len(outcomes[r]) < len(todos[r])]
        if not waiting and len(deadlines) < len(busy):
            return  # every region answered or timed out: what is left hangs
        waiting = waiting or list(deadlines)  # all answered: its end follows
        try:
            line = lines.get(
                timeout=max(0.0, min(deadlines[r] for r in waiting) - time.monotonic())
            )
        except queue.Empty:
            for region in [r for r in waiting if deadlines[r] <= time.monotonic()]:
                del deadlines[region]
                if not any(outcomes[region].values()):  # failed already: said
                    why = f"no upload ended within {timeout:.0f} s"
                    _fail_first_waiting(by_name[region], todos[region], outcomes[region], why)
            continue
        if line is None:
            return
        verdict, region, name, message = [*line.split(" ", 3), "", "", ""][:4]
        if region not in deadlines or name not in todos[region]:
            continue
        archive, outcome = by_name[region], outcomes[region]
        deadlines[region] = time.monotonic() + timeout
        if verdict == "ok":
            spool.mark(archive.mark, name)
            outcome[name] = None
        elif verdict == "gone":
            outcome[name] = None  # as _archive_one: nothing left to send
        elif verdict == "error":
            outcome[name] = (
                f"region {archive.name} ({archive.store.bucket}): archiving {name} "
                f"failed: {redactor.text(last_error(message))}"
            )
            say(f"region {archive.name}: {outcome[name]}")


def _explain_early_end(
    settings: Settings,
    busy: list[Archive],
    todos: dict[str, list[str]],
    outcomes: dict[str, dict[str, str | None]],
    errors: IO[bytes],
    code: int | None,
) -> None:
    """A region left without answers and without an error: the uploader ended early without
    saying why; its own last error line (redacted) says it."""
    silent = [a for a in busy if not any(outcomes[a.name].values())]
    silent = [a for a in silent if any(n not in outcomes[a.name] for n in todos[a.name])]
    if not silent:
        return
    errors.seek(0)
    tail = errors.read().decode("utf-8", "replace")
    why = "failed: " + Redactor(settings.secret_values()).text(last_error(tail) or f"exit {code}")
    for archive in silent:
        waiting = [n for n in todos[archive.name] if n not in outcomes[archive.name]]
        outcomes[archive.name][waiting[0]] = (
            f"region {archive.name} ({archive.store.bucket}): archiving {waiting[0]} {why}"
        )


def push_regions(
    settings: Settings, regions: list[Archive], spool: WalSpool, files: list[str], say: Progress
) -> dict[str, RegionPush]:
    """Send what each region lacks, oldest first, RESILIENCE_WAL_PUSH_PROCESSES at a time per
    region and the regions at once; no new upload to a region starts after its first failure
    (those under way finish, the other regions go on)."""
    todos = {a.name: [n for n in files if not spool.has(a.mark, n)] for a in regions}
    busy = [a for a in regions if todos[a.name]]
    python = batch_interpreter(settings) if busy else None
    if python is not None:
        outcomes = _push_batch(settings, python, busy, spool, todos, say)
        return {
            a.name: _region_result(a, spool, files, todos[a.name], outcomes.get(a.name, {}))
            for a in regions
        }
    with ThreadPoolExecutor(max_workers=max(1, len(regions))) as pool:
        futures = {
            a.name: pool.submit(_push_singly, settings, a, spool, files, todos[a.name], say)
            for a in regions
        }
        return {name: future.result() for name, future in futures.items()}


def _push_singly(
    settings: Settings,
    archive: Archive,
    spool: WalSpool,
    files: list[str],
    todo: list[str],
    say: Progress,
) -> RegionPush:
    """Without barman's Python: one barman-cloud-wal-archive per file to this region."""
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
