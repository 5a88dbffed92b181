"""Many WAL files to every region in one process, with barman-cloud-wal-archive's own code.

Run by the interpreter of `barman-cloud-wal-archive` (which may be another virtualenv than
ours, so this file imports only barman and the standard library, never `resilience`):

    python walbatch.py --batch-uploads N

Its stdin is one JSON document, ``{"regions": [{"name", "args", "env", "paths"}, ...]}``: each
region's barman-cloud-wal-archive arguments (without a WAL path), its ``AWS_*`` variables (its
credentials travel here, never in argv) and the WAL paths it lacks, oldest first. Each region
gets one cloud interface (made once, with that region's variables in the environment: boto3
reads them when it makes the client; the client is thread-safe, so the region's N threads
share it) and uploads the files oldest first, N at a time, exactly as
`barman.clients.cloud_walarchive.main` does for one file (name check, key, compression, history
tags). A file is compressed once for all regions: the first region to need it compresses it
with barman's own compressor, the others upload the same bytes; the threads start compressing
at once, while boto3 is imported and the interfaces are made.

It writes one line per file and region to stdout as each upload ends: ``ok REGION NAME``,
``error REGION NAME MESSAGE``, or ``gone REGION NAME`` for a file no longer in the spool
(another pass sent it everywhere); after a region's first error no new upload to that region
starts (those under way finish), the other regions go on.
Why by hand: barman-cloud has no batch mode, and one process per segment and region spends
most of its time starting Python and boto3 (about 0.5 s a segment on our machines).
"""

from __future__ import annotations

import io
import json
import os
import queue
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import closing
from typing import Any

BATCH_FLAG = "--batch-uploads"


