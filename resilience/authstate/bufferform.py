"""Which Buffer form a company's rows use, and which one this tool writes them in.

A Buffer is stored in PostgreSQL in one of two forms (:mod:`resilience.authstate.codec`):
``{"type": "Buffer", "data": [0, 1, ...]}`` (``array``: ``Buffer.toJSON()``) or
``{"type": "Buffer", "data": "<base64>"}`` (``base64``: Baileys' ``BufferJSON.replacer``). This
tool reads both; a service may not: Baileys 7's ``BufferJSON.reviver`` revives only the base64
form, so a service that reads its rows with it gets a plain object for every array Buffer.

Every writer of rows here (the import, ``backup.restore --company``, ``cleanup.legacy``'s moves,
``cleanup.buffer-form``) writes the form :func:`choose` picks: the one pinned by the setting,
or with ``auto`` the form most of the company's rows use now (its key rows and its creds row;
base64 for a company without rows, as ``BufferJSON`` writes; base64 on a tie). Rows in the
other form are reported (the minority), never rewritten merely for their form by the import.

A row's form is read by the server from its JSON text (one pass, no Buffer decoded):

- ``array``: some member ``data`` holds an array, none holds a string;
- ``base64``: some member ``data`` holds a string, none an array;
- ``mixed``: both, or a Buffer of older Baileys (``{"buffer": true, ...}``), which neither
  Baileys 7 nor a reader of one form revives;
- ``none``: no Buffer at all (``lid-mapping``, ``device-list``): readable in any form.

About 1 s of the server's time per 100k rows (measured on a 2-core machine), only for ``auto``
on a company that has rows, and for the reports of ``diagnose`` and the monitor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from resilience.authstate.codec import Style, encode, json_bytes, parse
from resilience.config import BufferFormSetting, validate_company_id
from resilience.errors import InputError

RowForm = Literal["array", "base64", "mixed", "none"]
ROW_FORMS: tuple[RowForm, ...] = ("array", "base64", "mixed", "none")
SETTING = "RESILIENCE_DB_BUFFER_FORM"

_ARRAY = "strpos(t, '\"data\": [') > 0"
_BASE64 = 'strpos(t, \'"data": "\') > 0'
_OLD = "strpos(t, '\"buffer\": true') > 0"
#: the form of one row from ``t``, its value's jsonb text (jsonb prints ``"key": value``)
FORM_OF_TEXT = (
    f"CASE WHEN {_OLD} OR ({_ARRAY} AND {_BASE64}) THEN 'mixed' WHEN {_ARRAY} THEN 'array' "
    f"WHEN {_BASE64} THEN 'base64' ELSE 'none' END"
)
#: a row the service reading ``style`` cannot read, as a regular expression over the jsonb text
UNREADABLE_RE: dict[Style, str] = {
    "base64": r'"data": \[|"buffer": true',
    "array": r'"data": "|"buffer": true',
}
_COUNT_SQL = (
    f"SELECT part, {FORM_OF_TEXT}, count(*) FROM ("
    "SELECT 1 AS part, value::text AS t FROM whatsapp_keys WHERE company_id = %(c)s "
    "UNION ALL SELECT 0, creds::text FROM whatsapp_auth WHERE company_id = %(c)s OFFSET 0"
    ") rows GROUP BY 1, 2"
)


def form_of_text(text: str) -> RowForm:
    """:data:`FORM_OF_TEXT` in Python: the form of a row from its value's jsonb text."""
    return _form(text, '"data": [', '"data": "', '"buffer": true')


def form_of_compact(raw: bytes) -> RowForm:
    """The form a row holding the value of compact JSON ``raw`` (``"key":value``, as files
    are written) has: the same as :func:`form_of_text` of that row's jsonb text."""
    return _form(raw, b'"data":[', b'"data":"', b'"buffer":true')


def _form(text: Any, array: Any, base64: Any, old: Any) -> RowForm:
    has_array, has_base64 = array in text, base64 in text
    if old in text or (has_array and has_base64):
        return "mixed"
    return "array" if has_array else "base64" if has_base64 else "none"


def other(style: Style) -> Style:
    return "array" if style == "base64" else "base64"


