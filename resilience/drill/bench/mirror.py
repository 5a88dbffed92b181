"""``bench mirror``: what the live mirror costs the service and how far behind it runs.

On a fresh company of 1,313 keys, through the service's own write path
(:meth:`PgAuthStore.set_keys`, batches of :data:`WRITE_KEYS` keys), ``repeat`` times:

- **upsert latency, trigger off and on, in the same run**: a block of :data:`UPSERTS` calls
  with the change feed removed, one with it installed, and one with it installed and the
  mirror following (in a process of its own, as under PM2, on the same machine), the order
  rotating from one repetition to the next; p50 and p99 of each block. The trigger's overhead
  is ``p50(on) / p50(off) - 1`` (target :data:`OVERHEAD_TARGET`); the one with the mirror
  running beside it is reported too (on a small machine it competes for CPU and disk).
- **apply throughput**: with the mirror stopped, a burst of N changes (N distinct keys, the
  ``--sizes`` value, default 10,000) is recorded, then the mirror starts and its cycles are
  timed until the change table is drained: changes per second.
- **lag under the stand-in's steady rate** (:data:`WRITE_KEYS` keys every
  :data:`STEADY_INTERVAL_S`, for :data:`STEADY_SECONDS`): for every write, the time from its
  commit until the mirror's position file confirms a position after it (p50, p95, max).
- **lag under a burst of N changes**: the same, for the last commit of the burst, while the
  mirror runs; and the most changes pending it reported.

The result is one JSON document: medians and minimums over the repetitions, every run, and the
machine. The feed is removed and the bench company deleted at the end, whatever happens.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import secrets
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from resilience.authstate import pgraw
from resilience.authstate.dataset import generate
from resilience.authstate.pgconn import connect
from resilience.authstate.pgstore import PgAuthStore
from resilience.config import Settings
from resilience.drill.bench import measure
from resilience.errors import VerificationError
from resilience.mirror import feed
from resilience.mirror.position import read_position

DEFAULT_SIZES: tuple[int, ...] = (10_000,)
DEFAULT_REPEAT = 3
SEED_KEYS = 1313
WRITE_KEYS = 10  # keys per service write
UPSERTS = 300  # calls per latency block
OVERHEAD_TARGET = 0.10  # p50 overhead of the trigger at most 10 %
STEADY_INTERVAL_S = 0.1
STEADY_SECONDS = 10.0
SAMPLE_S = 0.005
Progress = Callable[[str], None]


def _mirror_process(dsn: str, mirror_dir: str, stop: Any) -> None:
    """The mirror in a process of its own (as under PM2), until ``stop`` is set."""
    from resilience.mirror.mirror import Mirror

    settings = Settings.model_validate(
        {"service_dsn": dsn, "mirror_dir": mirror_dir, "mirror_poll_interval": 0.2}
    )
    flag = threading.Event()

    def watch() -> None:
        stop.wait()
        flag.set()

    threading.Thread(target=watch, daemon=True).start()
    Mirror(settings).run(flag)


@contextlib.contextmanager
def _mirror_running(dsn: str, mirror_dir: Path) -> Iterator[Any]:
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    process = ctx.Process(target=_mirror_process, args=(dsn, str(mirror_dir), stop))
    process.start()
    try:
        yield process
    finally:
        if process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
        stop.set()
        process.join(30)
        if process.is_alive():
            process.kill()
            process.join(5)


def _confirmed_after(mirror_dir: Path, moment: datetime, timeout: float = 120) -> float:
    """Wall seconds from now until the mirror confirms a position after ``moment``."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            position = read_position(mirror_dir)
            if position and position.confirmed_at and position.confirmed_at > moment:
                return (datetime.now(UTC) - moment).total_seconds()
        if time.monotonic() > deadline:
            raise VerificationError(f"the mirror did not confirm {moment} in {timeout:.0f} s")
        threading.Event().wait(SAMPLE_S)


class _Sampler:
    """Polls the position file; the first observation confirming each commit gives its lag."""

    def __init__(self, mirror_dir: Path) -> None:
        self.mirror_dir = mirror_dir
        self.samples: list[tuple[datetime, datetime, int]] = []  # seen at, confirmed, pending
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(Exception):
                p = read_position(self.mirror_dir)
                if p is not None and p.confirmed_at is not None:
                    self.samples.append((datetime.now(UTC), p.confirmed_at, p.pending_changes))
            self.stop.wait(SAMPLE_S)

    def __enter__(self) -> _Sampler:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(5)

    def lags(self, commits: list[datetime]) -> list[float]:
        out = []
        for commit in commits:
            seen = next((s for s, c, _ in self.samples if c > commit), None)
            if seen is not None:
                out.append((seen - commit).total_seconds())
        return out


def _values(n: int, start: int) -> dict[str, dict[str, Any]]:
    return {
        "session": {
            f"{start + i}.0": {"record": secrets.token_bytes(400), "n": start + i} for i in range(n)
        }
    }


