"""The drill service on real Baileys code (``tools/baileys-service/service.mjs``), deployed like
the stand-in: a git working directory with the fallback tag, a `.env` with the three mode flags,
a PM2 app. It is not ours in what matters: Baileys' own ``useMultiFileAuthState`` in file mode,
an auth state through Baileys' ``BufferJSON`` in PostgreSQL mode, creds saved as Baileys saves
them (``nextPreKeyId`` advanced on every pre-key upload), a health without ``loaded_digest``
that says ``"files"`` for file mode. Its write log holds each acknowledged value (BufferJSON):
fingerprints are taken here, by the project's codec, as for every other piece of evidence.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx

from resilience.authstate.codec import parse
from resilience.authstate.fingerprint import KeyFingerprint
from resilience.drill.standin.deploy import FALLBACK_TAG, DeployedService, _init_repo
from resilience.drill.standin.writelog import WriteEntry
from resilience.errors import DataError, StackError
from resilience.infra.pm2 import Pm2
from resilience.infra.processes import free_port
from resilience.infra.waiting import wait_until
from resilience.service.modes import POSTGRES_MODE_FLAGS

SERVICE_DIR = "baileys-service"  # under the tools dir, installed by ./run
WRITELOG = "writes.jsonl"


def service_script(tools_dir: Path) -> Path:
    script = Path(tools_dir).absolute() / SERVICE_DIR / "service.mjs"
    if not (script.parent / "node_modules" / "@whiskeysockets" / "baileys").is_dir():
        raise StackError(
            f"the Baileys drill service is not installed in {script.parent}: run ./run once"
        )
    return script


def deploy_baileys(
    pm2: Pm2,
    workdir: Path,
    tools_dir: Path,
    *,
    service_dsn: str,
    company_id: str,
    app: str,
    write_interval_ms: int = 100,
    tag: str = FALLBACK_TAG,
) -> DeployedService:
    """Working dir, `.env` (PostgreSQL mode) and PM2 app of the Baileys service, started."""
    script = service_script(tools_dir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / ".git").exists():
        _init_repo(workdir, tag)
    port = free_port()
    lines = [
        "# a Baileys service (drill)",
        *(f"{k}={v}" for k, v in POSTGRES_MODE_FLAGS.items()),
        f"DATABASE_URL={service_dsn}",
        f"COMPANY_ID={company_id}",
        "AUTH_DIR=auth_info",
        f"PORT={port}",
        f"WRITE_INTERVAL_MS={write_interval_ms}",
    ]
    env_file = workdir / ".env"
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    ecosystem = workdir / "ecosystem.config.json"
    app_entry: dict[str, Any] = {
        "name": app,
        "script": str(script),
        "interpreter": "node",
        "cwd": str(workdir),
        "out_file": str(logs / "out.log"),
        "error_file": str(logs / "err.log"),
        "merge_logs": True,
        "autorestart": True,
        "kill_timeout": 10000,
    }
    ecosystem.write_text(json.dumps({"apps": [app_entry]}, indent=2))
    pm2.start(ecosystem)
    return DeployedService(
        app=app,
        workdir=workdir,
        env_file=env_file,
        auth_dir=workdir / "auth_info",
        health_url=f"http://127.0.0.1:{port}/health",
        company_id=company_id,
        fallback_tag=tag,
    )


def read_writes(path: Path) -> list[WriteEntry]:
    """The service's acknowledged writes as :class:`WriteEntry` (fingerprints by our codec)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    entries = []
    for number, line in enumerate(raw.split(b"\n")[:-1], start=1):  # a torn last line: not acked
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            value = None if data["value"] is None else parse(data["value"], where=data["id"])
            entries.append(
                WriteEntry(
                    seq=int(data["seq"]),
                    time=str(data["time"]),
                    mode=str(data["mode"]),
                    company=str(data["company"]),
                    type=str(data["type"]),
                    id=str(data["id"]),
                    deleted=bool(data["deleted"]),
                    fingerprint=None
                    if value is None
                    else KeyFingerprint.of(data["type"], data["id"], value),
                    pid=int(data["pid"]),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: line {number} is malformed: {exc}") from None
    return entries


def selfcheck(health_url: str) -> dict[str, Any]:
    """What real Baileys read back through the auth state in use: every key, and how many
    values held Buffers its reviver left as plain objects."""
    url = health_url.removesuffix("/health") + "/selfcheck"

    def read() -> dict[str, Any] | None:
        # a file caught half written by the service's own write (Baileys writes in place)
        # answers an error: read again
        body: dict[str, Any] = httpx.get(url, timeout=30).json()
        return body if "keys" in body else None

    return wait_until(read, 30, "the Baileys service's read-back of every key")