@dataclass(frozen=True)
class FormCounts:
    """A company's rows per form: its key rows, and the form of its creds row (None: none)."""

    keys: dict[RowForm, int] = field(default_factory=dict)
    creds: RowForm | None = None

    @property
    def rows(self) -> dict[RowForm, int]:
        """Key rows and the creds row together, per form."""
        out = {form: self.keys.get(form, 0) for form in ROW_FORMS}
        if self.creds is not None:
            out[self.creds] += 1
        return out

    @property
    def total(self) -> int:
        return sum(self.rows.values())

    def majority(self) -> Style:
        """The form most rows use; base64 when none has a Buffer or on a tie."""
        rows = self.rows
        return "array" if rows["array"] > rows["base64"] else "base64"

    def unreadable(self, style: Style) -> dict[str, int]:
        """Rows a service reading only ``style`` cannot read, per form (none when empty)."""
        rows = self.rows
        return {form: rows[form] for form in (other(style), "mixed") if rows[form]}

    def to_dict(self) -> dict[str, Any]:
        return {
            "keys": {form: self.keys.get(form, 0) for form in ROW_FORMS},
            "creds": self.creds,
        }


@dataclass(frozen=True)
class FormChoice:
    """The form rows of one company are written in, and why."""

    setting: BufferFormSetting
    style: Style
    counts: FormCounts | None = None  # counted for ``auto``

    @property
    def minority(self) -> dict[str, int]:
        """With ``auto``: the rows that use another form than the one chosen (reported)."""
        return {} if self.counts is None else self.counts.unreadable(self.style)

    def to_dict(self) -> dict[str, Any]:
        return {
            "setting": self.setting,
            "form": self.style,
            "counts": None if self.counts is None else self.counts.to_dict(),
            "minority": self.minority,
        }

    def describe(self) -> str:
        """One clause for a report: ``base64 (auto: 1200 of 1313 rows; minority: 13 array)``."""
        if self.counts is None:
            return f"{self.style} ({SETTING}={self.setting})"
        rows = self.counts.rows
        if not rows[self.style]:
            return f"{self.style} (auto: no row has a Buffer yet)"
        text = f"{self.style} (auto: {rows[self.style]} of {self.counts.total} rows"
        minority = self.minority
        if minority:
            text += "; minority: " + ", ".join(f"{n} {form}" for form, n in minority.items())
        return text + ")"


def count_forms(conn: Any, company_id: str) -> FormCounts:
    """The company's rows per form, read by the server in one statement."""
    validate_company_id(company_id)
    keys: dict[RowForm, int] = {}
    creds: RowForm | None = None
    for part, form, count in conn.execute(_COUNT_SQL, {"c": company_id}).fetchall():
        if part == 0:
            creds = form
        else:
            keys[form] = int(count)
    return FormCounts(keys, creds)


def pinned(setting: BufferFormSetting) -> Style | None:
    """The form the setting pins, None for ``auto``; InputError for anything else."""
    if setting == "auto":
        return None
    if setting in ("array", "base64"):
        return setting
    raise InputError(f"unknown Buffer form {str(setting)[:20]!r}: use auto, array or base64")


def choose(setting: BufferFormSetting, counts: FormCounts | None = None) -> FormChoice:
    """The form to write: the pinned one, or with ``auto`` the majority of ``counts``."""
    style = pinned(setting)
    if style is not None:
        return FormChoice(setting, style)
    counts = counts or FormCounts()
    return FormChoice(setting, counts.majority(), counts)


def choose_for(conn: Any, company_id: str, setting: BufferFormSetting) -> FormChoice:
    """:func:`choose` for one company, its rows counted only when ``auto`` needs them."""
    if pinned(setting) is not None:
        return choose(setting)
    return choose(setting, count_forms(conn, company_id))


def in_form(text: str, style: Style, *, where: str) -> str:
    """A stored value (JSON text) with every Buffer in ``style``; the decoded value is the same
    (a value that does not decode raises :class:`DataError` naming ``where``)."""
    return json_bytes(encode(parse(text, where=where), style, where=where)).decode("utf-8")
