"""The preflight's rules: the facts (:mod:`.facts`) of one direction turned into the problems
that refuse the switch. Pure: no I/O, no clock; what the facts do not say is not judged here.

A :class:`Problem` is one line of the refusal and its kind (README: exit 2 ``input``, 4
``data``, 6 ``database``); the refusal's kind is the gravest of them. The problems are said in
the order the checks are made: the database when it could not even be connected to, the
service's company, the .env, the auth directory, PM2, the code, the export directory, the
database's answer, then what the direction needs (an export or a copy; a directory to import).
"""

from __future__ import annotations

from dataclasses import dataclass

from resilience.config import Settings
from resilience.errors import DatabaseUnreachable, DataError, InputError, ResilienceError
from resilience.restore.facts import Failure, SwitchFacts, ToFilesFacts, ToPostgresFacts
from resilience.restore.session import SwitchOptions

#: bytes: the switch state, the merge base and the .env copy
ROOM_FOR_STATE = 1 << 20
SHOWN_DIRTY = 5  # local changes named in the refusal
SHOWN_UNMAPPABLE = 10  # file names named in the refusal


@dataclass(frozen=True)
class Problem:
    message: str
    kind: str = "input"  # "input", "data" or "database"


def problems_to_files(
    facts: ToFilesFacts, options: SwitchOptions, settings: Settings
) -> list[Problem]:
    """Why the switch to files must not run (nothing: it may)."""
    out = _before_the_question(facts)
    out += _failed(facts.files_failure)  # a re-run: the directory the service runs on
    if facts.pm2_error:
        out.append(Problem(facts.pm2_error))
    out += _code(facts, options, settings)
    if facts.db_connected:
        out += _export_dir(facts, settings)
        out += _database_answer(facts)
    if facts.db_reachable:
        out += _export(facts)
    elif facts.db_verdict == "outage":  # neither an export nor a copy for any other verdict
        out += _copy(facts, options, settings)
    return out


def problems_to_postgres(facts: ToPostgresFacts) -> list[Problem]:
    """Why the way back must not run (nothing: it may)."""
    out = _before_the_question(facts)
    if facts.pm2_error:
        out.append(Problem(facts.pm2_error))
    if facts.db_connected:
        out += _database_answer(facts)
    out += _failed(facts.merge_failure)
    if facts.db_verdict == "outage":
        out.append(
            Problem(f"PostgreSQL must be reachable to switch back: {facts.db_error}", "database")
        )
    if facts.company_dir_symlink:
        return out  # said already
    if not facts.directory_found:
        out.append(Problem(f"no Baileys directory {facts.company_dir} to import"))
    elif facts.unmappable:
        shown = ", ".join(facts.unmappable[:SHOWN_UNMAPPABLE])
        rest = len(facts.unmappable) - SHOWN_UNMAPPABLE
        more = f" and {rest} more" if rest > 0 else ""
        out.append(
            Problem(
                f"file names that cannot be mapped back to key ids without guessing: {shown}{more}"
            )
        )
    return out


def over_age_limit(age_s: float, settings: Settings, options: SwitchOptions) -> bool:
    """Whether a copy this old is refused: over RESILIENCE_SNAPSHOT_MAX_AGE, and not --force."""
    return age_s > settings.snapshot_max_age and not options.force


def refusal_kind(problems: list[Problem]) -> str:
    """The gravest kind among the problems: database, then data, then input."""
    kinds = {p.kind for p in problems}
    return next((k for k in ("database", "data") if k in kinds), "input")


#: the exit code of a refusal follows its kind (README: 2 input, 4 data, 6 database)
REFUSALS: dict[str, type[ResilienceError]] = {
    "input": InputError,
    "data": DataError,
    "database": DatabaseUnreachable,
}


