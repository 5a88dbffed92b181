"""The switch's plan: one object per direction whose methods are its steps.

Built once from the preflight's facts (:mod:`.facts`) by :func:`plan_for`: the descriptions are
what the operator confirms, the steps what runs. A plan's attributes are the state its steps
share: what the switch recorded for the way back (:class:`~.state.SwitchState`), the digest the
service must load, the log watch set up at the restart. To files, the files come from one
source chosen once (:mod:`.sources`); the steps: stop the service, the source's install, the
code step (git tag), the env step (three flags), start, verify (:mod:`.verify`), and the
removal of the directory the new one replaced. Back: stop, the three-way import (or, on a
re-run, the database kept), the flags, the code, start, verify, and the state forgotten.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from resilience.authstate.pgstore import PgAuthStore
from resilience.authstate.view import view_of
from resilience.errors import ResilienceError
from resilience.files import export as export_mod
from resilience.files import importer
from resilience.files.merge import InstalledBase, base_path, record_installed, remove_base
from resilience.infra.progress import NO_METERS, Meters
from resilience.infra.redact import redact_dsn
from resilience.restore.facts import Preflight, SwitchFacts, ToFilesFacts, ToPostgresFacts
from resilience.restore.runner import Details, Step, UndoHalted
from resilience.restore.session import SwitchSession
from resilience.restore.sources import MirrorCopy, SnapshotCopy, Source, choose_source
from resilience.restore.state import SwitchState
from resilience.restore.verify import LogWatch, verify_service
from resilience.service import envfile, gitref
from resilience.service.modes import FILE_MODE_FLAGS, POSTGRES_MODE_FLAGS, Mode


class _Plan:
    """What both directions share: the target, the facts, the recorded state, and the digest
    the service must report loading after the restart."""

    mode: Mode

    def __init__(self, session: SwitchSession, facts: SwitchFacts) -> None:
        self.session = session
        self.target = session.target
        self.settings = session.settings
        self.facts = facts
        self.force = session.options.force
        self.state = SwitchState.read(self.target.state_file) or SwitchState()
        self.expected_digest: str | None = None
        self.watch: LogWatch | None = None
        #: the stop was begun by the preflight, while the database answered (see .switch)
        self.stop_begun = session.stopping is not None

    def steps(self) -> list[Step]:
        raise NotImplementedError

    def _save_state(self) -> None:
        self.state.write(self.target.state_file)

    def _connect(self) -> Any:
        return self.session.connect()

    def merge_back(self, meters: Meters = NO_METERS) -> importer.ImportResult:
        """The directory into PostgreSQL, merged three ways: what the switch installed, the
        directory now, the database now (a snapshot or the mirror's copy lacks newer database
        writes: those are kept); the way back, and the undo of a switch to files."""
        t = self.target
        base = InstalledBase.read(t.auth_root, t.company_id)
        with self._connect() as conn:
            store = PgAuthStore(conn, buffer_form=self.settings.db_buffer_form)
            return importer.import_company(
                store, t.auth_root, t.company_id, meters=meters, three_way=True, base=base
            )

    # --- the service ---------------------------------------------------------------------------
    def stop_step(self, *, overlapped: bool = False) -> Step:
        """Stop the service. ``overlapped``: the stop is sent and the next steps run while
        PM2 carries it out (each PM2 command starts node, about half a second);
        :meth:`stopped_step` waits for it before anything the running service could see."""
        app = self.settings.pm2_app
        if self.stop_begun:
            return Step(
                "stop-service",
                f"stop PM2 app {app} (begun by the preflight while the database answered)",
                self.note_stop_begun,
                self.restart_service,
            )
        if overlapped:
            return Step(
                "stop-service",
                f"stop PM2 app {app} (no writes during the switch; the next step runs meanwhile)",
                self.begin_stop,
                self.restart_service,
            )
        return Step(
            "stop-service",
            f"stop PM2 app {app} (no writes during the switch)",
            self.stop_service,
            self.restart_service,
        )

    def stop_service(self, details: Details) -> None:
        self.target.pm2.stop(self.settings.pm2_app)
        details["app"] = self.settings.pm2_app

    def begin_stop(self, details: Details) -> None:
        self.session.begin_stop()
        details["app"] = self.settings.pm2_app
        details["overlapped"] = True

    def note_stop_begun(self, details: Details) -> None:
        details["app"] = self.settings.pm2_app
        details["begun_by_preflight"] = True

    def stopped_step(self) -> Step:
        app = self.settings.pm2_app
        return Step("service-stopped", f"wait until PM2 has stopped {app}", self.wait_stopped)

    def wait_stopped(self, details: Details) -> None:
        took = self.session.wait_stopped()
        if took is not None:
            # from the stop sent to the service gone: the stop part of a restart's floor
            details["stop_s"] = round(took, 3)
        details["app"] = self.settings.pm2_app

    def restart_service(self) -> None:
        self.session.restart_service()

    def start_service(self, details: Details) -> None:
        app = self.settings.pm2_app
        # the preflight read the app's log path: no second PM2 call (each one costs a node start)
        known = self.facts.pm2_out_log
        self.watch = LogWatch(Path(known) if known else self.target.pm2.require(app).out_log)
        self.target.pm2.restart(app)
        details["app"] = app

    def verify(self, details: Details) -> None:
        assert self.watch is not None, "verify runs after start-service"
        details.update(
            verify_service(
                self.settings, self.target.company_id, self.mode, self.watch, self.expected_digest
            )
        )

    def after_start_undo(self) -> Details | None:
        """What undoing the start means; a direction that must carry writes back overrides it."""
        return None

    def start_and_verify(self) -> list[Step]:
        app = self.settings.pm2_app
        return [
            Step(
                "start-service",
                f"restart PM2 app {app} (it reads the new .env)",
                self.start_service,
                self.after_start_undo,
            ),
            Step(
                "verify",
                f"wait for the {self.mode}-mode line, 'connection open' and health",
                self.verify,
                recovers=True,
            ),
        ]


class ToFiles(_Plan):
    mode: Mode = "file"
    facts: ToFilesFacts

    def __init__(self, session: SwitchSession, facts: ToFilesFacts) -> None:
        super().__init__(session, facts)
        #: where the files come from, chosen once (resilience.restore.sources)
        self.source: Source = choose_source(session, facts, self.state)
        # the directory the new one replaced, removed once the service is back
        self.set_aside: list[Path] = []

    def after_start_undo(self) -> Details | None:
        """The service ran in file mode, if only briefly, and may have acknowledged writes
        there: carry them back into PostgreSQL (the import of `restore.to-postgres`) before
        flags, code and service are reverted. When that cannot be done safely, stop the undo
        and leave the service in file mode: reverting would lose those writes."""
        t, app = self.target, self.settings.pm2_app
        t.pm2.stop(app)  # no more writes while they are carried back
        try:
            result = self.merge_back()
        except ResilienceError as exc:
            t.pm2.restart(app)
            raise UndoHalted(
                f"the writes the service made in file mode in {t.company_dir} could not be "
                f"carried back to PostgreSQL ({exc}); it stays in file mode: run "
                "restore.to-postgres once the database is back"
            ) from None
        return {"carried_back": result.to_dict()}

    def steps(self) -> list[Step]:
        t, source = self.target, self.source
        # PostgreSQL unreachable: the service cannot write while a copy is installed, so the
        # stop runs beside the install (an export or a kept directory needs it done first)
        overlapped = isinstance(source, SnapshotCopy | MirrorCopy)
        steps = [self.stop_step(overlapped=overlapped)]
        if self.stop_begun and not overlapped:  # an export or a kept directory: stopped first
            steps.append(self.stopped_step())
        steps.append(
            Step(source.name, source.describe(), self.install, getattr(source, "undo", None))
        )
        if overlapped:
            steps.append(self.stopped_step())  # before the code or flags change under it
        s = self.settings
        if s.fallback_tag and s.service_dir:
            steps.append(
                Step(
                    "code",
                    f"git checkout {s.fallback_tag} in {s.service_dir}",
                    self.checkout_tag,
                    self.checkout_back,
                )
            )
        steps.append(
            Step(
                "env",
                f"set the three file-mode flags in {t.env_file}",
                self.set_file_flags,
                self.restore_flags,
            )
        )
        return [
            *steps,
            *self.start_and_verify(),
            Step(
                "remove-previous",
                f"remove the directory the new {t.company_dir.name} replaced, if any",
                self.remove_previous,
            ),
        ]

    def remove_previous(self, details: Details) -> None:
        removed = [str(path) for path in self.set_aside]
        for path in self.set_aside:
            shutil.rmtree(path, ignore_errors=True)
        self.set_aside.clear()
        details["removed"] = removed

    def install(self, details: Details) -> None:
        """Put the source's files in place, and record them as the way back's merge base
        before the service runs on them."""
        t = self.target
        copy = self.source.install(self.set_aside)
        self.expected_digest = copy.digest
        details.update(copy.details)
        if copy.new_base or InstalledBase.read(t.auth_root, t.company_id) is None:
            record_installed(t.auth_root, t.company_id, self.source.name, copy)
        details["base"] = str(base_path(t.auth_root, t.company_id))

    def checkout_tag(self, details: Details) -> None:
        s, state = self.settings, self.state
        assert s.service_dir is not None and s.fallback_tag is not None
        current = gitref.current_ref(s.service_dir)
        if state.previous_ref and current == state.tag_commit:
            details["already_at_tag"] = True  # a re-run after a crash: keep the first ref
        else:
            state.previous_ref = current
            state.tag_commit = gitref.require_tag(s.service_dir, s.fallback_tag)
            self._save_state()  # before the checkout: a crash keeps the way back
            gitref.checkout(s.service_dir, s.fallback_tag, force=self.force)
        details["previous_ref"] = state.previous_ref
        details["tag"] = s.fallback_tag

    def checkout_back(self) -> None:
        assert self.settings.service_dir is not None and self.state.previous_ref is not None
        gitref.checkout(self.settings.service_dir, self.state.previous_ref, force=True)

    def set_file_flags(self, details: Details) -> None:
        env_file = self.target.env_file
        # Already in file mode (a re-run after a crash, or switched by hand): keep the flags the
        # first run saw; none known means the way back uses the defaults.
        if envfile.current_mode(env_file) == "postgres":
            self.state.env_before = envfile.read_flags(env_file)
        self.state.company_id = self.target.company_id
        self.state.switched_to_files_at = datetime.now(UTC).isoformat()
        self._save_state()  # before the change: a crash keeps the way back
        change = envfile.set_values(env_file, FILE_MODE_FLAGS)
        details["changed"] = change.changed
        details["backup"] = str(change.backup) if change.backup else None

    def restore_flags(self) -> None:
        if self.state.env_before is not None:
            envfile.restore_values(self.target.env_file, self.state.env_before)


class ToPostgres(_Plan):
    mode: Mode = "postgres"
    facts: ToPostgresFacts

    def __init__(self, session: SwitchSession, facts: ToPostgresFacts) -> None:
        super().__init__(session, facts)
        self.tag_ref: str | None = None  # the ref the code step left (for its undo)

    def steps(self) -> list[Step]:
        t, s = self.target, self.settings
        app = s.pm2_app
        steps = [
            Step(
                "stop-service",
                f"stop PM2 app {app} (no writes during the switch)",
                self.stop_service,
                self.restart_in_file_mode,
            )
        ]
        if self.facts.env_mode == "postgres":
            # A re-run after the env step: the import is done and the service may have written
            # to the database since; importing the older directory again would undo those.
            steps.append(
                Step(
                    "keep-database",
                    "the service is already in PostgreSQL mode: keep the database as it is",
                    self.keep_database,
                )
            )
        else:
            steps.append(Step("import", self._import_description(), self.do_import))
        steps.append(
            Step(
                "env",
                f"restore the PostgreSQL-mode flags in {t.env_file}",
                self.restore_postgres_flags,
                self.set_file_flags_again,
            )
        )
        previous = self.state.previous_ref
        if previous and s.service_dir:
            steps.append(
                Step(
                    "code",
                    f"git checkout {previous} in {s.service_dir}",
                    self.checkout_previous,
                    self.checkout_tag_again,
                )
            )
        steps += self.start_and_verify()
        steps.append(
            Step("done", "forget the file-mode state (the switch is complete)", self.forget)
        )
        return steps

    def after_start_undo(self) -> Details | None:
        """The service ran in PostgreSQL mode and may have acknowledged writes there: export
        them into its directory before it goes back to file mode, or stay in PostgreSQL."""
        t, app = self.target, self.settings.pm2_app
        t.pm2.stop(app)
        try:
            with self._connect() as conn:
                result = export_mod.export_company(
                    PgAuthStore(conn),
                    t.auth_root,
                    t.company_id,
                    source=redact_dsn(t.service_dsn),
                    versions=True,
                )
            record_installed(t.auth_root, t.company_id, "export", result)
        except ResilienceError as exc:
            t.pm2.restart(app)
            raise UndoHalted(
                f"the writes the service made in PostgreSQL mode could not be exported to "
                f"{t.company_dir} ({exc}); it stays in PostgreSQL mode"
            ) from None
        return {"carried_back": result.to_dict()}

    def keep_database(self, details: Details) -> None:
        company = self.target.company_id
        with self._connect() as conn:
            store = PgAuthStore(conn)
            view = view_of(company, store.load_creds(company), store.records(company))
        self.expected_digest = view.digest().digest
        details.update(kept="database", digest=self.expected_digest)

    def _import_description(self) -> str:
        t, merge = self.target, self.facts.merge
        what = f"import {t.company_dir} into PostgreSQL (one transaction, digest-checked)"
        if merge is None:
            return what
        if self.facts.base_source is None:
            return f"{what}: no record of what was installed, the directory replaces the rows"
        return (
            f"{what}, merged three ways with what the switch installed ({merge['base']}): "
            f"{merge['written_from_files']['count']} key(s) written and "
            f"{merge['deleted_in_files']['count']} deleted as in file mode, "
            f"{merge['kept_from_postgres']['count']} newer in PostgreSQL kept, "
            f"{merge['conflicts_files_won']['count']} conflict(s) where file mode wins"
        )

    def do_import(self, details: Details) -> None:
        result = self.merge_back(meters=self.session.events.meters)
        self.expected_digest = result.digest_db
        details.update(result.to_dict())

    def restart_in_file_mode(self) -> None:
        """Undo of the stop: the service goes back to file mode on its directory, unless the
        directory would not load (then it stays stopped: a crash loop serves nobody)."""
        t = self.target
        try:
            importer.check_directory(t.company_dir, t.company_id)
        except ResilienceError as exc:
            raise UndoHalted(
                f"the service was not started again in file mode: {exc}; fix the file, then "
                f"pm2 restart {self.settings.pm2_app}"
            ) from None
        self.restart_service()

    def restore_postgres_flags(self, details: Details) -> None:
        before = self.state.env_before or POSTGRES_MODE_FLAGS
        change = envfile.restore_values(self.target.env_file, before)
        details["changed"] = change.changed

    def set_file_flags_again(self) -> None:
        envfile.set_values(self.target.env_file, FILE_MODE_FLAGS)

    def checkout_previous(self, details: Details) -> None:
        assert self.settings.service_dir is not None and self.state.previous_ref is not None
        self.tag_ref = gitref.checkout(
            self.settings.service_dir, self.state.previous_ref, force=self.force
        )
        details["ref"] = self.state.previous_ref

    def checkout_tag_again(self) -> None:
        if self.tag_ref is not None and self.settings.service_dir is not None:
            gitref.checkout(self.settings.service_dir, self.tag_ref, force=True)

    def forget(self, details: Details) -> None:
        t = self.target
        t.state_file.unlink(missing_ok=True)
        remove_base(t.auth_root, t.company_id)
        details["removed"] = str(t.state_file)


def plan_for(session: SwitchSession, facts: Preflight) -> list[Step]:
    """The steps of this switch, built once from the preflight's facts: their descriptions are
    what the operator confirms, and they are what runs."""
    if isinstance(facts, ToFilesFacts):
        return ToFiles(session, facts).steps()
    return ToPostgres(session, facts).steps()
