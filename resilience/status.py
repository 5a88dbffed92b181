"""`status`: which mode the service is in now, since when, from what, and who holds the lock.

Read-only, from the service's own evidence first: its health endpoint (`mode`), else the last
mode line of its PM2 log; the `.env` flags beside. The switch state (`.restore-state.json` in the
auth dir) says a switch to files happened and when; the switch's record of what it installed
(`.restore-base-company_<id>.json`) says from what (a live export, a snapshot or the mirror's
copy); the switch's run record gives the data-loss window (the snapshot's or the mirror's age
when it was installed; 0 for a live export). A file that is not JSON is reported, never a
traceback.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from resilience.config import Settings, validate_company_id
from resilience.errors import ResilienceError
from resilience.infra.commandline import operator_command as cmd

SOURCES = {
    "export": "export",
    "install-snapshot": "snapshot",
    "install-mirror": "mirror",
    "keep-directory": "directory kept",
}
LOG_TAIL_BYTES = 256 * 1024


def _health_mode(settings: Settings) -> dict[str, Any] | None:
    if not settings.health_url:
        return None
    try:
        body = httpx.get(settings.health_url, timeout=5).json()
    except (httpx.HTTPError, ValueError) as exc:
        return {"source": "health", "error": f"{settings.health_url}: {type(exc).__name__}"}
    if not isinstance(body, dict) or body.get("mode") not in ("file", "postgres"):
        return {"source": "health", "error": f"{settings.health_url} names no mode"}
    return {"source": "health", "mode": body["mode"], "url": settings.health_url}


def _log_mode(settings: Settings, company_id: str) -> dict[str, Any] | None:
    from resilience.infra.pm2 import pm2_for

    try:
        app = pm2_for(settings).describe(settings.pm2_app)
    except ResilienceError as exc:
        return {"source": "log", "error": str(exc)}
    if app is None or app.out_log is None or not app.out_log.exists():
        return {"source": "log", "error": f"no PM2 log of {settings.pm2_app}"}
    with open(app.out_log, "rb") as f:
        f.seek(max(0, app.out_log.stat().st_size - LOG_TAIL_BYTES))
        lines = f.read().decode("utf-8", errors="replace").splitlines()
    patterns = {
        mode: re.compile(pattern.replace("{company}", re.escape(company_id)))
        for mode, pattern in (
            ("file", settings.file_mode_pattern),
            ("postgres", settings.postgres_mode_pattern),
        )
    }
    for line in reversed(lines):
        for mode, pattern in patterns.items():
            if pattern.search(line):
                return {"source": "log", "mode": mode, "line": line.strip()[:200]}
    return {"source": "log", "error": f"no mode line of {company_id} in {app.out_log}"}


def _env_mode(settings: Settings) -> str | None:
    from resilience.service import envfile

    env = settings.env_path
    if env is None or not env.is_file():
        return None
    try:
        return envfile.current_mode(env)
    except ResilienceError:
        return None


def _switch_run(settings: Settings, company_id: str) -> dict[str, Any] | None:
    """The newest completed `restore.to-files` of the company: its record and loss window."""
    import json

    from resilience.runs.listing import list_runs
    from resilience.runs.record import JOURNAL_JSON

    for run in list_runs(settings.runs_dir, limit=500):
        if run.command != "restore.to-files" or run.company_id != company_id:
            continue
        if run.outcome != "ok":
            continue
        data = json.loads((run.path / JOURNAL_JSON).read_text())
        window: float | None = None
        for step in data.get("steps") or []:
            details = step.get("details") or {}
            if step.get("name") == "export":
                window = 0.0
            elif step.get("name") == "install-mirror":
                window = details.get("loss_window_s", details.get("lag_s"))
            elif step.get("name") == "install-snapshot":
                window = details.get("snapshot_age_s")
        return {"record": str(run.path), "rto_s": run.rto_s, "loss_window_s": window}
    return None


def service_status(settings: Settings, company_id: str | None = None) -> dict[str, Any]:
    from resilience.files.merge import InstalledBase
    from resilience.infra.oplock import current_holder
    from resilience.restore.state import SwitchState
    from resilience.restore.target import STATE_FILE

    company = validate_company_id(company_id or settings.company_id)
    evidence = [e for e in (_health_mode(settings),) if e]
    if not evidence or "mode" not in evidence[0]:
        log = _log_mode(settings, company)
        if log:
            evidence.append(log)
    known = next((e for e in evidence if "mode" in e), None)
    doc: dict[str, Any] = {
        "ok": True,
        "company_id": company,
        "mode": known["mode"] if known else None,
        "mode_source": known["source"] if known else None,
        "mode_evidence": evidence,
        "env_mode": _env_mode(settings),
        "warnings": [],
    }
    root = settings.auth_root
    switch: dict[str, Any] = {"state": "none"}
    if root is not None:
        path = root / STATE_FILE
        try:
            state = SwitchState.read(path)
        except ResilienceError as exc:
            switch = {"state": "unreadable", "path": str(path), "error": str(exc)}
            doc["warnings"].append(
                f"the switch state {path} is unreadable: the way back "
                f"(`{cmd('restore.to-postgres --dry-run')}`) will say what it needs"
            )
        else:
            if state is not None:
                switch = {
                    "state": "switched",
                    "direction": "to-files",
                    "since": state.switched_to_files_at,
                    "company_id": state.company_id,
                    "previous_ref": state.previous_ref,
                    "path": str(path),
                }
        if switch["state"] == "switched":
            try:
                base = InstalledBase.read(root, company)
            except ResilienceError as exc:
                switch["base_error"] = str(exc)
            else:
                if base is not None:
                    switch["source"] = SOURCES.get(base.source, base.source)
                    switch["installed_at"] = base.installed_at
            run = _switch_run(settings, company)
            if run is not None:
                switch["run"] = run["record"]
                switch["rto_s"] = run["rto_s"]
                switch["loss_window_s"] = run["loss_window_s"]
    doc["switch"] = switch
    holder = current_holder(settings, company)
    doc["lock"] = holder.to_dict() if holder else None
    if doc["mode"] and doc["env_mode"] and doc["mode"] != doc["env_mode"]:
        doc["warnings"].append(
            f"the service runs in {doc['mode']} mode, but its .env flags say {doc['env_mode']} "
            "(a restart would change the mode)"
        )
    return doc
