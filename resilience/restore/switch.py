"""The emergency switch: PostgreSQL -> Baileys files (`to-files`) and back (`to-postgres`).

Each direction is preflight facts (:mod:`.preflight`) -> a plan of steps with do/undo -> the
runner. The steps: stop the service, export (live, or the newest snapshot when PostgreSQL is
unreachable) or import, the code step (git tag), the env step (three flags), start, and verify
(:mod:`.verify`: the service's log lines and health, never a file we wrote). When PostgreSQL is
unreachable the stop runs beside the install of the copy (waited for before the code and flags
change). The RTO ends with verify; the directory the new one replaced is removed after it (a
failed switch leaves it as ``.previous-company_<id>-<stamp>``; the next export sweeps it).

A plan is an object whose attributes are the state its steps share: what the switch recorded
for the way back (:class:`~.state.SwitchState`), the digest the service must load, the log
watch set up at the restart. Steps are its methods.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from resilience.authstate.fingerprint import creds_fingerprint, next_pre_key_id
from resilience.authstate.pgstore import DbLink, PgAuthStore, connect
from resilience.authstate.view import view_of
from resilience.errors import (
    DatabaseUnreachable,
    DataError,
    InputError,
    ResilienceError,
    StackError,
    VerificationError,
)
from resilience.infra.pm2 import Pending
from resilience.infra.progress import NO_METERS, Meters
from resilience.infra.redact import redact_dsn
from resilience.mirror.fallback import mirror_fallback, stop_mirror_process
from resilience.restore import export as export_mod
from resilience.restore import importer, snapshot
from resilience.restore.merge import InstalledBase, base_path, record_base, remove_base
from resilience.restore.preflight import Direction, Preflight, preflight
from resilience.restore.runner import Details, Runner, RunResult, Step, UndoHalted
from resilience.restore.state import SwitchState
from resilience.restore.target import Target
from resilience.restore.verify import LogWatch, verify_service
from resilience.runs.journal import Journal
from resilience.service import envfile, gitref
from resilience.service.modes import FILE_MODE_FLAGS, POSTGRES_MODE_FLAGS, Mode

__all__ = [
    "Direction",
    "Preflight",
    "SwitchOutcome",
    "build_plan",
    "preflight",
    "run_switch",
]


class _Plan:
    """What both directions share: the target, the facts, the recorded state, and the digest
    the service must report loading after the restart."""

    mode: Mode

    def __init__(
        self,
        target: Target,
        facts: Preflight,
        force: bool,
        link: DbLink | None = None,
        meters: Meters = NO_METERS,
        stopping: Pending | None = None,
    ) -> None:
        self.target = target
        self.link = link  # the preflight's connection, kept for the export
        self.meters = meters  # progress of the export or import
        self.settings = target.settings
        self.facts = facts
        self.force = force
        self.state = SwitchState.read(target.state_file) or SwitchState()
        self.expected_digest: str | None = None
        self.watch: LogWatch | None = None
        self._stopping: Pending | None = stopping  # a stop under way (see stop_step)
        #: the stop was begun by the preflight, while the database answered (see run_switch)
        self.stop_begun = stopping is not None

    def steps(self) -> list[Step]:
        raise NotImplementedError

    def _save_state(self) -> None:
        self.state.write(self.target.state_file)

    def _connect(self) -> Any:
        return connect(self.target.service_dsn, timeout=self.settings.db_connect_timeout)

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
        self._stopping = self.target.pm2.begin("stop", self.settings.pm2_app)
        details["app"] = self.settings.pm2_app
        details["overlapped"] = True

    def note_stop_begun(self, details: Details) -> None:
        details["app"] = self.settings.pm2_app
        details["begun_by_preflight"] = True

    def stopped_step(self) -> Step:
        app = self.settings.pm2_app
        return Step("service-stopped", f"wait until PM2 has stopped {app}", self.wait_stopped)

    def wait_stopped(self, details: Details) -> None:
        call, self._stopping = self._stopping, None
        if call is not None:
            call.wait()
            # from the stop sent to the service gone: the stop part of a restart's floor
            details["stop_s"] = round(time.monotonic() - call.started, 3)
        details["app"] = self.settings.pm2_app

    def restart_service(self) -> None:
        call, self._stopping = self._stopping, None
        _restart_after(self.target, call)

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

    def __init__(
        self,
        target: Target,
        facts: Preflight,
        force: bool,
        link: DbLink | None = None,
        meters: Meters = NO_METERS,
        stopping: Pending | None = None,
    ) -> None:
        super().__init__(target, facts, force, link, meters, stopping)
        # "export", "keep-directory", "install-snapshot" or "install-mirror"
        self.source: str | None = None
        self.mirror_stopped = False  # the install-mirror step stopped the mirror process
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
            # three ways: what was installed, the directory now, the database now (a snapshot
            # or the mirror's copy lacks newer database writes: those are kept)
            base = InstalledBase.read(t.auth_root, t.company_id)
            with self._connect() as conn:
                store = PgAuthStore(conn, buffer_form=self.settings.db_buffer_form)
                result = importer.import_company(
                    store, t.auth_root, t.company_id, three_way=True, base=base
                )
        except ResilienceError as exc:
            t.pm2.restart(app)
            raise UndoHalted(
                f"the writes the service made in file mode in {t.company_dir} could not be "
                f"carried back to PostgreSQL ({exc}); it stays in file mode: run "
                "restore.to-postgres once the database is back"
            ) from None
        return {"carried_back": result.to_dict()}

    def steps(self) -> list[Step]:
        t, facts = self.target, self.facts
        keep = (
            facts.env_mode == "file"
            and t.company_dir.is_dir()
            and self.state.company_id in (None, t.company_id)
        )
        # PostgreSQL unreachable: the service cannot write while a copy is installed, so the
        # stop runs beside the install (an export or a kept directory needs it done first)
        overlapped = not keep and not facts.db_reachable
        steps = [self.stop_step(overlapped=overlapped)]
        if self.stop_begun and not overlapped:  # an export or a kept directory: stopped first
            steps.append(self.stopped_step())
        if keep:
            # A re-run after the env step: the service may already have written to these files,
            # so they are never replaced; the service is stopped, so their digest is stable.
            steps.append(
                Step(
                    "keep-directory",
                    f"the service is already in file mode: keep {t.company_dir} as it is",
                    self.keep_directory,
                )
            )
        elif facts.db_reachable:
            steps.append(
                Step("export", f"export company {t.company_id} to {t.company_dir}", self.export)
            )
        elif facts.mirror_dir is not None:
            steps.append(
                Step(
                    "install-mirror",
                    f"PostgreSQL unreachable: stop the mirror, check and install its copy of "
                    f"{t.company_id} (mirror lag {facts.mirror_loss_window_s} s = data-loss "
                    f"window; newest snapshot {facts.snapshot_age_s} s old)",
                    self.install_mirror,
                    self.restart_mirror,
                )
            )
        else:
            steps.append(
                Step(
                    "install-snapshot",
                    f"PostgreSQL unreachable: install the newest snapshot of {t.company_id} "
                    f"(age {facts.snapshot_age_s} s = data-loss window)",
                    self.install_snapshot,
                )
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

    def keep_directory(self, details: Details) -> None:
        t = self.target
        state = importer.read_directory(t.company_dir, t.company_id)
        self.expected_digest = state.digest().digest
        self.source = "keep-directory"
        details.update(kept=str(t.company_dir), digest=self.expected_digest)
        # the first run recorded what it installed; a directory switched by hand has no record:
        # what is there now is the base (writes made before this run count as PostgreSQL's)
        if InstalledBase.read(t.auth_root, t.company_id) is None:
            self._record_base("keep-directory", self.expected_digest, state.creds, state)
        details["base"] = str(base_path(t.auth_root, t.company_id))

    def _record_base(
        self, source: str, digest: str, creds: Any, state: importer.DirectoryState
    ) -> None:
        t = self.target
        record_base(
            t.auth_root, t.company_id, source, digest, creds_fingerprint(creds),
            state.fingerprints(), next_pre_key_id(creds),
        )  # fmt: skip

    def _record_installed(self, source: str, result: export_mod.ExportResult) -> str:
        """Record what was installed (the way back's merge base), before the service runs on
        it; its path."""
        t = self.target
        record_base(
            t.auth_root, t.company_id, source, result.digest, result.creds_print,
            result.fingerprints, result.next_pre_key_id,
        )  # fmt: skip
        return str(base_path(t.auth_root, t.company_id))

    def export(self, details: Details) -> None:
        t = self.target
        with contextlib.ExitStack() as opened:
            conn = self.link.conn if self.link else opened.enter_context(self._connect())
            result = export_mod.export_company(
                PgAuthStore(conn),
                t.auth_root,
                t.company_id,
                source=redact_dsn(t.service_dsn),
                meters=self.meters,
                set_aside=self.set_aside,
                expected_rows=self.facts.key_count,  # the preflight counted: no round trip
            )
        self.expected_digest = result.digest
        self.source = "export"
        details.update(result.to_dict())
        details["base"] = self._record_installed("export", result)

    def install_snapshot(self, details: Details) -> None:
        t, s = self.target, self.settings
        found = snapshot.newest_snapshot(s.snapshot_dir, t.company_id)
        if found is None:
            raise InputError(f"no snapshot of company {t.company_id} any more")
        age = found.age_s()
        if age > s.snapshot_max_age and not self.force:
            raise InputError(f"newest snapshot is {age:.0f} s old: --force to use it")
        result = snapshot.install_snapshot(
            found, t.company_id, t.auth_root, set_aside=self.set_aside
        )
        self.expected_digest = result.digest
        self.source = "install-snapshot"
        details.update(result.to_dict())
        details["base"] = self._record_installed("install-snapshot", result)
        details["snapshot"] = str(found.path)
        details["snapshot_age_s"] = round(age, 1)
        details["snapshot_taken_at"] = found.taken_at.isoformat()

    def install_mirror(self, details: Details) -> None:
        """The mirror's copy, when fresher than the newest snapshot (preflight decided):
        the mirror process is stopped first, then its files are checked against its manifest
        and its recorded position and installed as a snapshot is."""
        t, s = self.target, self.settings
        details["mirror_process"] = stop_mirror_process(s, t.pm2)
        self.mirror_stopped = details["mirror_process"] == "stopped"
        found = mirror_fallback(s, t.company_id)  # read again: the position it stopped at
        if found is None:
            raise InputError(f"the mirror holds no confirmed copy of {t.company_id} any more")
        age = found.age_s()
        if age > s.snapshot_max_age and not self.force:
            raise InputError(f"the mirror's position is {age:.0f} s old: --force to use it")
        try:
            result = snapshot.install_snapshot(
                found.as_snapshot(), t.company_id, t.auth_root, set_aside=self.set_aside
            )
        except VerificationError as exc:
            raise VerificationError(f"the mirror's copy does not check out: {exc}") from None
        self.expected_digest = result.digest
        self.source = "install-mirror"
        details.update(result.to_dict())
        details["base"] = self._record_installed("install-mirror", result)
        details.update(found.to_dict())
        newest = snapshot.newest_snapshot(s.snapshot_dir, t.company_id)
        details["snapshot_age_s"] = round(newest.age_s(), 1) if newest else None
        details["snapshot_taken_at"] = newest.taken_at.isoformat() if newest else None

    def restart_mirror(self) -> None:
        if self.mirror_stopped:
            self.target.pm2.restart(self.settings.mirror_app)

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

    def __init__(
        self, target: Target, facts: Preflight, force: bool, meters: Meters = NO_METERS
    ) -> None:
        super().__init__(target, facts, force, meters=meters)
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
                    PgAuthStore(conn), t.auth_root, t.company_id, source=redact_dsn(t.service_dsn)
                )
            record_base(
                t.auth_root, t.company_id, "export", result.digest, result.creds_print,
                result.fingerprints, result.next_pre_key_id,
            )  # fmt: skip
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
        t = self.target
        base = InstalledBase.read(t.auth_root, t.company_id)
        with self._connect() as conn:
            result = importer.import_company(
                PgAuthStore(conn, buffer_form=self.settings.db_buffer_form),
                t.auth_root,
                t.company_id,
                meters=self.meters,
                three_way=True,
                base=base,
            )
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


def build_plan(
    target: Target,
    facts: Preflight,
    *,
    force: bool,
    link: DbLink | None = None,
    meters: Meters = NO_METERS,
    stopping: Pending | None = None,
) -> list[Step]:
    """The steps; ``link`` is the preflight's connection, which the export reuses; ``meters``
    shows the export's or the import's progress; ``stopping``: the service's stop the
    preflight began (to-files)."""
    if facts.direction == "to-files":
        return ToFiles(target, facts, force, link, meters, stopping).steps()
    return ToPostgres(target, facts, force, meters).steps()


# --- one call for commands and drills -------------------------------------------------------------
@dataclass
class SwitchOutcome:
    preflight: Preflight
    result: RunResult | None  # None for a dry run
    #: client-server round trips to PostgreSQL, preflight and export together (to-files)
    round_trips: int | None = None
    preflight_s: float = 0.0  # how long the preflight took (part of the RTO)

    @property
    def rto_s(self) -> float | None:
        """The preflight, then first step start to the service verified (the whole run when
        no step recovers); None for a dry run. An operator's time to confirm is not in it."""
        if self.result is None:
            return None
        rto = self.result.rto_s
        return self.preflight_s + (self.result.duration_s if rto is None else rto)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"preflight": self.preflight.to_dict()}
        if self.result is not None and self.rto_s is not None:
            data["run"] = self.result.to_dict()
            data["rto_s"] = round(self.rto_s, 3)
            data["preflight_s"] = round(self.preflight_s, 3)
        if self.round_trips is not None:
            data["db_round_trips"] = self.round_trips
        return data


