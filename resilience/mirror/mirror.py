"""The mirror: one Baileys directory per company under ``mirror_dir``, current with PostgreSQL.

It starts from the full export (:func:`~resilience.files.export.export_company`, manifest
included) or, after a restart, from its own directories when their digests match the position
it last recorded; then it follows the change feed (:mod:`.feed`). One cycle:

1. in one REPEATABLE READ snapshot: read the recorded changes, and for every key they name
   the rows that name the same file now (legacy twins included; collisions resolved as the
   export resolves them), the creds when they changed, and for a reconciliation every
   company whole;
2. write the files that changed (new content in temp files, fsynced, renames, the
   manifest last, an fsync of the directory): through the export's naming and encoding, so a
   mirrored directory is byte for byte what an export of that moment writes;
3. record the position (:mod:`.position`) once the files are durable, never before;
4. prune the applied changes from the change table.

A change is applied by reading the row as it is, so applying one twice does no harm: a crash
between any two steps loses nothing (unpruned changes are applied again on the next cycle).
The position's ``confirmed_at`` advances only when a cycle read every recorded change.

A reconciliation (every ``mirror_reconcile_interval``, and at start) compares each company
whole with the database in the same snapshot and repairs any file the feed missed (a write
with the triggers disabled, a change table truncated by hand), reporting each one.

A change for a company whose id does not validate is logged and skipped (never a path); a
directory that cannot be written (full or read-only disk) stops the applying: the position
stays where it was, so the lag grows and alerts.

Beside it: what the mirror holds and the pure part of a cycle (:mod:`.state`), where a restart
picks up (:mod:`.resume`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from resilience.authstate.codec import decode, dumps_file
from resilience.authstate.filestore import TEMP_PREFIX, FileAuthStore, create_file, make_durable
from resilience.authstate.fingerprint import KeyFingerprint
from resilience.authstate.model import KeyRecord
from resilience.authstate.naming import (
    MANIFEST_FILE,
    file_name_for,
    resolve_collisions,
)
from resilience.authstate.pgconn import Conn, connect, read_transaction
from resilience.authstate.pgstore import PgAuthStore
from resilience.authstate.view import baileys_ref, view_of
from resilience.config import Settings, validate_company_id
from resilience.errors import DatabaseError, DataError, InputError, ResilienceError, first_line
from resilience.files.export import export_company
from resilience.files.staging import ensure_root
from resilience.infra.redact import Redactor, redact_dsn
from resilience.mirror import feed
from resilience.mirror.position import Position, read_position, write_position
from resilience.mirror.resume import carry_over, resume_company
from resilience.mirror.state import (
    CompanyState,
    CycleRead,
    CycleResult,
    Delta,
    applied,
    by_company,
    candidates,
    reconcile_into,
)

log = logging.getLogger(__name__)

#: Files of one company in one cycle from which one syncfs makes them durable (fewer: fsyncs).
SYNCFS_FROM = 1000
Event = Callable[[str], None]


def mirror_dsn(settings: Settings) -> str:
    secret = settings.mirror_dsn or settings.service_dsn
    if secret is None:
        raise InputError("RESILIENCE_MIRROR_DSN (or RESILIENCE_SERVICE_DSN) is not set")
    return secret.get_secret_value()


class Mirror:
    """The mirror of every company in one database, under ``root``."""

    def __init__(
        self,
        settings: Settings,
        root: Path | None = None,
        *,
        dsn: str | None = None,
        on_event: Event | None = None,
    ) -> None:
        self.settings = settings
        self.root = Path(root if root is not None else settings.mirror_dir)
        self.dsn = dsn or mirror_dsn(settings)
        self.redactor = Redactor([self.dsn, *settings.secret_values()])
        self.source = "mirror of " + redact_dsn(self.dsn)
        self.files = FileAuthStore(self.root)
        self.companies: dict[str, CompanyState] = {}
        self.position = Position(pid=os.getpid(), source=self.source)
        carry_over(self.root, self.position)
        self.conn: Conn | None = None
        self.on_event = on_event or (lambda message: log.info("%s", message))
        self.cycles = 0

    # --- connection --------------------------------------------------------------------------
    def _connect(self) -> Conn:
        conn = connect(self.dsn, timeout=self.settings.db_connect_timeout, autocommit=True)
        try:
            feed.require_feed(conn)
            conn.execute(f"LISTEN {feed.CHANNEL}")
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None

    def wait(self, timeout: float) -> None:
        """Until a NOTIFY arrives (those received during the last cycle count: psycopg keeps
        them until :meth:`notifies` runs) or ``timeout``; then take the rest of them."""
        if self.conn is None:
            return
        with contextlib.suppress(psycopg.Error):
            for _ in self.conn.notifies(timeout=timeout, stop_after=1):
                break
            for _ in self.conn.notifies(timeout=0):
                pass

    # --- start: resume or export -------------------------------------------------------------
    def start(self) -> CycleResult:
        """Connect, take every company from the directories (when they match the recorded
        position) or from a full export, then catch up and reconcile in a first cycle."""
        ensure_root(self.root)
        self.close()
        self.conn = self._connect()
        store = PgAuthStore(self.conn)
        try:
            previous = read_position(self.root)
        except DataError as exc:
            self.on_event(f"position unreadable, starting from a full export: {exc}")
            previous = None
        exported: list[str] = []
        with read_transaction(self.conn):
            for company_id in store.companies():
                try:
                    validate_company_id(company_id)
                except InputError:
                    log.warning("skipping company %r: not a valid id", company_id[:60])
                    continue
                resumed = resume_company(self.files, company_id, previous, self.on_event)
                if resumed is not None:
                    self.companies[company_id] = resumed
                    self.on_event(f"company {company_id}: resumed from its directory")
                    continue
                try:
                    self.companies[company_id] = self._export(store, company_id)
                    exported.append(company_id)
                    self.on_event(f"company {company_id}: full export")
                except ResilienceError as exc:
                    log.warning("company %s not mirrored: %s", company_id, exc)
        resumed_n = len(self.companies) - len(exported)
        self.on_event(
            f"started: {len(exported)} company(ies) exported, {resumed_n} resumed from {self.root}"
        )
        result = self.cycle(reconcile=True)
        result.exported[:0] = exported
        return result

    def _export(self, store: PgAuthStore, company_id: str) -> CompanyState:
        """The full export of one company (inside the caller's snapshot), and its state."""
        result = export_company(store, self.root, company_id, source=self.source)
        view = view_of(company_id, store.load_creds(company_id), store.records(company_id))
        state = CompanyState.of_view(view)
        if state.digest() != result.digest:  # same snapshot: cannot differ
            raise DataError(f"company {company_id}: export and view digests differ")
        return state

    # --- one cycle ---------------------------------------------------------------------------
    def cycle(self, *, reconcile: bool = False) -> CycleResult:
        """Read, write, record, prune (see the module text). Database errors propagate with
        nothing recorded; so do write errors (the position stays where it was)."""
        if self.conn is None:
            raise DatabaseError("the mirror is not connected")
        conn = self.conn
        started = time.monotonic()
        snapshot_at = datetime.now(UTC)  # before the snapshot: a conservative position
        read = self._read(conn, reconcile=reconcile)
        written, deleted, repaired = self._write_deltas(read.deltas, snapshot_at)
        self._advance(read, snapshot_at, started)
        if reconcile:
            self._reconciled(snapshot_at, repaired)
        write_position(self.root, self.position)
        feed.prune_changes(conn, [c.id for c in read.changes])
        self.cycles += 1
        return CycleResult(
            len(read.changes),
            read.drained,
            written,
            deleted,
            repaired,
            read.exported,
            read.skipped,
            time.monotonic() - started,
        )

    def _read(self, conn: Conn, *, reconcile: bool) -> CycleRead:
        """Step 1, in one snapshot: the recorded changes, each company's delta (a company new
        to the mirror is exported whole), a reconciliation's repairs, how far behind we are."""
        store = PgAuthStore(conn)
        batch = self.settings.mirror_batch
        read = CycleRead()
        with read_transaction(conn):
            read.changes = feed.read_changes(conn, batch)
            read.drained = len(read.changes) < batch
            for company_id, items in by_company(read.changes).items():
                self._take(store, company_id, items, read)
            if reconcile:
                for company_id in list(self.companies):
                    if company_id in read.exported:
                        continue
                    delta = read.deltas.setdefault(company_id, Delta())
                    self._reconcile(store, company_id, delta)
            read.pending = len(read.changes)  # behind at the start of this cycle
            if not read.drained:
                row = conn.execute(f"SELECT count(*) FROM {feed.CHANGES_TABLE}").fetchone()
                read.pending = max(read.pending, int(row[0])) if row else read.pending
        return read

    def _take(
        self, store: PgAuthStore, company_id: str, items: list[feed.Change], read: CycleRead
    ) -> None:
        """One company's changes: skipped (an id that is not valid), a full export (a company
        new to the mirror) or its delta."""
        try:
            validate_company_id(company_id)
        except InputError:
            read.skipped += len(items)
            log.warning(
                "skipping %d change(s) of company %r: not a valid id (never a path)",
                len(items),
                company_id[:60],
            )
            return
        if company_id not in self.companies:
            try:
                self.companies[company_id] = self._export(store, company_id)
                read.exported.append(company_id)
            except ResilienceError as exc:
                log.warning("company %s not mirrored yet: %s", company_id, exc)
            return
        read.deltas[company_id] = self._delta(store, company_id, items)

    def _write_deltas(self, deltas: dict[str, Delta], at: datetime) -> tuple[int, int, list[str]]:
        """Step 2: every company's changed files made durable; (written, deleted, repaired)."""
        written = deleted = 0
        repaired: list[str] = []
        for company_id, delta in deltas.items():
            if delta:
                w, d = self._write(company_id, delta, at)
                written, deleted = written + w, deleted + d
                repaired += delta.repaired
        return written, deleted, repaired

    def _advance(self, read: CycleRead, snapshot_at: datetime, started: float) -> None:
        """Step 3 (in memory; recorded by the caller): the position once the files are durable."""
        p = self.position
        if read.drained:
            p.confirmed_at = snapshot_at
        if read.changes:
            p.last_change_id = max(p.last_change_id, max(c.id for c in read.changes))
        p.applied_total += len(read.changes)
        p.pending_changes = read.pending
        p.last_batch = len(read.changes)
        p.last_apply_s = round(time.monotonic() - started, 6)
        p.state, p.failing_since, p.last_error = "following", None, None
        p.skipped_changes_total += read.skipped
        p.companies = {
            c: {"digest": s.digest(), "key_count": len(s.entries)}
            for c, s in sorted(self.companies.items())
        }

    def _reconciled(self, at: datetime, repaired: list[str]) -> None:
        p = self.position
        p.reconcile_at = at
        p.reconcile_last = repaired[:50]
        p.reconcile_repairs_total += len(repaired)
        if repaired:
            log.warning(
                "reconciliation repaired %d file(s) the feed missed: %s",
                len(repaired),
                ", ".join(repaired[:10]),
            )
            self.on_event(f"reconciliation repaired {len(repaired)}: {repaired[:10]}")

    def _delta(self, store: PgAuthStore, company_id: str, items: list[feed.Change]) -> Delta:
        delta = Delta()
        if any(c.key_type is None for c in items):
            delta.creds = store.load_creds(company_id)
        names: set[str] = set()
        wanted: set[tuple[str, str]] = set()
        for change in items:
            if change.key_type is None or change.key_id is None:
                continue
            try:
                names.add(file_name_for(change.key_type, change.key_id))
                wanted |= candidates(change.key_type, change.key_id)
            except InputError as exc:
                log.warning("company %s: change skipped: %s", company_id, exc)
        if not names:
            return delta
        records = _rows(store.conn, company_id, wanted)
        by_name: dict[str, list[KeyRecord]] = defaultdict(list)
        for record in records:
            with contextlib.suppress(InputError):
                name = file_name_for(record.key_type, record.key_id)
                if name in names:
                    by_name[name].append(record)
        state = self.companies[company_id]
        for name in names:
            group = by_name.get(name)
            if not group:
                if name in state.entries:
                    delta.files[name] = None
                if name in state.collisions:
                    delta.collisions[name] = None
                continue
            chosen, collisions = resolve_collisions(group)
            record = chosen[name]
            key_type, key_id = baileys_ref(record.key_type, record.key_id)
            entry = (key_type, key_id, KeyFingerprint.of(key_type, key_id, record.value))
            if state.entries.get(name) != entry:
                delta.files[name] = (entry, dumps_file(record.value))
            new_collision = collisions[0] if collisions else None
            if state.collisions.get(name) != new_collision:
                delta.collisions[name] = new_collision
        return delta

    def _reconcile(self, store: PgAuthStore, company_id: str, delta: Delta) -> None:
        """Compare the company whole (as it will be after ``delta``) with the database and
        add a repair for every file that differs."""
        view = view_of(company_id, store.load_creds(company_id), store.records(company_id))
        reconcile_into(self.companies[company_id], view, delta)

    # --- writing -----------------------------------------------------------------------------
    def _write(self, company_id: str, delta: Delta, at: datetime) -> tuple[int, int]:
        """Apply ``delta`` to the company's directory: new contents into temp files, made
        durable at once, renamed into place (the manifest last), the directory fsynced. The
        in-memory state follows only once all of it is done."""
        new_state, writes, deletes = applied(self.companies[company_id], delta)
        manifest = new_state.manifest(self.source, at).to_dict()
        # the export's manifest, compact: rewritten every cycle, and json's indenting encoder
        # is pure Python (ten times slower on a large company)
        compact = json.dumps(manifest, ensure_ascii=True, separators=(",", ":")) + "\n"
        writes.append((MANIFEST_FILE, compact.encode("ascii")))
        directory = self.files.company_dir(company_id)  # a validated id: one entry of root
        _replace_files(directory, writes, deletes)
        self.companies[company_id] = new_state
        return len(writes) - 1, len(deletes)

    # --- the long run ------------------------------------------------------------------------
    def run(
        self, stop: threading.Event, on_cycle: Callable[[CycleResult], None] | None = None
    ) -> int:
        """Follow until ``stop`` is set; every failure is recorded and retried."""
        next_reconcile = time.monotonic() + self.settings.mirror_reconcile_interval
        interval = self.settings.mirror_poll_interval
        try:
            while not stop.is_set():
                drained = True
                try:
                    if self.conn is None:
                        result = self.start()
                    else:
                        reconcile = time.monotonic() >= next_reconcile
                        result = self.cycle(reconcile=reconcile)
                        if reconcile:
                            next_reconcile = (
                                time.monotonic() + self.settings.mirror_reconcile_interval
                            )
                    drained = result.drained
                    if on_cycle is not None:
                        on_cycle(result)
                except (DatabaseError, psycopg.Error) as exc:
                    self._failed("db-unreachable", exc)
                    self.close()
                except OSError as exc:
                    self._failed("write-failed", exc)
                except ResilienceError as exc:  # configuration, a directory that is not ours
                    self._failed("failed", exc)
                    self.close()
                if stop.is_set():
                    break
                if not drained:
                    continue
                if self.conn is None:
                    stop.wait(interval)
                else:
                    self.wait(interval)
        finally:
            self.close()
        return self.cycles

    def _failed(self, state: str, exc: BaseException) -> None:
        p = self.position
        message = self.redactor.text(first_line(exc))
        if p.state != state or p.last_error != message:
            self.on_event(f"{state}: {message}")
        if state == "db-unreachable" and p.failing_since is None:
            p.failing_since = datetime.now(UTC)
        p.state, p.last_error = state, message
        try:
            write_position(self.root, p)  # the same confirmed position, with the failure
        except OSError as write_exc:
            log.warning("mirror position not written: %s", write_exc.strerror)


def _rows(conn: Conn, company_id: str, wanted: Iterable[tuple[str, str]]) -> list[KeyRecord]:
    pairs = sorted(wanted)
    rows = conn.execute(
        "SELECT key_type, key_id, value, updated_at, expires_at FROM whatsapp_keys "
        "WHERE company_id = %s AND (key_type, key_id) IN "
        "(SELECT * FROM unnest(%s::text[], %s::text[]))",
        (company_id, [t for t, _ in pairs], [i for _, i in pairs]),
    ).fetchall()
    return [
        KeyRecord(company_id, t, i, decode(v, where=f"{t}/{i}"), updated, expires)
        for t, i, v, updated, expires in rows
    ]


@functools.cache
def _fsync_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=16, thread_name_prefix="mirror-fsync")


