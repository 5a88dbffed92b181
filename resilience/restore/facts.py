"""What the preflight of each direction found: plain facts, no judgement and no I/O.

:mod:`.preflight` gathers them (the database, PM2, the .env, the work tree, the disk, the snapshot
or the mirror, the way back's merge preview); :mod:`.refusals` turns them into the problems that
refuse the switch. One dataclass per direction: :class:`ToFilesFacts` and :class:`ToPostgresFacts`
share only :class:`SwitchFacts` (the database, the service, the local directory). After the rules
ran, the verdict (``problems``, ``refusal``) and the plan are kept on the same object: it is what
the operator confirms, what the journal records and what ``--json`` prints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

Direction = Literal["to-files", "to-postgres"]


@dataclass(frozen=True)
class Failure:
    """A check that could not be made, and how it failed. ``kind``: ``data`` (a file that does
    not decode), ``outage``/``misconfigured``/``unknown`` (the database: see
    :attr:`SwitchFacts.db_verdict`) or ``other``."""

    kind: str
    message: str


@dataclass
class SwitchFacts:
    """What both directions gather."""

    direction: ClassVar[Direction]
    company_id: str
    # --- the database ----------------------------------------------------------------------------
    # "reachable" (it answered), "outage" (the only verdict that allows a snapshot),
    # "misconfigured" (the DSN is wrong: a typo is never read as an outage) or "unknown"
    db_verdict: str = "unknown"
    db_error: str | None = None
    #: a connection was made (a failure after it was the question's, said after the local checks)
    db_connected: bool = False
    key_count: int | None = None
    # --- the service -----------------------------------------------------------------------------
    service_company: str | None = None  # the company the service says it serves
    env_mode: str | None = None
    env_error: str | None = None  # the .env could not be read
    pm2_status: str | None = None
    pm2_out_log: str | None = None  # the app's log, watched after the restart
    pm2_error: str | None = None  # the PM2 app could not be found
    # --- the auth directory ----------------------------------------------------------------------
    state_error: str | None = None  # the switch state is unreadable
    company_dir: str | None = None
    company_dir_symlink: bool = False
    #: where the switch writes (the auth root, else its parent): its free space (None: neither
    #: exists) and whether it is writable
    disk_probe: str | None = None
    disk_free: int | None = None
    disk_writable: bool = False
    # --- the verdict (resilience.restore.refusals) and the plan ----------------------------------
    #: what kind of refusal the problems make: "input" (exit 2), "data" (a file that does not
    #: decode, exit 4) or "database" (unreachable on the way back, exit 6)
    refusal: str = "input"
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # said, but they do not block the run
    plan: list[str] = field(default_factory=list)

    @property
    def db_reachable(self) -> bool:
        return self.db_verdict == "reachable"

    def to_dict(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "db_reachable": self.db_reachable,
            **asdict(self),
        }


@dataclass
class ToFilesFacts(SwitchFacts):
    """The switch to files: the code (the fallback tag), room for the export, and when the
    database is down the copy that replaces it (the newest snapshot, or the mirror's fresher
    confirmed position)."""

    direction: ClassVar[Direction] = "to-files"
    #: a re-run in file mode: the directory the service runs on does not load
    files_failure: Failure | None = None
    # --- the code --------------------------------------------------------------------------------
    tag: str | None = None  # RESILIENCE_FALLBACK_TAG
    tag_commit: str | None = None
    current_ref: str | None = None
    dirty: list[str] = field(default_factory=list)
    code_error: str | None = None  # the tag or the work tree could not be checked
    # --- the export ------------------------------------------------------------------------------
    disk_needed: int | None = None
    # --- the copy, PostgreSQL unreachable --------------------------------------------------------
    snapshot_path: str | None = None
    snapshot_age_s: float | None = None
    # the live mirror (resilience.mirror), used instead of the snapshot when it is fresher
    mirror_dir: str | None = None
    mirror_confirmed_at: str | None = None
    mirror_loss_window_s: float | None = None
    #: the age of the copy the switch would install (the mirror's position or the snapshot),
    #: judged against RESILIENCE_SNAPSHOT_MAX_AGE
    copy_age_s: float | None = None


@dataclass
class ToPostgresFacts(SwitchFacts):
    """The way back: the directory to import (every name mapped back), the three-way merge's
    preview, and the ref the code returns to."""

    direction: ClassVar[Direction] = "to-postgres"
    directory_found: bool = False
    unmappable: list[str] = field(default_factory=list)
    #: what the switch to files installed (the merge base), and the merge's preview
    base_source: str | None = None
    merge: dict[str, Any] | None = None
    merge_failure: Failure | None = None
    #: the ref the switch to files left (recorded in the switch state), and the one checked out
    previous_ref: str | None = None
    current_ref: str | None = None


#: the facts of either direction
Preflight = ToFilesFacts | ToPostgresFacts
