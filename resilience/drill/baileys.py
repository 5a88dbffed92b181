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
from pathlib import Path
from typing import Any

import httpx

from resilience.authstate.codec import parse
from resilience.authstate.fingerprint import KeyFingerprint
from resilience.drill.standin.deploy import (
    FALLBACK_TAG,
    DeployedService,
    prepare_workdir,
    service_env_lines,
    start_service,
)
from resilience.drill.standin.writelog import WriteEntry
from resilience.errors import DataError, StackError
from resilience.infra.pm2 import Pm2
from resilience.infra.waiting import wait_until

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
    port = prepare_workdir(workdir, tag)
    lines = service_env_lines(service_dsn, company_id, port, write_interval_ms)
    program = {"script": str(script), "interpreter": "node", "kill_timeout": 10000}
    return start_service(pm2, workdir, app, lines, program, port, company_id, tag)


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
            fingerprint = (
                None if value is None else KeyFingerprint.of(data["type"], data["id"], value)
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: line {number} is malformed: {exc}") from None
        entries.append(WriteEntry.from_json({**data, "fingerprint": fingerprint}))
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
