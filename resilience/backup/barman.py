"""barman-cloud's commands, run as subprocesses against one region (never rewritten here).

Each region's archive lives at `s3://<bucket>/<RESILIENCE_PITR_PREFIX>` under the server name
`RESILIENCE_PITR_SERVER`: barman-cloud's own layout (`<server>/wals/...`, `<server>/base/...`).
Credentials go through the environment of the child (never its argv, which `ps` shows); every
line of its output that we pass on is redacted. A missing barman-cloud is a one-line
:class:`ConfigError`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resilience.config import Settings
from resilience.errors import ConfigError
from resilience.infra.commandline import installed_command
from resilience.infra.redact import Redactor
from resilience.infra.s3 import RegionStore, StorageError, s3_environment

#: barman's log prefix ("2026-12-01 14:43:20,241 [32536] "), dropped from messages
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d [\d:,.]+ \[\d+\] ")
#: Seconds one barman-cloud call may take before it counts as failed (a hanging region must not
#: hold the others; a base backup of this database takes seconds).
DEFAULT_TIMEOUT = 600.0


def find_command(name: str, settings: Settings) -> str:
    """The path of a barman-cloud command: RESILIENCE_BARMAN_BIN_DIR, else next to our Python,
    else PATH; ConfigError (one line) when barman-cloud is not installed."""
    candidates = []
    if settings.barman_bin_dir is not None:
        candidates.append(settings.barman_bin_dir / name)
    candidates.append(Path(sys.executable).parent / name)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which(name)
    if found:
        return found
    install = (
        "install the package with its extra barman: pipx install 'WHEEL[barman]'"
        if installed_command()
        else "run ./run, which installs barman[cloud]"
    )
    raise ConfigError(
        f"{name} not found: barman-cloud is missing from this environment "
        f"({install}; or set RESILIENCE_BARMAN_BIN_DIR)"
    )


@dataclass(frozen=True)
class Archive:
    """One region's barman-cloud archive: where, which server name, with which credentials."""

    store: RegionStore
    prefix: str
    server: str

    @property
    def name(self) -> str:
        return self.store.name

    @property
    def mark(self) -> str:
        """This archive's identity, a file name: region, bucket and prefix."""
        return f"{self.store.name}.{self.store.bucket}.{self.prefix}"

    @property
    def url(self) -> str:
        return f"s3://{self.store.bucket}/{self.prefix}"

    @property
    def key_prefix(self) -> str:
        """The S3 key prefix of this server's objects."""
        return f"{self.prefix}/{self.server}/"

    def cloud_args(self) -> list[str]:
        args = ["--cloud-provider", "aws-s3"]
        if self.store.endpoint_url:
            args += ["--endpoint-url", self.store.endpoint_url, "--addressing-style", "path"]
        return args

    def environment(self) -> dict[str, str]:
        """The child's environment: ours plus this region's credentials and region id."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(s3_environment())
        env["AWS_DEFAULT_REGION"] = self.store.region
        if self.store.access_key_id:
            env["AWS_ACCESS_KEY_ID"] = self.store.access_key_id
        if self.store.secret_access_key:
            env["AWS_SECRET_ACCESS_KEY"] = self.store.secret_access_key
        return env


def archives(settings: Settings, stores: Sequence[RegionStore]) -> list[Archive]:
    return [Archive(s, settings.pitr_prefix, settings.pitr_server) for s in stores]


@dataclass
class Completed:
    argv: list[str]
    stdout: str
    stderr: str
    seconds: float


def run(
    settings: Settings,
    archive: Archive,
    command: str,
    args: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Completed:
    """Run `command` (a barman-cloud-* name) for `archive`; StorageError naming the region and
    barman's last error line (redacted) when it fails."""
    import time

    argv = [find_command(command, settings), *args]
    redactor = Redactor(settings.secret_values())
    began = time.monotonic()
    try:
        done = subprocess.run(
            argv,
            env={**archive.environment(), **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise StorageError(
            f"region {archive.name} ({archive.store.bucket}): {what} took more than {timeout:.0f} s"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot run {command}: {exc.strerror or exc}") from None
    seconds = time.monotonic() - began
    if done.returncode != 0:
        raise StorageError(
            f"region {archive.name} ({archive.store.bucket}): {what} failed: "
            + redactor.text(last_error(done.stderr or done.stdout) or f"exit {done.returncode}")
        )
    return Completed(argv, done.stdout, done.stderr, seconds)


def last_error(output: str) -> str:
    """barman's most telling line: the last ERROR line, else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line or "error" in line.lower()]
    line = (errors or lines or [""])[-1]
    return _LOG_PREFIX.sub("", line)[:300]


def list_backups(settings: Settings, archive: Archive) -> list[dict[str, Any]]:
    """barman-cloud-backup-list --format json: the region's base backups, oldest first."""
    done = run(
        settings,
        archive,
        "barman-cloud-backup-list",
        [*archive.cloud_args(), "--format", "json", archive.url, archive.server],
        what="listing base backups",
        timeout=archive.store.remaining(120, "listing base backups"),
    )
    try:
        data = json.loads(done.stdout or "{}")
    except ValueError:
        raise StorageError(
            f"region {archive.name}: barman-cloud-backup-list printed no JSON"
        ) from None
    backups = data.get("backups_list", [])
    return sorted(
        (b for b in backups if isinstance(b, dict)), key=lambda b: str(b.get("backup_id"))
    )
