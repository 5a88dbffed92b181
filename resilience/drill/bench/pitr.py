"""``bench pitr``: WAL push throughput and point-in-time restore time, each beside its raw limit.

On a stack whose PostgreSQL archives into its spool (``archive_timeout`` 60 s):

- an auth database of about ``size_mb`` is seeded; the WAL segments that this produced are the
  bench's segments;
- **push**, ``repeat`` times: a pass of the pusher (:func:`~resilience.backup.wal.push_once`:
  ``barman-cloud-wal-archive``'s uploader in one process for both regions,
  ``RESILIENCE_WAL_PUSH_PROCESSES`` uploads at once per region, gzip (each segment compressed
  once for both), SSE, both regions in parallel) over a copy of those segments, beside
  **raw push**: one ``put_object`` of the same bytes per segment and region (the two regions in
  parallel too); segments per second and the ratio;
- **restore**: a base backup, then ten minutes of the service's traffic as WAL (6,000 upserts
  in batches of 100, a segment switch every 600 as ``archive_timeout = 60`` would make), pushed;
  ``repeat`` times :func:`~resilience.backup.pitr.pitr` to the end of the archive (restore,
  replay, promote, every company's digest), beside **raw restore**: ``get_object`` of every
  object of that base backup and of the WAL it needs.

Ratios are medians over medians (and minimums over minimums). Targets (issue 29): the push at
least :data:`RATE_TARGET_FACTOR` times :data:`BASELINE_SEGMENTS_PER_S` (one process per segment
and region, one after another) and within :data:`PUSH_RATIO_TARGET` of the raw push.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from resilience.authstate import pgraw
from resilience.authstate.pgconn import connect
from resilience.backup.barman import Archive, archives, list_backups
from resilience.backup.base import take_base_backup, wal_objects
from resilience.backup.pitr import pitr, stop_restored
from resilience.backup.wal import WalSpool, push_once
from resilience.config import Settings
from resilience.drill.bench import measure
from resilience.drill.bench.backup import seed
from resilience.infra.s3 import RegionStore, regions_from_settings
from resilience.infra.waiting import wait_until

Progress = Callable[[str], None]
TRAFFIC_UPSERTS = 6000  # ten minutes of the stand-in's steady rate (10 per second)
TRAFFIC_SWITCHES = 10  # archive_timeout = 60 s over ten minutes
#: The push rate before parallel uploads (segments per second to both regions, issue 29).
BASELINE_SEGMENTS_PER_S = 0.26
RATE_TARGET_FACTOR = 4.0
PUSH_RATIO_TARGET = 2.0


def _switch_and_wait(admin_dsn: str, spool: WalSpool) -> None:
    with connect(admin_dsn) as conn:
        row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
        conn.commit()
    name = str(row[0]) if row else ""
    wait_until(lambda: name in spool.files(), 60, f"WAL segment {name} in the spool")


def _raw_push(stores: list[RegionStore], files: list[Path], tag: str) -> None:
    def one(store: RegionStore) -> None:
        for path in files:
            store.client.put_object(
                Bucket=store.bucket, Key=f"raw/{tag}/{path.name}", Body=path.read_bytes()
            )

    with ThreadPoolExecutor(max_workers=len(stores)) as pool:
        list(pool.map(one, stores))


def _traffic(admin_dsn: str, spool: WalSpool) -> str:
    company = f"benchpitr_{secrets.token_hex(4)}"
    per_switch = TRAFFIC_UPSERTS // TRAFFIC_SWITCHES
    with connect(admin_dsn) as conn:
        for n in range(0, TRAFFIC_UPSERTS, 100):
            rows = [
                (
                    company,
                    "session",
                    f"{(n + i) % 700}.0",
                    json.dumps({"n": n + i, "pad": "x" * 200}),
                )
                for i in range(100)
            ]
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value) "
                    "VALUES (%s, %s, %s, %s::jsonb) ON CONFLICT (company_id, key_type, key_id) "
                    "DO UPDATE SET value = EXCLUDED.value",
                    rows,
                )
            conn.commit()
            if (n + 100) % per_switch == 0:
                _switch_and_wait(admin_dsn, spool)
    return company


def _timed_push(settings: Settings, spool: Path, prefix: str) -> float:
    copy = settings.model_copy(update={"wal_spool_dir": spool, "pitr_prefix": prefix})
    began = time.perf_counter()
    push_once(copy)
    return time.perf_counter() - began


def _timed_raw_push(stores: list[RegionStore], files: list[Path], tag: str) -> float:
    began = time.perf_counter()
    _raw_push(stores, files, tag)
    return time.perf_counter() - began


def _timed_get(store: RegionStore, keys: list[str]) -> float:
    began = time.perf_counter()
    for key in keys:
        store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read()
    return time.perf_counter() - began


def bench_pitr(
    settings: Settings,
    admin_dsn: str,
    *,
    size_mb: float = 50.0,
    repeat: int = 3,
    progress: Progress | None = None,
) -> dict[str, Any]:
    say = progress or (lambda _m: None)
    stores = regions_from_settings(settings)
    spool = WalSpool(settings.wal_spool_dir)
    companies, size = seed(admin_dsn, size_mb, say)
    _switch_and_wait(admin_dsn, spool)
    times: dict[str, list[float]] = {"push": [], "raw_push": [], "restore": [], "raw_restore": []}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-pitr-") as tmp:
            segments = [spool.dir / n for n in spool.files() if len(n) == 24]
            seg_bytes = sum(p.stat().st_size for p in segments)
            say(f"{len(segments)} WAL segments ({seg_bytes / 1024 / 1024:.0f} MB) from seeding")
            _push_rounds(settings, stores, segments, Path(tmp), repeat, times, say)
            # the restore: a base backup, ten minutes of traffic as WAL, then to its end
            base_name = _base_then_traffic(settings, admin_dsn, spool, companies, say)
            archive, keys, wal_count = _restore_sources(settings, stores, base_name)
            _restore_rounds(settings, archive, keys, repeat, times, say)
    finally:
        with connect(admin_dsn) as conn:
            for company in companies:
                pgraw.delete_company(conn, company)
    measured = {"segments": len(segments), "segment_bytes": seg_bytes, "wal_count": wal_count}
    return _result(settings, stores, size, repeat, measured, times)


def _push_rounds(
    settings: Settings,
    stores: list[RegionStore],
    segments: list[Path],
    work: Path,
    repeat: int,
    times: dict[str, list[float]],
    say: Progress,
) -> None:
    """`repeat` times the pusher and the raw push over a copy of the segments, alternating."""
    for n in range(repeat):
        for name in ("push", "raw_push") if n % 2 == 0 else ("raw_push", "push"):
            copy = work / f"spool-{n}"
            copy.mkdir(exist_ok=True)
            for path in segments:
                shutil.copyfile(path, copy / path.name)
            files = sorted(copy.iterdir())
            if name == "push":
                took = _timed_push(settings, copy, f"bench{n}")
            else:
                took = _timed_raw_push(stores, files, str(n))
            shutil.rmtree(copy, ignore_errors=True)
            times[name].append(took)
            say(f"{name} {n + 1}/{repeat}: {took:.2f} s")


def _base_then_traffic(
    settings: Settings, admin_dsn: str, spool: WalSpool, companies: list[str], say: Progress
) -> str:
    """A base backup, then the traffic (its company added to `companies`, to be deleted),
    pushed; the base backup's name."""
    push_once(settings)
    base = take_base_backup(settings)
    say(f"base backup in {base.duration_s:.1f} s")
    companies.append(_traffic(admin_dsn, spool))
    push_once(settings)
    return base.name


