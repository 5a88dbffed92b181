"""Peak memory of one ``export_all`` in a process of its own (``bench restore``'s tenants case).

A process's peak RSS only grows, so phases measured in one process cannot be told apart: the
bench runs this module once for one company and once for every company, each in a fresh Python,
and compares the two peaks (bounded by the largest company, not the total, when rows are
streamed). The DSN comes from the environment (``RESILIENCE_BENCH_DSN``), never the command line.

Usage: ``python -m resilience.drill.bench.rss_probe ROOT WORKERS COMPANY [COMPANY ...]``; prints
``{"peak_rss_mb": ..., "companies": n, "failures": n}``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from resilience.authstate.pgconn import connect
from resilience.authstate.pgstore import PgAuthStore
from resilience.errors import VerificationError
from resilience.files.batch import export_all
from resilience.files.parallel import StorePool

DSN_VARIABLE = "RESILIENCE_BENCH_DSN"


def measure(dsn: str, root: Path, workers: int, companies: list[str]) -> dict[str, Any]:
    """Run the probe in a child Python and return its answer; :class:`VerificationError`
    when it fails."""
    env = {**os.environ, DSN_VARIABLE: dsn}
    done = subprocess.run(
        [sys.executable, "-m", __name__, str(root), str(workers), *companies],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise VerificationError(f"bench: the memory probe failed ({last[:200]})")
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def _peak_kib() -> int:
    """This process's peak RSS in KiB: ``VmHWM``, the high-water mark of its own memory since
    the exec. Not ``ru_maxrss``: Linux carries that across ``execve`` from the forking parent
    (a bench process of 768 MB made every probe report 768 MB)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def main(argv: list[str]) -> int:
    root, workers, companies = Path(argv[0]), int(argv[1]), argv[2:]
    dsn = os.environ[DSN_VARIABLE]
    with connect(dsn, autocommit=True) as conn, StorePool(dsn, workers=workers, timeout=30) as pool:
        batch = export_all(
            PgAuthStore(conn),
            root,
            companies,
            source="bench",
            workers=workers,
            stores=pool.store,
        )
    peak_kib = _peak_kib()
    answer = {
        "peak_rss_mb": round(peak_kib / 1024, 1),
        "companies": len(batch.results),
        "failures": len(batch.failures),
    }
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0 if batch.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
