"""One emergency switch as one object: what it acts on, how, where it reports, what it holds.

:func:`resilience.restore.commands.switch` makes a :class:`SwitchSession` once: the target, the
direction, explicit :class:`SwitchOptions` (``unattended`` is its own flag: nobody to confirm, so
the stop may begin while the database answers the preflight), one :class:`Events` sink (the
journal, the progress lines and the meters together) and the resources the run opens (the
database link kept from the preflight for the export, the PM2 session, a stop under way). The
preflight, the plan and the steps take the session instead of a dozen parameters each.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from resilience.authstate.pgconn import DbLink, connect
from resilience.errors import StackError
from resilience.infra.pm2 import Pending
from resilience.infra.progress import NO_METERS, Meters
from resilience.restore.facts import Direction
from resilience.restore.target import Target
from resilience.runs.journal import Journal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SwitchOptions:
    dry_run: bool = False  # preflight and plan only
    force: bool = False  # a snapshot over the age limit, local changes in the work tree
    #: nobody confirms (--yes): once every check that needs no database passed, the stop may
    #: begin while the database answers the preflight's statement
    unattended: bool = False


class Events:
    """Where a switch reports: its journal, the progress lines and the meters. A handler that
    fails (a closed terminal, a full disk) is logged and never breaks the run."""

    def __init__(
        self,
        journal: Journal,
        progress: Callable[[str], None] | None = None,
        meters: Meters = NO_METERS,
    ) -> None:
        self.journal = journal
        self.meters = meters
        self._progress = progress

    def event(self, kind: str, message: str, **data: Any) -> None:
        try:
            self.journal.event(kind, message, **data)
        except Exception as exc:  # the run goes on; the log says what was not journaled
            log.warning("journal event %s not recorded: %s", kind, exc)

    def say(self, message: str) -> None:
        if self._progress is None:
            return
        try:
            self._progress(message)
        except Exception as exc:
            log.warning("progress line not shown: %s", exc)


class SwitchSession:
    """One switch (module text). Use :meth:`opened` around the run: it connects PM2 once and,
    to files, opens the database link the preflight and the export share."""

    def __init__(
        self,
        target: Target,
        direction: Direction,
        options: SwitchOptions,
        events: Events,
        confirm: Callable[[Any], bool] | None = None,
    ) -> None:
        self.target = target
        self.direction = direction
        self.options = options
        self.events = events
        #: asks the operator (None: unattended, or nobody to ask)
        self.confirm = confirm
        self.settings = target.settings
        #: to files: the preflight's connection, kept for the export (round trips counted)
        self.link: DbLink | None = None
        #: a stop of the service under way (begun by the preflight, or overlapped by a step)
        self.stopping: Pending | None = None

    @property
    def journal(self) -> Journal:
        return self.events.journal

    @contextlib.contextmanager
    def opened(self) -> Iterator[SwitchSession]:
        self.journal.register_secret(self.target.service_dsn)
        with self.target.pm2_connected():
            if self.direction != "to-files":
                yield self
                return
            link = DbLink(self.target.service_dsn, timeout=self.settings.db_connect_timeout)
            self.link = link
            try:
                yield self
            finally:
                self.link = None
                link.close()
                self.events.event(
                    "round-trips",
                    f"{link.round_trips} round trip(s) to PostgreSQL over {link.connects} "
                    "connection(s)",
                    db_round_trips=link.round_trips,
                    connections=link.connects,
                )

    @property
    def round_trips(self) -> int | None:
        return None if self.link is None else self.link.round_trips

    def connect(self) -> Any:
        """A connection of its own (the import, an undo), not the preflight's link."""
        return connect(self.target.service_dsn, timeout=self.settings.db_connect_timeout)

    # --- the service ---------------------------------------------------------------------------
    @property
    def early_stop(self) -> bool:
        """Whether the preflight may begin the stop: unattended, a live database to ask."""
        return self.options.unattended and not self.options.dry_run and self.link is not None

    def begin_stop(self) -> None:
        self.stopping = self.target.pm2.begin("stop", self.settings.pm2_app)

    def wait_stopped(self) -> float | None:
        """Wait for a stop under way; how long it took from its start (None: none was)."""
        call, self.stopping = self.stopping, None
        if call is None:
            return None
        call.wait()
        return time.monotonic() - call.started

    def restart_service(self) -> None:
        """Restart the service; a stop still under way ends first (its failure does not
        matter: the restart is what counts)."""
        call, self.stopping = self.stopping, None
        if call is not None:
            with contextlib.suppress(StackError):
                call.wait()
        self.target.pm2.restart(self.settings.pm2_app)

    def start_again(self) -> str:
        """Start the service the preflight had begun to stop, before its failure is raised;
        what was done, as a note for the refusal."""
        app = self.settings.pm2_app
        try:
            self.restart_service()
        except StackError as exc:
            self.events.event(
                "service-not-started-again", f"PM2 app {app} did not start again: {exc}"
            )
            return (
                f"; the service, stopped meanwhile, did not start again ({exc}): pm2 restart {app}"
            )
        self.events.event(
            "service-started-again", f"PM2 app {app} started again after the preflight"
        )
        return "; the service, stopped meanwhile, was started again"