def _restore_sources(
    settings: Settings, stores: list[RegionStore], base_name: str
) -> tuple[Archive, list[str], int]:
    """The last region's archive, the keys of every object of the base backup and of the WAL
    from its first segment, and how many WAL segments those are."""
    archive = archives(settings, stores)[-1]
    backup = [b for b in list_backups(settings, archive) if b.get("backup_name") == base_name]
    begin_wal = str(backup[-1]["begin_wal"]) if backup else ""
    base_keys = [
        k
        for k, _s, _m in archive.store.objects(
            f"{archive.key_prefix}base/{backup[-1]['backup_id']}/" if backup else "none/"
        )
    ]
    wal_keys = [
        k
        for k, _s, _m in archive.store.objects(archive.key_prefix + "wals/")
        if k.rsplit("/", 1)[-1][:24] >= begin_wal
    ]
    wal_count = len([n for n in wal_objects(archive) if len(n) == 24 and n >= begin_wal])
    return archive, [*base_keys, *wal_keys], wal_count


def _restore_rounds(
    settings: Settings,
    archive: Archive,
    keys: list[str],
    repeat: int,
    times: dict[str, list[float]],
    say: Progress,
) -> None:
    """`repeat` times a PITR to the end of the archive and the raw restore, alternating."""
    for n in range(repeat):
        for name in ("restore", "raw_restore") if n % 2 == 0 else ("raw_restore", "restore"):
            if name == "restore":
                target = Path(tempfile.gettempdir()) / f"bench-pitr-{secrets.token_hex(4)}"
                began = time.perf_counter()
                try:
                    pitr(settings, at=None, region=archive.name, target_dir=target, yes=True)
                    took = time.perf_counter() - began
                finally:
                    stop_restored(settings, target)
                    shutil.rmtree(target, ignore_errors=True)
            else:
                took = _timed_get(archive.store, keys)
            times[name].append(took)
            say(f"{name} {n + 1}/{repeat}: {took:.2f} s")