def _uploads(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != BATCH_FLAG:
        raise SystemExit(f"usage: walbatch.py {BATCH_FLAG} N (regions and paths on stdin)")
    return max(1, int(argv[1]))


class _Entry:
    def __init__(self) -> None:
        self.ready = threading.Event()
        self.data: bytes | None = None
        self.uses = 0


Key = tuple[str, Any, Any]  # path, compression, compression level


class SharedBytes:
    """What each file becomes once compressed, made once and handed to every region that
    uploads it; an entry leaves when its `users` (path -> how many regions upload it) took it,
    and at most `room` are kept (a region far behind the others compresses again rather than
    holding memory)."""

    def __init__(self, users: dict[str, int], room: int) -> None:
        self.users = users
        self.room = max(1, room)
        self.lock = threading.Lock()
        self.entries: OrderedDict[Key, _Entry] = OrderedDict()

    def get(self, key: Key, make: Callable[[], bytes], *, use: bool = True) -> bytes:
        """The bytes of `key`, made by `make` unless another thread made or makes them; `use`
        False only prepares them (a region's upload takes them later)."""
        with self.lock:
            entry = self.entries.get(key)
            owner = entry is None
            if entry is None:
                entry = self.entries[key] = _Entry()
                while len(self.entries) > self.room:
                    self.entries.popitem(last=False)
            if use:
                entry.uses += 1
                if entry.uses >= self.users.get(key[0], 1):
                    self.entries.pop(key, None)
        if owner:
            try:
                entry.data = make()
            finally:
                entry.ready.set()
            return entry.data
        entry.ready.wait()
        return entry.data if entry.data is not None else make()  # the maker failed: our turn


def _shared_uploader(base: Any, shared: SharedBytes) -> Any:
    """barman's CloudWalUploader whose file object is the shared compressed bytes (made by
    barman's own retrieve_file_obj the first time)."""

    class Uploader(base):  # type: ignore[misc]
        def retrieve_file_obj(self, wal_path: str) -> Any:
            def make() -> bytes:
                with closing(super(Uploader, self).retrieve_file_obj(wal_path)) as made:
                    return bytes(made.read())

            key = (wal_path, self.compression, self.compression_level)
            return io.BytesIO(shared.get(key, make))

    return Uploader


class Batch:
    """One run: every region's paths, N threads a region, one answer line per file and
    region. The threads start compressing at once; each region's cloud interface is made
    meanwhile (boto3's import and client take a few tenths of a second)."""

    def __init__(self, regions: list[dict[str, Any]], uploads: int) -> None:
        from barman.clients import cloud_walarchive

        self.regions = regions
        self.uploads = uploads
        # the WAL path argument is required by the parser; each upload names its own file
        self.configs = [cloud_walarchive.parse_arguments([*r["args"], "x"]) for r in regions]
        self.interfaces: list[Any] = [None for _ in regions]
        self.broken: list[Exception | None] = [None for _ in regions]
        self.opened = [threading.Event() for _ in regions]
        users: dict[str, int] = {}
        for region in regions:
            for path in region["paths"]:
                users[path] = users.get(path, 0) + 1
        self.shared = SharedBytes(users, 2 * uploads)
        self.plain = cloud_walarchive.CloudWalUploader
        self.uploader = _shared_uploader(cloud_walarchive.CloudWalUploader, self.shared)
        self.out = threading.Lock()
        self.failed = [threading.Event() for _ in regions]

    def open_interfaces(self) -> None:
        """Each region's interface, one after another with that region's AWS_* variables in
        the environment (boto3 reads them as it makes the client)."""
        from barman.cloud_providers import get_cloud_interface

        try:
            for index, region in enumerate(self.regions):
                for key in [k for k in os.environ if k.startswith("AWS_")]:
                    if key not in region["env"]:
                        del os.environ[key]
                os.environ.update(region["env"])
                try:
                    self.interfaces[index] = get_cloud_interface(self.configs[index])
                except Exception as exc:  # reported with the region's first file to upload
                    self.broken[index] = exc
                self.opened[index].set()
        finally:
            for opened in self.opened:
                opened.set()

    def report(self, line: str) -> None:
        with self.out:  # this process's protocol with its parent, one whole line at a time
            sys.stdout.write(line.replace("\n", " ") + "\n")
            sys.stdout.flush()

    def upload(self, index: int, path: str) -> None:
        """One file to one region, as barman-cloud-wal-archive does; raises when it fails."""
        from barman.xlog import is_any_xlog_file, is_history_file

        config = self.configs[index]
        if not is_any_xlog_file(path):
            raise ValueError(f"{os.path.basename(path)} is an invalid name for a WAL file")
        kwargs = {
            "server_name": config.server_name,
            "compression": config.compression,
            "compression_level": config.compression_level,
        }

        def make() -> bytes:  # barman's own compression (its uploader needs no interface for it)
            with closing(self.plain(cloud_interface=None, **kwargs).retrieve_file_obj(path)) as f:
                return bytes(f.read())

        # compressed now, while the interface may still be in the making; kept for the upload
        self.shared.get((path, config.compression, config.compression_level), make, use=False)
        self.opened[index].wait()
        if self.broken[index] is not None:
            raise self.broken[index]  # type: ignore[misc]
        uploader = self.uploader(cloud_interface=self.interfaces[index], **kwargs)
        history = {"override_tags": config.history_tags} if is_history_file(path) else {}
        uploader.upload_wal(path, **history)

    def worker(self, index: int, todo: queue.SimpleQueue[str]) -> None:
        region, failed = self.regions[index]["name"], self.failed[index]
        while not failed.is_set():
            try:
                path = todo.get_nowait()
            except queue.Empty:
                return
            name = os.path.basename(path)
            if not os.path.exists(path):  # another pass sent it everywhere and removed it
                self.report(f"gone {region} {name}")
                continue
            try:
                self.upload(index, path)
            except Exception as exc:  # reported to the parent, which decides
                failed.set()
                self.report(f"error {region} {name} Barman cloud WAL archiver exception: {exc}")
            else:
                self.report(f"ok {region} {name}")

    def run(self) -> int:
        threads = []
        for index, region in enumerate(self.regions):
            todo: queue.SimpleQueue[str] = queue.SimpleQueue()
            for path in region["paths"]:
                todo.put(str(path))
            count = min(self.uploads, len(region["paths"]))
            threads += [
                threading.Thread(target=self.worker, args=(index, todo)) for _ in range(count)
            ]
        for thread in threads:
            thread.start()
        self.open_interfaces()
        for thread in threads:
            thread.join()
        for interface in self.interfaces:
            if interface is not None:
                with closing(interface):
                    pass
        return 1 if any(f.is_set() for f in self.failed) else 0


def main(argv: list[str]) -> int:
    uploads = _uploads(argv)
    return Batch(json.loads(sys.stdin.read())["regions"], uploads).run()


def _exit(code: int) -> None:
    """Every answer is written and every upload over: end now, without the interpreter's
    teardown of boto3 (a tenth of a second or more, which the parent would wait for)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main(sys.argv[1:]))
