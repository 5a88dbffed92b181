"""BufferJSON: the JSON form of Node Buffers in Baileys auth state (docs/domain.md §3).

A binary field is stored as one of these *Buffer objects*:

- ``{"type": "Buffer", "data": [0, 1, ...]}``: ``Buffer.toJSON()``, what the service writes to
  PostgreSQL today (style ``"array"``);
- ``{"type": "Buffer", "data": "<base64>"}``: Baileys' ``BufferJSON.replacer``, used in files and in
  rows migrated from files (style ``"base64"``);
- ``{"buffer": true, "value": ...}`` (or ``"data"``): older Baileys' reviver form; a missing or
  null ``data``/``value`` is an empty Buffer, as the old reviver had it.

Readers accept every form anywhere in the nesting (:func:`decode` turns them into ``bytes``);
writers produce one style (:func:`encode`). Comparisons go through :func:`canonical`, which
depends only on the decoded value.

Decisions, stated once:

- Base64 is decoded strictly: only the standard alphabet (``A-Z a-z 0-9 + /``), no whitespace, no
  URL-safe characters. Missing ``=`` padding *is* accepted (Node's decoder accepts it, and the
  bytes are unambiguous); a length that no padding can fix (``len % 4 == 1``) is refused.
- Array data must hold integers 0..255 (booleans are not integers here). Node would silently
  wrap out-of-range numbers; we refuse them, because such a value was never written by a Buffer.
- A dict with ``"type": "Buffer"`` but fields other than ``type``/``data`` is refused rather than
  silently losing the extra fields.
- ``JSON.stringify(new Uint8Array(...))`` (``{"0": 1, "1": 2}``, which Baileys 7's reviver turns
  into a Buffer) is *not* decoded: it cannot be told apart from an ordinary map, and passing it
  through untouched keeps every value exactly as stored.
- For :func:`canonical` and :func:`dumps_file` a float with an integral value is written as an
  integer, as JavaScript does (``JSON.stringify(1.0) == "1"``), so a value that went through Node
  keeps its canonical form. NaN and infinities are refused (JSON has no such numbers). Other
  floats are written as Python's ``repr`` (``1e-07``), as they always were: digests recorded
  by earlier exports stay valid.
- Parsing and writing go through orjson (several times faster than the json module on 100k
  values); what orjson refuses or reads differently falls back to the json module, so results
  and error messages are the json module's: integers of 19 digits or more (orjson reads those
  beyond 64 bits as floats), lone surrogates, numbers out of a double's range, nesting deeper
  than 1024.

Error messages name the path inside the value (``value.noiseKey.private``) and never the data.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from typing import Any, Literal

import orjson

from resilience.errors import DataError, InputError

Style = Literal["base64", "array"]

_B64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_IDENT_RE = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_MAX_SAFE_INT = 2**53
#: Integer literals orjson may read differently from the json module (beyond 64 bits it
#: returns a float): text holding a run of 19 digits or more is parsed by the json module.
#: Found by mapping every digit to ``0`` (``bytes.translate``, a table lookup in C: a regular
#: expression took longer than parsing on digit-heavy Buffer arrays).
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUN = b"0" * 19


class _ReprFloat(float):
    """A float that keeps the json module's spelling (``repr``) when orjson writes it."""


def _orjson_default(obj: Any) -> Any:
    if isinstance(obj, _ReprFloat):
        return orjson.Fragment(float.__repr__(obj).encode("ascii"))
    raise TypeError(type(obj).__name__)


def _child(path: str, key: object) -> str:
    """Path of a dict member or list item, short and printable whatever the key holds."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    text = str(key)
    if _IDENT_RE.fullmatch(text) and len(text) <= 40:
        return f"{path}.{text}"
    shown = text if len(text) <= 40 else text[:37] + "..."
    return f"{path}[{shown!r}]"


def _root(where: str) -> str:
    """The caller's name for the root (may hold a network key id): printable and short."""
    if where.isprintable() and len(where) <= 80:
        return where
    return repr(where[:77]) + ("..." if len(where) > 77 else "")


def _bytes_from_b64(text: str, path: str) -> bytes:
    if not _B64_RE.fullmatch(text) or len(text.rstrip("=")) % 4 == 1:
        raise DataError(f"{path}: Buffer data is a string but not valid base64")
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise DataError(f"{path}: Buffer data is a string but not valid base64") from None


