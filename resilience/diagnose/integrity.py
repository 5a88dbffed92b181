"""Is the data valid? (scenario 2). Per company: creds present and holding what Baileys needs,
every key value decoding (BufferJSON in either encoding), no legacy collision left unresolved,
and, with ``RESILIENCE_DB_BUFFER_FORM`` pinned, no row holding a Buffer in a form the service
does not read (counted per form: :mod:`resilience.authstate.bufferform`; with ``auto`` the
counts are in the report, never a problem: a service may well read both forms). Rows are
read in batches through a server-side cursor; only ``(type, id)`` of bad rows are reported,
never their values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from resilience.authstate.bufferform import count_forms, pinned
from resilience.authstate.codec import decode
from resilience.authstate.pgconn import Conn
from resilience.config import BufferFormSetting
from resilience.errors import DataError
from resilience.maintenance.legacy import report_company

#: what Baileys' initAuthCreds always holds and a session cannot do without
REQUIRED_CREDS = (
    "noiseKey",
    "pairingEphemeralKeyPair",
    "signedIdentityKey",
    "signedPreKey",
    "registrationId",
    "advSecretKey",
)
SHOWN = 5
BATCH = 2000


@dataclass
class Integrity:
    company_id: str
    creds: str  # ok | missing | invalid
    creds_problems: list[str] = field(default_factory=list)
    keys_checked: int = 0
    bad_keys: int = 0
    bad_examples: list[dict[str, str]] = field(default_factory=list)
    unresolved_legacy: list[dict[str, str]] = field(default_factory=list)
    #: the Buffer form setting, the rows per form, and the rows the service cannot read
    #: (per form; only with the form pinned)
    buffer_form: str = "auto"
    buffer_forms: dict[str, Any] | None = None
    unreadable: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            self.creds == "ok"
            and not self.bad_keys
            and not self.unresolved_legacy
            and not self.unreadable
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "company_id": self.company_id,
            "ok": self.ok,
            "creds": self.creds,
            "creds_problems": self.creds_problems,
            "keys_checked": self.keys_checked,
            "bad_keys": self.bad_keys,
            "bad_examples": self.bad_examples,
            "unresolved_legacy": self.unresolved_legacy[:SHOWN],
            "unresolved_legacy_count": len(self.unresolved_legacy),
            "buffer_form": self.buffer_form,
            "buffer_forms": self.buffer_forms,
            "unreadable": self.unreadable,
        }


def creds_problems(raw: Any) -> list[str]:
    """What is wrong with stored creds ([] when Baileys could use them)."""
    try:
        creds = decode(raw, where="creds")
    except DataError as exc:
        return [str(exc)]
    if not isinstance(creds, dict):
        return [f"creds are a {type(creds).__name__}, not an object"]
    missing = [name for name in REQUIRED_CREDS if creds.get(name) in (None, {}, "")]
    return [f"missing {name}" for name in missing]


def check_integrity(
    conn: Conn, company_id: str, buffer_form: BufferFormSetting = "auto"
) -> Integrity:
    row = conn.execute(
        "SELECT creds FROM whatsapp_auth WHERE company_id = %s", (company_id,)
    ).fetchone()
    result = Integrity(company_id, "missing" if row is None else "ok")
    if row is not None:
        result.creds_problems = creds_problems(row[0])
        if result.creds_problems:
            result.creds = "invalid"
    with conn.transaction(), conn.cursor(name="diagnose_keys") as cursor:
        cursor.itersize = BATCH
        cursor.execute(
            "SELECT key_type, key_id, value FROM whatsapp_keys WHERE company_id = %s",
            (company_id,),
        )
        for key_type, key_id, value in cursor:
            result.keys_checked += 1
            try:
                decode(value, where=f"{key_type}/{key_id}")
            except DataError:
                result.bad_keys += 1
                if len(result.bad_examples) < SHOWN:
                    result.bad_examples.append({"type": key_type, "id": key_id})
    legacy = report_company(conn, company_id)
    result.unresolved_legacy = [{"type": t, "id": i} for t, i in legacy.unresolved]
    counts = count_forms(conn, company_id)
    result.buffer_form = buffer_form
    result.buffer_forms = counts.to_dict()
    style = pinned(buffer_form)
    if style is not None:
        result.unreadable = counts.unreadable(style)
    return result
