"""What an emergency switch acts on, resolved from the operator's settings alone.

The service's DSN, its PM2 app (and the PM2 running it), its `.env`, its Baileys directory and
the company: nothing about test stacks. The embedded stack is just one more deployment: its
`stack.up` writes a settings file that names these like any production deployment would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from resilience.authstate.naming import company_dir_name
from resilience.config import Settings, service_dsn, validate_company_id
from resilience.errors import ConfigError, ResilienceError
from resilience.infra.pm2 import Pm2, pm2_for
from resilience.service import envfile

STATE_FILE = ".restore-state.json"


@dataclass
class Target:
    """Everything a switch acts on. PM2 is looked up only when a step needs it."""

    settings: Settings
    service_dsn: str = field(repr=False)  # a secret
    company_id: str
    _pm2: Pm2 | None = field(default=None, repr=False)

    @property
    def pm2(self) -> Pm2:
        if self._pm2 is None:
            self._pm2 = pm2_for(self.settings)
        return self._pm2

    @contextlib.contextmanager
    def pm2_connected(self) -> Iterator[None]:
        """PM2 commands through one connection to its daemon for the length of a run
        (:meth:`Pm2.connected`), connecting from now on; PM2 not found: nothing changes here
        (the preflight says what is missing)."""
        try:
            pm2 = self.pm2
        except ConfigError:
            yield
            return
        with pm2.connected() as connected:
            self._pm2 = connected
            try:
                yield
            finally:
                self._pm2 = pm2

    @property
    def env_file(self) -> Path:
        path = self.settings.env_path
        if path is None:
            raise ConfigError("set RESILIENCE_SERVICE_DIR or RESILIENCE_SERVICE_ENV (the .env)")
        return path

    @property
    def auth_root(self) -> Path:
        path = self.settings.auth_root
        if path is None:
            raise ConfigError("set RESILIENCE_SERVICE_DIR or RESILIENCE_AUTH_DIR")
        return path

    @property
    def company_dir(self) -> Path:
        return self.auth_root / company_dir_name(self.company_id)

    @property
    def state_file(self) -> Path:
        return self.auth_root / STATE_FILE


def same_directory(a: Path, b: Path) -> bool:
    """Whether two paths name one directory (symlinks and relative paths resolved)."""
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def file_mode_evidence(settings: Settings) -> str | None:
    """Why the service is taken to run in file mode on its auth directory (a switch state in
    that directory, or the file-mode flags in its .env), or None."""
    root = settings.auth_root
    if root is not None and (root / STATE_FILE).exists():
        return f"switch state {root / STATE_FILE}"
    env = settings.env_path
    if env is not None and env.is_file():
        try:
            if envfile.current_mode(env) == "file":
                return f"the file-mode flags in {env}"
        except ResilienceError:
            return None
    return None


def make_target(settings: Settings, company_id: str | None = None) -> Target:
    """The target the settings describe; `company_id` overrides RESILIENCE_COMPANY_ID."""
    company = validate_company_id(settings.company_id if company_id is None else company_id)
    return Target(settings, service_dsn(settings), company)