def _latency_block(store: PgAuthStore, company: str, base: int, upserts: int) -> list[float]:
    times = []
    for call in range(upserts):
        data = _values(WRITE_KEYS, base + (call % 50) * WRITE_KEYS)
        times.append(measure.timed(lambda d=data: store.set_keys(company, d)))  # type: ignore[misc]
    return times


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def bench_mirror(
    dsn: str,
    *,
    sizes: tuple[int, ...] = DEFAULT_SIZES,
    repeat: int = DEFAULT_REPEAT,
    work_dir: Path,
    progress: Progress | None = None,
    upserts: int = UPSERTS,
    steady_seconds: float = STEADY_SECONDS,
) -> dict[str, Any]:
    say = progress or (lambda _m: None)
    (burst,) = measure.checked_sizes(sizes[:1], repeat)
    runs: list[dict[str, Any]] = []
    with connect(dsn, autocommit=True) as conn:
        store = PgAuthStore(conn)
        machine = measure.machine(conn, burst=burst, write_keys=WRITE_KEYS)
        try:
            for n in range(repeat):
                # a fresh company of the real tenant's size for every run
                company = f"bench_mirror_{secrets.token_hex(4)}"
                data = generate(company, SEED_KEYS)
                pgraw.insert_raw(store.conn, company, data.creds, data.rows())
                try:
                    run = _one_run(
                        store, dsn, company, work_dir / f"mirror-{n}", burst, n % 3, say,
                        upserts=upserts, steady_seconds=steady_seconds,
                    )  # fmt: skip
                finally:
                    pgraw.delete_company(store.conn, company)
                runs.append(run)
        finally:
            with contextlib.suppress(Exception):
                feed.remove_feed(conn)
    return _summary(runs, machine, burst, repeat, upserts, steady_seconds)


def _one_run(
    store: PgAuthStore,
    dsn: str,
    company: str,
    mirror_dir: Path,
    burst: int,
    rotate: int,
    say: Progress,
    *,
    upserts: int,
    steady_seconds: float,
) -> dict[str, Any]:
    # 1. upsert latency, trigger off and on, in the same run
    run = _upsert_latency(store, dsn, company, mirror_dir, rotate, say, upserts)
    feed.install_feed(store.conn)
    with _mirror_running(dsn, mirror_dir) as process:
        _confirmed_after(mirror_dir, datetime.now(UTC))
        # 2. lag under the stand-in's steady rate (the company at its real size)
        run["steady"] = _steady_lag(store, company, mirror_dir, steady_seconds, say)
        # 3. apply throughput: a burst recorded while the mirror is paused (SIGSTOP), drained
        run["apply"] = _apply_throughput(store, company, mirror_dir, process.pid, burst, say)
        # 4. lag under a burst of N changes, the mirror running
        run["burst"] = _burst_lag(store, company, mirror_dir, burst, say)
    return run


def _upsert_latency(
    store: PgAuthStore,
    dsn: str,
    company: str,
    mirror_dir: Path,
    rotate: int,
    say: Progress,
    upserts: int,
) -> dict[str, Any]:
    """A latency block with the trigger off, on, and on with the mirror following, in the
    order `rotate` gives; p50 and p99 of each, and the trigger's overheads."""
    conn = store.conn
    run: dict[str, Any] = {}
    phases = ["off", "on", "mirror"]
    for phase in phases[rotate:] + phases[:rotate]:
        if phase == "off":
            feed.remove_feed(conn)
            times = _latency_block(store, company, 100_000, upserts)
        elif phase == "on":  # the trigger alone: what it costs the service's statement
            feed.install_feed(conn)
            times = _latency_block(store, company, 100_000, upserts)
            conn.execute(f"DELETE FROM {feed.CHANGES_TABLE}")
        else:  # the trigger and the mirror following, on the same machine
            feed.install_feed(conn)
            with _mirror_running(dsn, mirror_dir):
                _confirmed_after(mirror_dir, datetime.now(UTC))
                times = _latency_block(store, company, 100_000, upserts)
        run[f"upsert_{phase}"] = {"p50_s": statistics.median(times), "p99_s": _pct(times, 0.99)}
        say(f"upserts, trigger {phase}: p50 {statistics.median(times) * 1000:.2f} ms")
    run["overhead_p50"] = run["upsert_on"]["p50_s"] / run["upsert_off"]["p50_s"] - 1
    run["overhead_p50_with_mirror"] = run["upsert_mirror"]["p50_s"] / run["upsert_off"]["p50_s"] - 1
    return run


def _steady_lag(
    store: PgAuthStore, company: str, mirror_dir: Path, steady_seconds: float, say: Progress
) -> dict[str, Any]:
    """Writes at the stand-in's steady rate; the lag of each until the mirror confirmed it."""
    commits: list[datetime] = []
    with _Sampler(mirror_dir) as sampler:
        next_at = time.monotonic()
        end = next_at + steady_seconds
        n = 0
        while time.monotonic() < end:
            store.set_keys(company, _values(WRITE_KEYS, 2_000_000 + (n % 100) * WRITE_KEYS))
            commits.append(datetime.now(UTC))
            n += 1
            next_at += STEADY_INTERVAL_S
            threading.Event().wait(max(0.0, next_at - time.monotonic()))
        _confirmed_after(mirror_dir, commits[-1])
    lags = sampler.lags(commits)
    steady = {
        "writes": len(commits),
        "changes_per_s": len(commits) * WRITE_KEYS / steady_seconds,
        "lag_p50_s": statistics.median(lags),
        "lag_p95_s": _pct(lags, 0.95),
        "lag_max_s": max(lags),
    }
    say(f"steady: lag p50 {steady['lag_p50_s'] * 1000:.0f} ms")
    return steady


