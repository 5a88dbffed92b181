"""Where the files of a switch to files come from: one strategy per source, chosen once.

- :class:`LiveExport`: PostgreSQL answers: export the company (the preflight's connection).
- :class:`KeptDirectory`: the service already runs in file mode on its directory (a re-run after
  the env step): the directory stays as it is, since the service may have written to it.
- :class:`SnapshotCopy`: PostgreSQL unreachable: the newest snapshot the preflight found.
- :class:`MirrorCopy`: PostgreSQL unreachable and the live mirror confirmed a fresher position.

Each says what it will do (the plan line the operator confirms) and installs (returning
:class:`Installed`: the digest the service must load and the way back's merge base); the one
that does more than the directory undoes it (:meth:`MirrorCopy.undo`: the mirror it stopped).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from resilience.authstate.fingerprint import creds_fingerprint, next_pre_key_id
from resilience.authstate.pgstore import PgAuthStore
from resilience.errors import DataError, InputError, VerificationError
from resilience.files import export as export_mod
from resilience.files import importer, install, snapshot
from resilience.infra.redact import redact_dsn
from resilience.mirror.fallback import mirror_fallback, stop_mirror_process
from resilience.restore.facts import ToFilesFacts
from resilience.restore.refusals import over_age_limit
from resilience.restore.session import SwitchSession
from resilience.restore.state import SwitchState


@dataclass
class Installed:
    """What a source put in place."""

    digest: str  # what the service must report loading
    creds_print: str | None
    fingerprints: dict[str, str] = field(repr=False)  # file name -> key fingerprint
    next_pre_key_id: int | None
    details: dict[str, Any]  # for the step's journal
    #: the merge base is recorded from this copy (a kept directory keeps the first run's)
    new_base: bool = True
    #: file name -> hash of the plain files' bytes (an export's; the way back reads a file
    #: with those bytes as installed without decoding it: resilience.files.wayback)
    file_hashes: dict[str, str] = field(default_factory=dict, repr=False)
    #: file name -> [type, id, version] of the rows an export read (resilience.files.untouched)
    row_versions: dict[str, list[str]] | None = field(default=None, repr=False)

    @classmethod
    def of_export(cls, result: export_mod.ExportResult, **details: Any) -> Installed:
        return cls(
            result.digest,
            result.creds_print,
            result.fingerprints,
            result.next_pre_key_id,
            {**result.to_dict(), **details},
            file_hashes=result.file_hashes,
            row_versions=result.row_versions,
        )


class Source(Protocol):
    name: str  # the step's name: export, keep-directory, install-snapshot or install-mirror

    def describe(self) -> str: ...

    def install(self, set_aside: list[Path]) -> Installed: ...


class LiveExport:
    name = "export"

    def __init__(self, session: SwitchSession, facts: ToFilesFacts) -> None:
        self.session, self.facts = session, facts

    def describe(self) -> str:
        t = self.session.target
        return f"export company {t.company_id} to {t.company_dir}"

    def install(self, set_aside: list[Path]) -> Installed:
        s = self.session
        link = s.link
        if link is None:  # not through run_switch: a connection of its own
            with s.connect() as conn:
                return self._export(conn, set_aside)
        return self._export(link.conn, set_aside)

    def _export(self, conn: Any, set_aside: list[Path]) -> Installed:
        t = self.session.target
        result = export_mod.export_company(
            PgAuthStore(conn),
            t.auth_root,
            t.company_id,
            source=redact_dsn(t.service_dsn),
            meters=self.session.events.meters,
            set_aside=set_aside,
            expected_rows=self.facts.key_count,  # the preflight counted: no round trip
            versions=True,
        )
        return Installed.of_export(result)


class KeptDirectory:
    name = "keep-directory"

    def __init__(self, session: SwitchSession) -> None:
        self.session = session

    def describe(self) -> str:
        t = self.session.target
        return f"the service is already in file mode: keep {t.company_dir} as it is"

    def install(self, set_aside: list[Path]) -> Installed:
        t = self.session.target
        # the service is stopped, so the directory's digest is stable
        state = importer.read_directory(t.company_dir, t.company_id)
        digest = state.digest().digest
        return Installed(
            digest,
            creds_fingerprint(state.creds),
            state.fingerprints(),
            next_pre_key_id(state.creds),
            {"kept": str(t.company_dir), "digest": digest},
            # the first run recorded what it installed; a directory switched by hand has no
            # record: what is there now is the base (writes made before count as PostgreSQL's)
            new_base=False,
        )


class SnapshotCopy:
    name = "install-snapshot"

    def __init__(self, session: SwitchSession, facts: ToFilesFacts) -> None:
        self.session, self.facts = session, facts

    def describe(self) -> str:
        return (
            "PostgreSQL unreachable: install the newest snapshot of "
            f"{self.session.target.company_id} (age {self.facts.snapshot_age_s} s = data-loss "
            "window)"
        )

    def install(self, set_aside: list[Path]) -> Installed:
        t = self.session.target
        # the snapshot the preflight found and judged (its age against --force): the same one
        if self.facts.snapshot_path is None:
            raise InputError(f"the preflight found no snapshot of company {t.company_id}")
        try:
            found = snapshot.load_snapshot(Path(self.facts.snapshot_path))
        except DataError as exc:
            raise InputError(f"the snapshot the preflight found is gone: {exc}") from None
        age = found.age_s()
        result = install.install_snapshot(found, t.company_id, t.auth_root, set_aside=set_aside)
        return Installed.of_export(
            result,
            snapshot=str(found.path),
            snapshot_age_s=round(age, 1),
            snapshot_taken_at=found.taken_at.isoformat(),
        )


class MirrorCopy:
    """The mirror's copy, when fresher than the newest snapshot (the preflight decided): the
    mirror process is stopped first, then its files are checked against its manifest and its
    recorded position and installed as a snapshot is."""

    name = "install-mirror"

    def __init__(self, session: SwitchSession, facts: ToFilesFacts) -> None:
        self.session, self.facts = session, facts
        self.stopped = False  # the mirror process was stopped here

    def describe(self) -> str:
        f = self.facts
        return (
            "PostgreSQL unreachable: stop the mirror, check and install its copy of "
            f"{self.session.target.company_id} (mirror lag {f.mirror_loss_window_s} s = "
            f"data-loss window; newest snapshot {f.snapshot_age_s} s old)"
        )

    def install(self, set_aside: list[Path]) -> Installed:
        t, s = self.session.target, self.session.settings
        stopped = stop_mirror_process(s, t.pm2)
        self.stopped = stopped == "stopped"
        found = mirror_fallback(s, t.company_id)  # read again: the position it stopped at
        if found is None:
            raise InputError(f"the mirror holds no confirmed copy of {t.company_id} any more")
        age = found.age_s()
        if over_age_limit(age, s, self.session.options):
            raise InputError(f"the mirror's position is {age:.0f} s old: --force to use it")
        try:
            result = install.install_snapshot(
                found.as_snapshot(), t.company_id, t.auth_root, set_aside=set_aside
            )
        except VerificationError as exc:
            raise VerificationError(f"the mirror's copy does not check out: {exc}") from None
        newest = snapshot.newest_snapshot(s.snapshot_dir, t.company_id)
        return Installed.of_export(
            result,
            mirror_process=stopped,
            **found.to_dict(),
            snapshot_age_s=round(newest.age_s(), 1) if newest else None,
            snapshot_taken_at=newest.taken_at.isoformat() if newest else None,
        )

    def undo(self) -> None:
        if self.stopped:
            self.session.target.pm2.restart(self.session.settings.mirror_app)


def choose_source(session: SwitchSession, facts: ToFilesFacts, state: SwitchState) -> Source:
    """The source, once, from the preflight's facts and the recorded state."""
    t = session.target
    if (
        facts.env_mode == "file"
        and t.company_dir.is_dir()
        and state.company_id in (None, t.company_id)
    ):
        return KeptDirectory(session)
    if facts.db_reachable:
        return LiveExport(session, facts)
    if facts.mirror_dir is not None:
        return MirrorCopy(session, facts)
    return SnapshotCopy(session, facts)
