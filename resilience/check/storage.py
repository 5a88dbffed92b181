"""S3: a probe object per region, then its newest and newest valid backup."""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime
from typing import Any

from resilience.check.findings import (
    S3_BUDGET,
    S3_CONNECT_TIMEOUT,
    S3_READ_TIMEOUT,
    Finding,
    age_text,
)
from resilience.config import Settings
from resilience.infra.commandline import operator_command as cmd

#: Backups are taken hourly (`schedule.install`): older than this warns, and fails past a day.
BACKUP_WARN_AGE = 2 * 3600.0
BACKUP_FAIL_AGE = 26 * 3600.0
#: Validation runs daily: the newest valid backup older than this warns.
VALID_BACKUP_WARN_AGE = 2 * 86400.0


def probe_region(settings: Settings, store: Any) -> list[Finding]:
    from resilience.backup.catalog import list_region
    from resilience.backup.listing import last_validations
    from resilience.infra.s3 import StorageError

    key = f"check/probe-{socket.gethostname()}-{uuid.uuid4().hex[:12]}"
    payload = uuid.uuid4().bytes * 64
    fix = (
        f"check RESILIENCE_S3_ENDPOINT_{store.name.upper()}, RESILIENCE_S3_BUCKET_"
        f"{store.name.upper()} and the S3 credentials (RESILIENCE_S3_ACCESS_KEY_ID, "
        "RESILIENCE_S3_SECRET_ACCESS_KEY)"
    )
    try:
        store.put_bytes(key, payload)  # with SSE (AES256), as every backup
        try:
            if store.get_bytes(key) != payload:
                return [Finding(f"s3-{store.name}", "fail", "the probe read back differs", fix)]
        finally:
            store.delete(key)
    except StorageError as exc:
        return [Finding(f"s3-{store.name}", "fail", str(exc), fix)]
    findings = [
        Finding(
            f"s3-{store.name}",
            "ok",
            f"{store.bucket} at {store.endpoint_url}: put (SSE), get and delete of a probe",
        )
    ]
    try:
        listing = list_region(store)
    except StorageError as exc:
        return [*findings, Finding(f"backups-{store.name}", "fail", str(exc), fix)]
    now = datetime.now(UTC)
    verdicts = last_validations(settings.backup_validation_log)
    name = f"backups-{store.name}"
    if not listing.manifests:
        return [
            *findings,
            Finding(name, "warn", "no backup yet", f"`{cmd('backup.run')}`, then schedule it"),
        ]
    newest = listing.manifests[0]
    age = (now - newest.created).total_seconds()
    valid = [m for m in listing.manifests if verdicts.get((store.name, m.id)) is True]
    text = f"newest {newest.id}, {age_text(age)} old"
    if valid:
        valid_age = (now - valid[0].created).total_seconds()
        text += f"; newest valid {valid[0].id}, {age_text(valid_age)} old"
    else:
        valid_age = None
        text += "; none validated"
    if age > BACKUP_FAIL_AGE:
        findings.append(Finding(name, "fail", text, f"`{cmd('backup.run')}`; is the schedule on?"))
    elif age > BACKUP_WARN_AGE:
        findings.append(Finding(name, "warn", text, f"`{cmd('backup.run')}`; is the schedule on?"))
    elif valid_age is None or valid_age > VALID_BACKUP_WARN_AGE:
        findings.append(Finding(name, "warn", text, f"`{cmd('backup.validate')}`"))
    else:
        findings.append(Finding(name, "ok", text))
    return findings


def bounded_regions(settings: Settings) -> list[Any]:
    from resilience.infra.s3 import regions_from_settings

    quick = settings.model_copy(
        update={
            "s3_connect_timeout": min(settings.s3_connect_timeout, S3_CONNECT_TIMEOUT),
            "s3_read_timeout": min(settings.s3_read_timeout, S3_READ_TIMEOUT),
            "s3_max_attempts": 1,
            "s3_region_timeout": min(settings.s3_region_timeout, S3_BUDGET),
        }
    )
    return regions_from_settings(quick)
