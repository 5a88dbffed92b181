"""Entry point of the stand-in image (`docker/standin.Dockerfile`), one of three commands:

- ``serve`` (default): write the stand-in's ``.env`` into its working directory from the
  container's environment, then ``exec pm2-runtime`` on ``standin.ecosystem.config.json`` (the
  stand-in as app ``baileys-whatsapp-service``, and a socat forwarder that makes its HTTP
  endpoints, bound to 127.0.0.1 by the stand-in, reachable from outside the container);
- ``seed``: insert a generated company (``COMPANY_ID``, ``SEED_KEYS`` keys) through
  ``SEED_DSN`` unless it already has creds, as `stack.up` does for the embedded stack;
- ``health``: exit 0 iff the stand-in's ``/health`` answers 200 (the compose healthcheck).

The stand-in reads ``DATABASE_URL`` and most of its settings from ``.env`` only (see
:mod:`resilience.drill.standin.service`), hence the file. The compose environment is the source
of truth: ``.env`` is rewritten on every start.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

#: What the stand-in reads from ``.env`` (resilience.drill.standin.service.read_config).
ENV_NAMES = (
    "USE_REPOSITORY_PATTERN",
    "USE_DATABASE_AUTH_STATE",
    "USE_LEGACY_SUPABASE",
    "DATABASE_URL",
    "COMPANY_ID",
    "AUTH_DIR",
    "PORT",
    "WRITE_INTERVAL_MS",
    "WRITE_SEED",
    "STANDIN_WRITES",
    "SHUTDOWN_GRACE_MS",
    "DB_CONNECT_TIMEOUT_MS",
    "DB_POOL_SIZE",
    "DB_APPLICATION_NAME",
    "STANDIN_READERS",
    "READ_INTERVAL_MS",
    "SLOW_QUERY_MS",
    "CREDS_CACHE_DIR",
    "CREDS_CACHE_TTL_S",
    "CACHE_RELOAD_INTERVAL_MS",
    "CREDS_SAVE_INTERVAL_MS",
    "PRE_KEY_CREDS_SAVE",
    "DB_BUFFER_FORM",
    "SENTRY_DSN",
)
HERE = Path(__file__).resolve().parent
ECOSYSTEM = HERE / "standin.ecosystem.config.json"
DEFAULT_WORKDIR = "/srv/service"
DEFAULT_SEED_KEYS = 1313


def env_text(environ: Mapping[str, str]) -> str:
    """The ``.env`` lines for the names of :data:`ENV_NAMES` set in ``environ`` (single-quoted:
    python-dotenv takes such a value literally)."""
    lines = []
    for name in ENV_NAMES:
        value = environ.get(name)
        if value is None:
            continue
        if "'" in value or "\n" in value or "\\" in value:
            raise SystemExit(f"entrypoint: {name} must not contain quotes, backslashes or newlines")
        lines.append(f"{name}='{value}'\n")
    return "".join(lines)


def write_env(workdir: Path, environ: Mapping[str, str]) -> Path:
    """Write ``workdir/.env`` (mode 0600) from ``environ``; return its path."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / ".env"
    tmp = workdir / ".env.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(env_text(environ))
    os.replace(tmp, path)
    return path


def serve() -> None:
    write_env(Path(os.environ.get("STANDIN_WORKDIR", DEFAULT_WORKDIR)), os.environ)
    os.execvp("pm2-runtime", ["pm2-runtime", "start", str(ECOSYSTEM)])


def seed() -> None:
    from resilience.authstate.dataset import generate
    from resilience.authstate.pgstore import PgAuthStore, connect

    dsn = os.environ.get("SEED_DSN") or sys.exit("entrypoint: SEED_DSN is not set")
    company = os.environ.get("COMPANY_ID") or sys.exit("entrypoint: COMPANY_ID is not set")
    keys = int(os.environ.get("SEED_KEYS") or DEFAULT_SEED_KEYS)
    with connect(dsn) as conn:
        store = PgAuthStore(conn)
        if store.load_creds(company) is not None:
            sys.stderr.write(f"entrypoint: company {company} already has creds; not seeded\n")
            return
        data = generate(company, keys)
        store.insert_raw(company, data.creds, data.rows())
    sys.stderr.write(f"entrypoint: seeded company {company} with {keys} keys\n")


def health() -> None:
    port = os.environ.get("PORT") or sys.exit("entrypoint: PORT is not set")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as response:
            ok = response.status == 200
    except (urllib.error.URLError, OSError):
        ok = False
    sys.exit(0 if ok else 1)


COMMANDS = {"serve": serve, "seed": seed, "health": health}


def main(argv: list[str]) -> None:
    command = argv[1] if len(argv) > 1 else "serve"
    if command not in COMMANDS:
        sys.exit(f"entrypoint: unknown command {command!r} (one of {', '.join(COMMANDS)})")
    COMMANDS[command]()


if __name__ == "__main__":
    main(sys.argv)