def _bytes_from_list(items: list[Any], path: str) -> bytes:
    if set(map(type, items)) <= {int}:  # the common case, checked in C; bools are not ints here
        try:
            return bytes(items)
        except ValueError:
            pass  # out of range: the loop below names the item
    for index, item in enumerate(items):
        if isinstance(item, bool) or not isinstance(item, int):
            raise DataError(
                f"{path}: Buffer data item [{index}] is not an integer 0..255 "
                f"(got {type(item).__name__})"
            )
        if not 0 <= item <= 255:
            raise DataError(f"{path}: Buffer data item [{index}] is out of the range 0..255")
    return bytes(items)


def _buffer_payload(obj: Mapping[str, Any]) -> tuple[bool, Any]:
    """(is a Buffer object, its raw payload). Raises on a Buffer object with stray fields."""
    if obj.get("type") == "Buffer":
        extra = set(obj) - {"type", "data"}
        if extra:
            return True, _StrayFields(sorted(extra))
        return True, obj.get("data")
    if obj.get("buffer") is True:
        extra = set(obj) - {"buffer", "value", "data", "type"}
        if extra:
            return True, _StrayFields(sorted(extra))
        payload = obj.get("data")
        return True, payload if payload is not None else obj.get("value")
    return False, None


class _StrayFields:
    def __init__(self, names: list[str]) -> None:
        self.names = names


def _buffer_bytes(payload: Any, path: str) -> bytes:
    if payload is None:
        return b""
    if isinstance(payload, _StrayFields):
        shown = ", ".join(repr(n[:20]) for n in payload.names[:5])
        raise DataError(f"{path}: Buffer object has unexpected fields ({shown})")
    if isinstance(payload, str):
        return _bytes_from_b64(payload, path)
    if isinstance(payload, list):
        return _bytes_from_list(payload, path)
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    raise DataError(
        f"{path}: Buffer data is neither a byte array nor a base64 string "
        f"(got {type(payload).__name__})"
    )


def decode(obj: Any, *, where: str = "value") -> Any:
    """Return ``obj`` with every Buffer object (any encoding, any depth) replaced by ``bytes``.

    Dicts and lists are copied; everything else is returned as is. ``where`` names the root in
    error messages (shortened and escaped if it is long or not printable). Raises
    :class:`DataError` for a Buffer object whose data is not bytes.
    """
    return _decode(obj, _root(where))


def _decode(obj: Any, path: str) -> Any:
    if isinstance(obj, dict):
        is_buffer, payload = _buffer_payload(obj)
        if is_buffer:
            return _buffer_bytes(payload, path)
        return {key: _decode(item, _child(path, key)) for key, item in obj.items()}
    if isinstance(obj, list | tuple):
        return [_decode(item, _child(path, i)) for i, item in enumerate(obj)]
    if isinstance(obj, bytearray | memoryview):
        return bytes(obj)
    return obj


def encode(value: Any, style: Style, *, where: str = "value") -> Any:
    """Return ``value`` with every binary field written as a Buffer object in ``style``.

    Accepts ``bytes``/``bytearray``/``memoryview`` and Buffer objects in any encoding (so a raw
    stored value can be re-encoded directly). ``"base64"`` is what Baileys writes to files,
    ``"array"`` what the service writes to PostgreSQL.
    """
    if style not in ("base64", "array"):
        raise InputError(f"unknown Buffer style {style!r}: use 'base64' or 'array'")
    return _encode(value, style, _root(where), js_numbers=False)


def _encode(value: Any, style: Style, path: str, *, js_numbers: bool) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        if style == "base64":
            return {"type": "Buffer", "data": base64.b64encode(raw).decode("ascii")}
        return {"type": "Buffer", "data": list(raw)}
    if isinstance(value, dict):
        is_buffer, payload = _buffer_payload(value)
        if is_buffer:
            return _encode(_buffer_bytes(payload, path), style, path, js_numbers=js_numbers)
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InputError(f"{path}: object key of type {type(key).__name__} is not a string")
            out[key] = _encode(item, style, _child(path, key), js_numbers=js_numbers)
        return out
    if isinstance(value, list | tuple):
        return [
            _encode(item, style, _child(path, i), js_numbers=js_numbers)
            for i, item in enumerate(value)
        ]
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DataError(f"{path}: number is NaN or infinite, which JSON cannot hold")
        if js_numbers:
            if value.is_integer() and abs(value) < _MAX_SAFE_INT:
                return int(value)
            return _ReprFloat(value)
        return value
    raise InputError(f"{path}: cannot store a value of type {type(value).__name__} as JSON")


