"""`cleanup.*`: expired keys (`cleanup.keys`, daily at 03:00 UTC), legacy rows and Buffer forms.

Configured by the operator's settings alone; dry run unless `--yes`; every run leaves a record
under `RESILIENCE_RUNS_DIR`.
"""

from __future__ import annotations

from typing import Any

from invoke.context import Context
from invoke.tasks import task

from tasks._run import operator_task, positive_int


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1024 / 1024:.2f} MB" if abs(n) >= 1024 * 1024 else f"{n / 1024:.1f} KB"


def _render_keys(console: Any, d: dict[str, Any]) -> None:
    from resilience.infra.output import table

    scope = f"company {d['company_id']}" if d["company_id"] else "all companies"
    console.print(f"cleanup.keys ({scope}): {d['description']}, before {d['boundary']}")
    counts = d["counts"]
    console.print(
        f"  expired keys now: {counts['stale']['count']} stale (not updated for more than "
        f"{counts['retention_days']} days), {counts['past_expiry']['count']} past expiry, "
        f"of {counts['total_keys']} keys"
    )
    types = sorted(set(d["matched_by_type"]) | set(d["deleted_by_type"]))
    rows = [[t, d["matched_by_type"].get(t, 0), d["deleted_by_type"].get(t, 0)] for t in types]
    rows.append(["total", d["matched"], d["deleted"]])
    console.print(table("keys by type", ["type", "expired", "deleted"], rows))
    if d["dry_run"]:
        console.print(
            f"dry run: {d['matched']} keys would be deleted; nothing changed (--yes deletes)"
        )
    else:
        console.print(
            f"deleted {d['deleted']} keys in {d['batches']} batches of up to {d['batch_size']} "
            f"in {d['delete_s']:.2f} s (run {d['duration_s']:.2f} s); vacuum: {d['vacuum']}"
        )
    before, after = d["sizes_before"], d["sizes_after"]
    if before:
        sizes = [
            [what, _size(before[key]), _size(after[key]) if after else "-"]
            for what, key in (
                ("table", "table_bytes"),
                ("indexes", "index_bytes"),
                ("total", "total_bytes"),
            )
        ]
        console.print(table("whatsapp_keys on disk", ["", "before", "after"], sizes))
    if d["freed_bytes"] is not None:
        console.print(
            f"freed {_size(d['freed_bytes'])} on disk; {_size(d['deleted_value_bytes'])} of "
            "values deleted (reused by new rows)"
        )
    if d["alerts"]:
        a = d["alerts"]

        def state(enabled: bool, sent: bool) -> str:
            return ("sent" if sent else "NOT sent") if enabled else "not configured"

        sentry = state(a["sentry_enabled"], bool(a["sentry_event"]))
        telegram = state(a["telegram_enabled"], a["telegram_sent"])
        console.print(
            f"alerts: Sentry {a['sentry_level']} event {sentry}, Telegram summary {telegram}"
        )
    if d.get("record"):
        console.print(f"run record: {d['record']}")


@task(
    auto_shortflags=False,
    help={
        "company": "one company (default: every company)",
        "expired": "delete keys past expiry (expires_at passed) instead of stale ones",
        "retention_days": "stale means not updated for more than N days "
        "(default: RESILIENCE_CLEANUP_RETENTION_DAYS, 30)",
        "yes": "delete (without it: a dry run that counts what would go)",
        "json": "print the result as JSON",
    },
)
@operator_task
def keys(
    c: Context,
    company: str | None = None,
    expired: bool = False,
    retention_days: str | None = None,
    yes: bool = False,
    json: bool = False,
) -> None:
    """Delete stale keys (--expired: keys past expiry) in short batches; dry run unless --yes."""
    from resilience.config import load_settings
    from resilience.infra.output import Output
    from resilience.maintenance.cleanup import cleanup_keys

    out = Output(json)
    days = positive_int("--retention-days", retention_days)
    run = cleanup_keys(
        load_settings(),
        company_id=company,
        expired=expired,
        retention_days=days,
        yes=yes,
        progress=out.progress,
    )
    out.result({"ok": True, **run.to_dict()}, _render_keys)