def _apply_throughput(
    store: PgAuthStore, company: str, mirror_dir: Path, pid: int, burst: int, say: Progress
) -> dict[str, Any]:
    """A burst recorded while the mirror (process `pid`) is paused, then the time it takes
    to drain it once resumed."""
    os.kill(pid, signal.SIGSTOP)
    try:
        for start in range(0, burst, 100):
            store.set_keys(company, _values(min(100, burst - start), 1_000_000 + start))
        row = store.conn.execute(f"SELECT count(*) FROM {feed.CHANGES_TABLE}").fetchone()
        backlog = int(row[0]) if row else 0
        marker = datetime.now(UTC)
        started = time.perf_counter()
    finally:
        os.kill(pid, signal.SIGCONT)
    _confirmed_after(mirror_dir, marker)
    drained_s = time.perf_counter() - started
    say(f"apply: {backlog} changes drained in {drained_s:.2f} s")
    return {
        "changes": backlog,
        "seconds": drained_s,
        "changes_per_s": backlog / drained_s if drained_s > 0 else None,
    }


def _burst_lag(
    store: PgAuthStore, company: str, mirror_dir: Path, burst: int, say: Progress
) -> dict[str, Any]:
    """A burst of `burst` changes with the mirror running: how long after its last commit
    the mirror confirmed it, and the most changes pending it reported."""
    with _Sampler(mirror_dir) as sampler:
        burst_started = time.perf_counter()
        for start in range(0, burst, 100):
            store.set_keys(company, _values(min(100, burst - start), 3_000_000 + start))
        burst_end = datetime.now(UTC)
        write_s = time.perf_counter() - burst_started
        caught_up_s = _confirmed_after(mirror_dir, burst_end)
    say(f"burst: caught up {caught_up_s:.2f} s after the last commit")
    return {
        "changes": burst,
        "write_s": write_s,
        "lag_after_last_commit_s": caught_up_s,
        "max_pending_changes_seen": max((p for _, _, p in sampler.samples), default=0),
    }


def _summary(
    runs: list[dict[str, Any]],
    machine: dict[str, Any],
    burst: int,
    repeat: int,
    upserts: int,
    steady_seconds: float,
) -> dict[str, Any]:
    def pick(*path: str) -> list[float]:
        out = []
        for run in runs:
            value: Any = run
            for part in path:
                value = value[part]
            out.append(float(value))
        return out

    overhead = pick("overhead_p50")
    return {
        "bench": "mirror",
        "repeat": repeat,
        "burst": burst,
        "trigger_overhead_p50": {
            **measure.stats(overhead),
            "target_max": OVERHEAD_TARGET,
            "met": statistics.median(overhead) <= OVERHEAD_TARGET,
        },
        "targets": {
            "upsert_p50_ratio_trigger_on_off": round(1 + statistics.median(overhead), 4),
            "upsert_p50_ratio_max": round(1 + OVERHEAD_TARGET, 4),
            "met": statistics.median(overhead) <= OVERHEAD_TARGET,
        },
        "trigger_and_mirror_overhead_p50": measure.stats(pick("overhead_p50_with_mirror")),
        "upsert_p50_s_trigger_off": measure.stats(pick("upsert_off", "p50_s")),
        "upsert_p50_s_trigger_on_mirror_running": measure.stats(pick("upsert_mirror", "p50_s")),
        "upsert_p50_s_trigger_on": measure.stats(pick("upsert_on", "p50_s")),
        "upsert_p99_s_trigger_off": measure.stats(pick("upsert_off", "p99_s")),
        "upsert_p99_s_trigger_on": measure.stats(pick("upsert_on", "p99_s")),
        "apply_changes_per_s": measure.stats(pick("apply", "changes_per_s")),
        "steady_lag_p50_s": measure.stats(pick("steady", "lag_p50_s")),
        "steady_lag_p95_s": measure.stats(pick("steady", "lag_p95_s")),
        "steady_lag_max_s": measure.stats(pick("steady", "lag_max_s")),
        "burst_lag_s": measure.stats(pick("burst", "lag_after_last_commit_s")),
        "burst_max_pending_changes": measure.stats(pick("burst", "max_pending_changes_seen")),
        "workload": {
            "seed_keys": SEED_KEYS,
            "keys_per_write": WRITE_KEYS,
            "upserts_per_block": upserts,
            "steady_interval_s": STEADY_INTERVAL_S,
            "steady_seconds": steady_seconds,
        },
        "runs": runs,
        "machine": machine,
    }