def _dumps(value: Any, *, sort_keys: bool) -> bytes:
    """Compact UTF-8 JSON, through orjson; the json module where orjson refuses the value
    (integers beyond 64 bits, lone surrogates): same bytes either way (pinned by a test)."""
    try:
        return orjson.dumps(
            value, option=orjson.OPT_SORT_KEYS if sort_keys else 0, default=_orjson_default
        )
    except orjson.JSONEncodeError:
        return _dumps_json(value, sort_keys=sort_keys)


def json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON of an :func:`encode`\\ d value, keys in their order (orjson, the
    json module where orjson refuses): what goes into a jsonb column (``Jsonb(value,
    dumps=json_bytes)``), several times faster than psycopg's default ``json.dumps``."""
    return _dumps(value, sort_keys=False)


def _dumps_json(value: Any, *, sort_keys: bool) -> bytes:
    text = json.dumps(
        value, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (possible in JSON from JavaScript) has no UTF-8 form: escape it as
        # JSON.stringify does; the result still parses to the same string.
        return json.dumps(
            value, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        ).encode("ascii")


def canonical(value: Any, *, where: str = "value") -> bytes:
    """One byte string per decoded value, whichever Buffer encoding (or bytes) it arrives in.

    Base64 Buffers, sorted keys, compact separators, UTF-8, integral floats as integers.
    Equal decoded values give equal canonical forms.
    """
    return _dumps(_canonical_walk(value, where), sort_keys=True)


def _canonical_walk(value: Any, where: str) -> Any:
    """``_encode(value, "base64", ..., js_numbers=True)``, by the quick walk where it can."""
    try:
        return _quick_encoded(value)
    except _Unusual:
        return _encode(value, "base64", _root(where), js_numbers=True)


def dumps_file(value: Any) -> bytes:
    """What ``JSON.stringify(value, BufferJSON.replacer)`` writes: compact, base64 Buffers,
    keys in their given order."""
    return _dumps(_encode(value, "base64", "value", js_numbers=True), sort_keys=False)


def _refuse_constant(name: str) -> Any:
    raise DataError(f"invalid JSON: {name} is not a JSON number")


def file_forms(value: Any, *, where: str = "value") -> tuple[bytes, bytes]:
    """(:func:`dumps_file`, :func:`canonical`) of one value from one encoding walk: what an
    export writes and what it fingerprints. ``value`` may hold Buffer objects in either
    encoding (a value as parsed, not decoded) or bytes; a Buffer whose data is not bytes
    raises :class:`DataError` naming ``where``."""
    return file_forms_plain(value, where=where)[:2]


#: a run of 16 digits: an integer that may be beyond a double's exact range (2**53)
_LONG_INT_RUN = b"0" * 16


def file_forms_plain(value: Any, *, where: str = "value") -> tuple[bytes, bytes, bool]:
    """:func:`file_forms`, and whether the value is *plain*: dicts, lists, strings, booleans,
    null, integers below 10**15 and Buffers in the base64 form :func:`dumps_file` writes (no
    float, no legacy Buffer form). Two plain values, or a plain value and a stored row, whose
    JSON parses to equal jsonb hold the same decoded value (jsonb compares numbers by value,
    which only floats and integers beyond 2**53 could tell apart); the way back relies on it
    (:mod:`resilience.files.wayback`)."""
    try:
        encoded = _quick_encoded(value)
        plain = True
    except _Unusual:
        encoded = _encode(value, "base64", _root(where), js_numbers=True)
        plain = False
    payload = _dumps(encoded, sort_keys=False)
    if plain:
        plain = _LONG_INT_RUN not in payload.translate(_DIGITS_TO_ZERO)
    return payload, _dumps(encoded, sort_keys=True), plain


def db_forms(value: Any, *, where: str = "value", style: Style = "array") -> tuple[Any, bytes]:
    """(:func:`encode` in ``style``, :func:`canonical`) of one value: what an import writes to
    PostgreSQL and what it fingerprints, from one walk (base64 decoded once). In the
    ``"base64"`` style the stored form is the canonical walk's own (the quick walk holds no
    float, the only thing ``js_numbers`` changes), so either style costs the same walk."""
    if style not in ("base64", "array"):
        raise InputError(f"unknown Buffer style {style!r}: use 'base64' or 'array'")
    try:
        if style == "base64":  # the stored form is the quick walk's own: no array form
            encoded = _quick_encoded(value)
            return encoded, _dumps(encoded, sort_keys=True)
        stored, encoded = _quick_forms(value)
    except _Unusual:
        path = _root(where)
        stored = _encode(value, style, path, js_numbers=False)
        encoded = _encode(stored, "base64", path, js_numbers=True)
        return stored, _dumps(encoded, sort_keys=True)
    return (stored if style == "array" else encoded), _dumps(encoded, sort_keys=True)


# --- the quick walk -----------------------------------------------------------------------------
# file_forms and db_forms run once per key of an export or import (100k keys: seconds of CPU).
# Nearly every key is dicts, strings, integers and well-formed Buffers: _quick_forms handles
# exactly those, without building the error path of every node, and leaves anything else
# (floats, legacy Buffer forms, bad data: every case with a rule or an error message) to
# _encode by raising _Unusual. Its results equal _encode's (pinned by a property test).


class _Unusual(Exception):
    """A value the quick walk leaves to :func:`_encode`."""


def _quick_bytes(obj: dict[str, Any]) -> bytes:
    """The bytes of a ``{"type": "Buffer", "data": ...}`` object that is well formed."""
    if len(obj) != 2 or "data" not in obj:
        raise _Unusual
    data = obj["data"]
    if type(data) is str:
        try:
            return _bytes_from_b64(data, "")
        except DataError:
            raise _Unusual from None
    if type(data) is list and set(map(type, data)) <= {int}:
        try:
            return bytes(data)
        except ValueError:
            raise _Unusual from None
    raise _Unusual


def _quick_forms(value: Any) -> tuple[Any, Any]:
    """(``_encode(value, "array", ...)``, ``_encode(value, "base64", ..., js_numbers=True)``)
    for the common shapes, in one walk."""
    kind = type(value)
    if kind is dict:
        if value.get("type") == "Buffer":
            raw = _quick_bytes(value)
            return (
                {"type": "Buffer", "data": list(raw)},
                {"type": "Buffer", "data": base64.b64encode(raw).decode("ascii")},
            )
        if value.get("buffer") is True:
            raise _Unusual
        stored: dict[str, Any] = {}
        encoded: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _Unusual
            stored[key], encoded[key] = _quick_forms(item)
        return stored, encoded
    if kind is str or kind is int or kind is bool or value is None:
        return value, value
    if kind is list:
        pairs = [_quick_forms(item) for item in value]
        return [p[0] for p in pairs], [p[1] for p in pairs]
    if kind is bytes:
        return (
            {"type": "Buffer", "data": list(value)},
            {"type": "Buffer", "data": base64.b64encode(value).decode("ascii")},
        )
    raise _Unusual


def _quick_encoded(value: Any) -> Any:
    """``_quick_forms(value)[1]`` without the array form beside it (what a canonical form, a
    file, or a row in the base64 style needs)."""
    kind = type(value)
    if kind is dict:
        if value.get("type") == "Buffer":
            data = base64.b64encode(_quick_bytes(value)).decode("ascii")
            return {"type": "Buffer", "data": data}
        if value.get("buffer") is True:
            raise _Unusual
        encoded: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _Unusual
            encoded[key] = _quick_encoded(item)
        return encoded
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is list:
        return [_quick_encoded(item) for item in value]
    if kind is bytes:
        return {"type": "Buffer", "data": base64.b64encode(value).decode("ascii")}
    raise _Unusual


def loads(text: str | bytes, *, where: str = "value") -> Any:
    """Parse JSON text and :func:`decode` it. Invalid JSON or UTF-8 raises :class:`DataError`."""
    where = _root(where)
    return decode(parse(text, where=where), where=where)


def _utf8(text: str | bytes) -> bytes | None:
    """``text`` as bytes for orjson; None for a str that has no UTF-8 form (a lone surrogate,
    which the json module reads)."""
    if isinstance(text, str):
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return bytes(text)


def parse(text: str | bytes, *, where: str = "value") -> Any:
    """Parse JSON text, Buffer objects left as they are (:func:`loads` decodes them too).
    Invalid JSON or UTF-8 raises :class:`DataError`."""
    where = _root(where)
    raw = _utf8(text)
    if raw is not None and _LONG_RUN not in raw.translate(_DIGITS_TO_ZERO):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # the json module names the error (or reads what orjson refuses)
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{where}: not valid UTF-8 (byte {exc.start})") from None
    try:
        parsed = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{where}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise DataError(f"{where}: invalid JSON (nested too deeply)") from None
    return parsed