def _render_legacy(console: Any, d: dict[str, Any]) -> None:
    from resilience.infra.output import table

    rows = [
        [
            c["company_id"],
            c["legacy"],
            c["drop"],
            c["move"],
            len(c["unresolved"]),
            "purged" if c["purged"] else "-",
        ]
        for c in d["companies"]
    ]
    console.print(
        table("legacy rows", ["company", "legacy", "drop", "move", "unresolved", "done"], rows)
    )
    if d["dry_run"]:
        console.print(
            f"dry run: {d['drop']} legacy rows would be dropped (the real row is newer or as "
            f"new) and {d['move']} moved to their real type and id; nothing changed (--yes purges)"
        )
    else:
        console.print(f"{d['drop']} legacy rows dropped, {d['move']} moved then dropped")
    if d.get("record"):
        console.print(f"run record: {d['record']}")


@task(
    auto_shortflags=False,
    help={
        "company": "one company (default: every company that has legacy rows)",
        "yes": "purge (without it: report what would be dropped or moved)",
        "json": "print the result as JSON",
    },
)
@operator_task
def legacy(c: Context, company: str | None = None, yes: bool = False, json: bool = False) -> None:
    """Legacy rows (pre/key-5 beside pre-key/5): report; --yes drops or moves each."""
    from resilience.config import load_settings
    from resilience.infra.output import Output
    from resilience.maintenance.legacy import cleanup_legacy

    out = Output(json)
    run = cleanup_legacy(load_settings(), company_id=company, yes=yes, progress=out.progress)
    out.result({"ok": True, **run.to_dict()}, _render_legacy)


def _render_buffer_form(console: Any, d: dict[str, Any]) -> None:
    from resilience.infra.output import table

    rows = []
    for c in d["companies"]:
        keys = c["before"]["keys"]
        rows.append(
            [
                c["company_id"],
                c["form"],
                keys["array"],
                keys["base64"],
                keys["mixed"],
                c["before"]["creds"] or "-",
                c["pending"],
                c["rewritten"] + c["creds_rewritten"] if not d["dry_run"] else "-",
            ]
        )
    console.print(
        table(
            f"Buffer forms (RESILIENCE_DB_BUFFER_FORM / --form: {d['setting']})",
            ["company", "form", "array", "base64", "mixed", "creds", "to rewrite", "rewritten"],
            rows,
        )
    )
    if d["dry_run"]:
        console.print(
            f"dry run: {d['pending']} rows would be rewritten into their company's form; "
            "nothing changed (--yes rewrites)"
        )
    else:
        console.print(f"{d['rewritten']} rows rewritten (times kept, decoded values unchanged)")
    if d.get("record"):
        console.print(f"run record: {d['record']}")


@task(
    name="buffer-form",
    auto_shortflags=False,
    help={
        "company": "one company (default: every company)",
        "form": "auto, array or base64 (default: RESILIENCE_DB_BUFFER_FORM; auto: the form "
        "most of each company's rows use)",
        "dry_run": "count the rows per form; change nothing (the default without --yes)",
        "yes": "rewrite the rows in another form, in batches",
        "json": "print the result as JSON",
    },
)
@operator_task
def buffer_form(
    c: Context,
    company: str | None = None,
    form: str | None = None,
    dry_run: bool = False,
    yes: bool = False,
    json: bool = False,
) -> None:
    """Rewrite rows into one Buffer form (base64 or array) in batches; dry run unless --yes.

    One company's rows, or every company's; `auto` picks the form most of a company's rows
    use."""
    from resilience.config import load_settings
    from resilience.errors import InputError
    from resilience.infra.output import Output
    from resilience.maintenance.bufferform import rewrite_buffer_form

    if form is not None and form not in ("auto", "array", "base64"):
        raise InputError(f"--form must be auto, array or base64, not {form[:20]!r}")
    out = Output(json)
    run = rewrite_buffer_form(
        load_settings(),
        company_id=company,
        form=form,  # type: ignore[arg-type]
        yes=yes,
        dry_run=dry_run,
        progress=out.progress,
    )
    out.result({"ok": True, **run.to_dict()}, _render_buffer_form)