# --- the checks both directions make -------------------------------------------------------------
def _before_the_question(facts: SwitchFacts) -> list[Problem]:
    """What is known before the database is asked: a failed connection, the service's company,
    the .env, the auth directory."""
    out: list[Problem] = []
    if not facts.db_connected:
        out += _database_answer(facts)
    if facts.service_company is not None and facts.service_company != facts.company_id:
        served = facts.service_company
        out.append(
            Problem(
                f"the service serves company {served}, not {facts.company_id}: switch "
                f"--company {served}, or fix RESILIENCE_COMPANY_ID"
            )
        )
    if facts.env_error:
        out.append(Problem(facts.env_error))
    if facts.state_error:
        out.append(Problem(f"{facts.state_error}: fix or move it away (it holds the way back)"))
    if facts.company_dir_symlink:
        out.append(
            Problem(
                f"{facts.company_dir} is a symlink: refusing to read or replace what it points "
                "to; make it a real directory"
            )
        )
    elif facts.disk_free is not None and facts.disk_free < ROOM_FOR_STATE:
        out.append(
            Problem(
                f"no room in {facts.disk_probe} ({facts.disk_free} bytes free): the switch "
                "writes its state there; free some space first"
            )
        )
    return out


def _database_answer(facts: SwitchFacts) -> list[Problem]:
    """The database's failure, when it is not an outage (a snapshot is never used for it)."""
    if facts.db_error is None or facts.db_verdict == "reachable":
        return []
    return _failed(Failure(facts.db_verdict, facts.db_error))


def _failed(failure: Failure | None) -> list[Problem]:
    """The problem a failed check makes (none: an outage, judged by the direction)."""
    if failure is None or failure.kind == "outage":
        return []
    error = failure.message
    if failure.kind == "data":
        return [Problem(f"{error}: nothing was stopped, the service keeps serving", "data")]
    if failure.kind == "misconfigured":
        error = (
            f"PostgreSQL is not down, the configuration is wrong (RESILIENCE_SERVICE_DSN): "
            f"{error}; fix it, no snapshot is used for a typo"
        )
    elif failure.kind == "unknown":
        error = f"cannot tell whether PostgreSQL is down ({error}): not falling back to a snapshot"
    return [Problem(error)]


# --- to files ------------------------------------------------------------------------------------
def _code(facts: ToFilesFacts, options: SwitchOptions, settings: Settings) -> list[Problem]:
    if not settings.fallback_tag:
        return []
    if settings.service_dir is None:
        return [Problem("RESILIENCE_FALLBACK_TAG needs RESILIENCE_SERVICE_DIR (the git tree)")]
    if facts.code_error:
        return [Problem(facts.code_error)]
    if facts.dirty and not options.force:
        shown = ", ".join(facts.dirty[:SHOWN_DIRTY])
        return [
            Problem(
                f"work tree {settings.service_dir} has local changes ({shown}): commit them, or "
                "--force (discards them)"
            )
        ]
    return []


def _export_dir(facts: ToFilesFacts, settings: Settings) -> list[Problem]:
    """Whether the export can be written where it goes."""
    if facts.disk_free is None:
        return [
            Problem(f"export dir {settings.auth_root} does not exist and neither does its parent")
        ]
    if not facts.disk_writable:
        return [Problem(f"export dir {facts.disk_probe} is not writable")]
    return []


def _export(facts: ToFilesFacts) -> list[Problem]:
    out = []
    if facts.key_count == 0:
        out.append(Problem(f"unknown company {facts.company_id}: no keys in the database"))
    free, needed = facts.disk_free, facts.disk_needed
    if free is not None and needed and free < needed:
        out.append(
            Problem(
                f"not enough disk for the export: {free} bytes free in {facts.disk_probe}, "
                f"about {needed} needed"
            )
        )
    return out


def _copy(facts: ToFilesFacts, options: SwitchOptions, settings: Settings) -> list[Problem]:
    """PostgreSQL is down: the copy that replaces the export, young enough (or --force)."""
    if facts.mirror_dir is not None:
        what = "the mirror's last confirmed position"
    elif facts.snapshot_path is not None:
        what = "newest snapshot"
    else:
        return [
            Problem(
                f"{facts.db_error}, and there is no snapshot of "
                f"company {facts.company_id} in {settings.snapshot_dir}"
            )
        ]
    age = facts.copy_age_s
    if age is None or not over_age_limit(age, settings, options):
        return []
    return [
        Problem(
            f"{what} is {age:.0f} s old, over the limit of {settings.snapshot_max_age:.0f} s "
            "(RESILIENCE_SNAPSHOT_MAX_AGE): --force to use it"
        )
    ]
