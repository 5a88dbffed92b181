"""Many WAL files to one region in one process, with barman-cloud-wal-archive's own code.

Run by the interpreter of `barman-cloud-wal-archive` (which may be another virtualenv than
ours, so this file imports only barman and the standard library, never `resilience`):

    python walbatch.py --batch-uploads N <barman-cloud-wal-archive's arguments, no WAL path>

It reads every WAL path from stdin (one per line, until end of file), then uploads them oldest
first with N threads sharing one cloud interface (made once: it uploads through boto3's
client, which is thread-safe; a session per thread cost a third of a second each), exactly as
`barman.clients.cloud_walarchive.main` does for one file (name check, compression, history
tags). It writes one line per file to stdout as each upload ends: ``ok NAME``,
``error NAME MESSAGE``, or ``gone NAME`` for a file no longer in the spool (another pass sent
it everywhere); after the first error no new upload starts (those under way finish).
Why by hand: barman-cloud has no batch mode, and one process per segment spends most of its
time starting Python (about 0.5 s a segment on our machines).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from contextlib import closing
from typing import Any

BATCH_FLAG = "--batch-uploads"


def _split(argv: list[str]) -> tuple[int, list[str]]:
    if len(argv) < 2 or argv[0] != BATCH_FLAG:
        raise SystemExit(f"usage: walbatch.py {BATCH_FLAG} N <barman-cloud-wal-archive args>")
    return max(1, int(argv[1])), argv[2:]


def main(argv: list[str]) -> int:
    uploads, barman_args = _split(argv)
    from barman.clients import cloud_walarchive
    from barman.cloud_providers import get_cloud_interface
    from barman.xlog import is_any_xlog_file, is_history_file

    # the WAL path argument is required by the parser; each upload names its own file
    config: Any = cloud_walarchive.parse_arguments([*barman_args, "x"])
    try:  # one interface for every thread (boto3's client, which is thread-safe), made once
        interface: Any = get_cloud_interface(config)
        broken: Exception | None = None
    except Exception as exc:  # reported with the first file to upload
        interface, broken = None, exc
    paths = [line.strip() for line in sys.stdin.read().splitlines() if line.strip()]
    todo: queue.SimpleQueue[str] = queue.SimpleQueue()
    for path in paths:
        todo.put(path)
    failed = threading.Event()
    out = threading.Lock()

    def report(line: str) -> None:
        with out:  # this process's protocol with its parent, one whole line at a time
            sys.stdout.write(line.replace("\n", " ") + "\n")
            sys.stdout.flush()

    def worker() -> None:
        while not failed.is_set():
            try:
                path = todo.get_nowait()
            except queue.Empty:
                return
            name = os.path.basename(path)
            if not os.path.exists(path):  # another pass sent it everywhere and removed it
                report(f"gone {name}")
                continue
            try:
                if not is_any_xlog_file(path):
                    raise ValueError(f"{name} is an invalid name for a WAL file")
                if broken is not None:
                    raise broken
                uploader = cloud_walarchive.CloudWalUploader(
                    cloud_interface=interface,
                    server_name=config.server_name,
                    compression=config.compression,
                    compression_level=config.compression_level,
                )
                kwargs = {"override_tags": config.history_tags} if is_history_file(path) else {}
                uploader.upload_wal(path, **kwargs)
            except Exception as exc:  # reported to the parent, which decides
                failed.set()
                report(f"error {name} Barman cloud WAL archiver exception: {exc}")
            else:
                report(f"ok {name}")

    threads = [threading.Thread(target=worker) for _ in range(min(uploads, len(paths)) or 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if interface is not None:
        with closing(interface):
            pass
    return 1 if failed.is_set() else 0


def _exit(code: int) -> None:
    """Every answer is written and every upload over: end now, without the interpreter's
    teardown of boto3 (a tenth of a second or more, which the parent would wait for)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main(sys.argv[1:]))