def run_switch(
    target: Target,
    direction: Direction,
    *,
    journal: Journal,
    dry_run: bool = False,
    force: bool = False,
    confirm: Callable[[Preflight], bool] | None = None,
    progress: Callable[[str], None] | None = None,
    meters: Meters = NO_METERS,
) -> SwitchOutcome:
    """Preflight, plan, (confirm), run. Raises on refusal, or on failure after undoing the done
    steps (:class:`~.runner.StepFailed`). PM2 is reached through one connection for the whole
    run, made while the preflight starts."""
    journal.register_secret(target.service_dsn)
    with target.pm2_connected():
        if direction != "to-files":
            return _run(target, direction, journal, dry_run, force, confirm, progress, meters)
        # to-files: one connection for the preflight and the export, its round trips counted
        link = DbLink(target.service_dsn, timeout=target.settings.db_connect_timeout)
        try:
            return _run(target, direction, journal, dry_run, force, confirm, progress, meters, link)
        finally:
            link.close()
            journal.event(
                "round-trips",
                f"{link.round_trips} round trip(s) to PostgreSQL over {link.connects} "
                "connection(s)",
                db_round_trips=link.round_trips,
                connections=link.connects,
            )


def _run(
    target: Target,
    direction: Direction,
    journal: Journal,
    dry_run: bool,
    force: bool,
    confirm: Callable[[Preflight], bool] | None,
    progress: Callable[[str], None] | None,
    meters: Meters,
    link: DbLink | None = None,
) -> SwitchOutcome:
    started = time.perf_counter()
    stopping: list[Pending] = []

    def begin_stop(_facts: Preflight) -> None:
        stopping.append(target.pm2.begin("stop", target.settings.pm2_app))
        journal.event(
            "stop-begun",
            "every check that needs no database passed: the service is stopped while the "
            "database answers the preflight",
        )

    # no operator to confirm (--yes), a live database to export: the stop need not wait for
    # the preflight's statement (on a slow database, a whole round trip)
    early = begin_stop if link is not None and not dry_run and confirm is None else None
    try:
        facts = _checked_preflight(target, direction, journal, force, link, early)
    except BaseException as failed:
        if not stopping:
            raise
        note = _start_again(target, stopping[0], journal)
        if isinstance(failed, ResilienceError) and failed.details:  # refused: said in one
            again = type(failed)(str(failed) + note)  # line, with what was done
            again.details = failed.details
            raise again from None
        raise
    preflight_s = time.perf_counter() - started
    if dry_run:
        journal.event("dry-run", "dry run: nothing changed")
        return SwitchOutcome(facts, None, None if link is None else link.round_trips)
    if confirm is not None and not confirm(facts):  # the operator's time to answer: not RTO
        raise InputError("not confirmed: nothing changed")
    result = Runner(journal, progress).run(
        build_plan(
            target,
            facts,
            force=force,
            link=link,
            meters=meters,
            stopping=stopping[0] if stopping else None,
        )
    )
    return SwitchOutcome(facts, result, None if link is None else link.round_trips, preflight_s)