def _result(
    settings: Settings,
    stores: list[RegionStore],
    size: int,
    repeat: int,
    measured: dict[str, int],
    times: dict[str, list[float]],
) -> dict[str, Any]:
    count = measured["segments"]
    rate = round(count / measure.stats(times["push"])["median"] if count else 0.0, 3)
    push_ratio = measure.ratio(times["push"], times["raw_push"])
    return {
        "bench": "pitr",
        "database_bytes": size,
        "repeat": repeat,
        "regions": [s.name for s in stores],
        "segments": count,
        "segment_bytes": measured["segment_bytes"],
        "push_processes_per_region": settings.wal_push_processes,
        "push": measure.stats(times["push"]),
        "raw_push": measure.stats(times["raw_push"]),
        "push_segments_per_s": round(count / min(times["push"]) if count else 0.0, 3),
        "push_segments_per_s_median": rate,
        "raw_push_segments_per_s": round(count / min(times["raw_push"]) if count else 0.0, 3),
        "push_ratio": push_ratio,
        "push_ratio_min": measure.ratio(times["push"], times["raw_push"], min),
        "restore_wal_segments": measured["wal_count"],
        "restore": measure.stats(times["restore"]),
        "raw_restore": measure.stats(times["raw_restore"]),
        "restore_ratio": measure.ratio(times["restore"], times["raw_restore"]),
        "restore_ratio_min": measure.ratio(times["restore"], times["raw_restore"], min),
        "targets": {
            "push_segments_per_s_min": round(BASELINE_SEGMENTS_PER_S * RATE_TARGET_FACTOR, 3),
            "push_segments_per_s_median": rate,
            "push_speedup_over_baseline": round(rate / BASELINE_SEGMENTS_PER_S, 2),
            "push_ratio_max": PUSH_RATIO_TARGET,
            "push_ratio": push_ratio,
            "met": push_ratio is not None
            and rate >= BASELINE_SEGMENTS_PER_S * RATE_TARGET_FACTOR
            and push_ratio <= PUSH_RATIO_TARGET,
        },
        "raw_definition": (
            "raw push: one put_object per segment and region of the same uncompressed bytes, "
            "the regions in parallel; raw restore: get_object of every object of the base "
            "backup and of the WAL from its first segment, one region"
        ),
    }