def _fsync_at(dir_fd: int, name: str) -> None:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_files(directory: Path, writes: list[tuple[str, bytes]], deletes: list[str]) -> None:
    """Replace files of ``directory`` so a reader sees each old or new, never torn: contents
    into ``.tmp-`` files (skipped by every reader), fsynced (side by side, or one syncfs for a
    big batch), renames in order (the last one, the manifest, after every key), deletions, an
    fsync of the directory. Temp files are removed on failure."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    temps: list[tuple[str, str]] = []
    try:
        try:
            for name, payload in writes:
                temp = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
                create_file(dir_fd, temp, payload)
                temps.append((temp, name))
            if len(temps) > SYNCFS_FROM:  # a catch-up: one syncfs beats thousands of fsyncs
                make_durable(directory, [t for t, _ in temps])
            else:  # an fsync per file, side by side (they share the journal's commits); a
                # syncfs would wait for every other writer of the file system too
                list(_fsync_pool().map(lambda n: _fsync_at(dir_fd, n), [t for t, _ in temps]))
            *keys, last = temps
            for temp, name in keys:
                os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            for name in deletes:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dir_fd)
            os.replace(last[0], last[1], src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.fsync(dir_fd)
        except BaseException:
            for temp, _ in temps:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=dir_fd)
            raise
    finally:
        os.close(dir_fd)