def _restart_after(target: Target, stopping: Pending | None) -> None:
    """Restart the service; a stop still under way ends first (its failure does not matter:
    the restart is what counts)."""
    if stopping is not None:
        with contextlib.suppress(StackError):
            stopping.wait()
    target.pm2.restart(target.settings.pm2_app)


def _start_again(target: Target, stopping: Pending, journal: Journal) -> str:
    """Start the service the preflight had begun to stop, before its failure is raised; what
    was done, as a note for the refusal."""
    app = target.settings.pm2_app
    try:
        _restart_after(target, stopping)
    except StackError as exc:
        journal.event("service-not-started-again", f"PM2 app {app} did not start again: {exc}")
        return f"; the service, stopped meanwhile, did not start again ({exc}): pm2 restart {app}"
    journal.event("service-started-again", f"PM2 app {app} started again after the preflight")
    return "; the service, stopped meanwhile, was started again"


#: the exit code of a refusal follows its kind (README: 2 input, 4 data, 6 database)
_REFUSALS: dict[str, type[ResilienceError]] = {
    "input": InputError,
    "data": DataError,
    "database": DatabaseUnreachable,
}


def _checked_preflight(
    target: Target,
    direction: Direction,
    journal: Journal,
    force: bool,
    link: DbLink | None,
    before_query: Callable[[Preflight], None] | None = None,
) -> Preflight:
    facts = preflight(target, direction, force=force, link=link, before_query=before_query)
    facts.plan = [step.description for step in build_plan(target, facts, force=False)]
    journal.event("preflight", f"{direction} preflight", **facts.to_dict())
    if facts.problems:
        kind = _REFUSALS.get(facts.refusal, InputError)
        refused = kind(f"preflight refused {direction}: " + "; ".join(facts.problems))
        refused.details = {"preflight": facts.to_dict()}
        raise refused
    return facts
