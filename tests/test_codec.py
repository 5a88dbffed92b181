"""BufferJSON codec: both encodings anywhere in the nesting, canonical form, bad input."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience.authstate import codec
from resilience.errors import DataError, InputError

# Keys that could turn an ordinary dict into a Buffer object are kept out of generated dicts.
_keys = st.text(max_size=12).filter(lambda k: k not in ("type", "buffer"))
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_leaves = _scalars | st.binary(max_size=40)
values = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=25,
)


def _b64_unpadded(raw: bytes) -> Any:
    return {"type": "Buffer", "data": base64.b64encode(raw).decode().rstrip("=")}


_ENCODINGS = [
    lambda raw: raw,
    lambda raw: {"type": "Buffer", "data": list(raw)},
    lambda raw: {"type": "Buffer", "data": base64.b64encode(raw).decode()},
    _b64_unpadded,
    lambda raw: {"buffer": True, "value": base64.b64encode(raw).decode()},
    lambda raw: {"buffer": True, "value": list(raw)},
    lambda raw: bytearray(raw),
]


@st.composite
def mixed(draw: st.DrawFn) -> tuple[Any, Any]:
    """(decoded value, the same value with each Buffer in an encoding drawn independently)."""
    value = draw(values)

    def scramble(node: Any) -> Any:
        if isinstance(node, bytes):
            return draw(st.sampled_from(_ENCODINGS))(node)
        if isinstance(node, dict):
            return {k: scramble(v) for k, v in node.items()}
        if isinstance(node, list):
            return [scramble(v) for v in node]
        return node

    return value, scramble(value)


@given(values, st.sampled_from(["base64", "array"]))
def test_decode_inverts_encode(value: Any, style: codec.Style) -> None:
    encoded = codec.encode(value, style)
    assert codec.decode(encoded) == value
    # The encoded form is plain JSON and survives a text round trip.
    assert codec.decode(json.loads(json.dumps(encoded))) == value
    assert codec.loads(json.dumps(encoded)) == value


@given(values)
def test_encode_styles(value: Any) -> None:
    def buffers(node: Any) -> list[Any]:
        if isinstance(node, dict):
            if node.get("type") == "Buffer":
                return [node["data"]]
            return [b for v in node.values() for b in buffers(v)]
        if isinstance(node, list):
            return [b for v in node for b in buffers(v)]
        return []

    assert all(isinstance(d, str) for d in buffers(codec.encode(value, "base64")))
    assert all(isinstance(d, list) for d in buffers(codec.encode(value, "array")))


@given(values)
def test_canonical_same_for_both_encodings(value: Any) -> None:
    form = codec.canonical(value)
    assert codec.canonical(codec.encode(value, "base64")) == form
    assert codec.canonical(codec.encode(value, "array")) == form
    assert codec.decode(json.loads(form)) == value


@given(mixed())
def test_mixed_encodings_decode_to_one_value(pair: tuple[Any, Any]) -> None:
    value, scrambled = pair
    assert codec.decode(scrambled) == value
    assert codec.canonical(scrambled) == codec.canonical(value)
    assert codec.decode(codec.encode(scrambled, "array")) == value


@given(st.binary(max_size=32), st.binary(max_size=32))
def test_canonical_tells_bytes_apart(a: bytes, b: bytes) -> None:
    same = codec.canonical({"k": {"type": "Buffer", "data": list(a)}}) == codec.canonical(
        {"k": {"type": "Buffer", "data": base64.b64encode(b).decode()}}
    )
    assert same == (a == b)


def test_canonical_is_sorted_compact_utf8() -> None:
    value = {"b": [1, 2.0, "ж"], "a": {"type": "Buffer", "data": [255]}}
    assert codec.canonical(value) == '{"a":{"data":"/w==","type":"Buffer"},"b":[1,2,"ж"]}'.encode()


def test_dumps_file_matches_buffer_json_replacer() -> None:
    value = {
        "noiseKey": {"private": b"\x00\x01", "public": {"type": "Buffer", "data": [2]}},
        "n": 1,
    }
    assert codec.dumps_file(value) == (
        b'{"noiseKey":{"private":{"type":"Buffer","data":"AAE="},'
        b'"public":{"type":"Buffer","data":"Ag=="}},"n":1}'
    )


def test_legacy_reviver_forms() -> None:
    assert codec.decode({"buffer": True, "value": "AQI="}) == b"\x01\x02"
    assert codec.decode({"buffer": True, "data": [1, 2]}) == b"\x01\x02"
    assert codec.decode({"buffer": True}) == b""
    assert codec.decode({"type": "Buffer"}) == b""
    assert codec.decode({"type": "Buffer", "data": None}) == b""
    assert codec.decode({"type": "Buffer", "data": ""}) == b""
    assert codec.decode({"buffer": False, "value": "AQI="}) == {"buffer": False, "value": "AQI="}
    assert codec.decode({"type": "buffer", "data": [1]}) == {"type": "buffer", "data": [1]}


def test_uint8array_json_passes_through() -> None:
    # JSON.stringify(new Uint8Array([1, 2])) cannot be told apart from an ordinary map.
    assert codec.decode({"0": 1, "1": 2}) == {"0": 1, "1": 2}


SECRET_B64 = "c2VjcmV0LWtleS1tYXRlcmlhbA!"
BAD_DATA = [
    pytest.param(SECRET_B64, id="non-base64-char"),
    pytest.param("c2VjcmV0 LWtleQ==", id="whitespace"),
    pytest.param("c2VjcmV0LWtleQ-_", id="url-safe"),
    pytest.param("c2VjcmV0L", id="impossible-length"),
    pytest.param("c2Vj=mV0", id="padding-inside"),
    pytest.param([1, 2, 256], id="int-too-big"),
    pytest.param([1, -1], id="negative"),
    pytest.param([1, True], id="bool"),
    pytest.param([1, 2.5], id="float"),
    pytest.param([1, "2"], id="string-item"),
    pytest.param({"0": 1}, id="object"),
    pytest.param(42, id="number"),
    pytest.param(True, id="bool-data"),
]


@pytest.mark.parametrize("data", BAD_DATA)
def test_bad_buffer_data_is_one_line_without_the_data(data: Any) -> None:
    stored = {"noiseKey": {"private": {"type": "Buffer", "data": data}}}
    with pytest.raises(DataError) as caught:
        codec.decode(stored)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("value.noiseKey.private:")
    assert "c2Vj" not in message and "256" not in message
    with pytest.raises(DataError):
        codec.loads(json.dumps(stored))
    with pytest.raises(DataError):
        codec.canonical(stored)
    with pytest.raises(DataError):
        codec.encode(stored, "array")


def test_path_names_list_items_and_odd_keys() -> None:
    stored = {"keys": [{"ok": b""}, {"weird key/..": {"type": "Buffer", "data": "!!"}}]}
    with pytest.raises(DataError, match=r"^value\.keys\[1\]\['weird key/\.\.'\]:"):
        codec.decode(stored)
    with pytest.raises(DataError, match=r"^row\.keys\[1\]"):
        codec.decode(stored, where="row")


def test_buffer_with_stray_fields_is_refused() -> None:
    with pytest.raises(DataError, match="unexpected fields"):
        codec.decode({"type": "Buffer", "data": [1], "extra": 1})


@pytest.mark.parametrize(
    "text",
    [b'{"a":', b"\xff\xfe{}", b"NaN", b'{"a": Infinity}', b"", b"\xef\xbb\xbf{}"],
    ids=["truncated", "bad-utf8", "nan", "infinity", "empty", "bom"],
)
def test_loads_refuses_invalid_json(text: bytes) -> None:
    with pytest.raises(DataError) as caught:
        codec.loads(text)
    assert "\n" not in str(caught.value)


def test_encode_refuses_what_json_cannot_hold() -> None:
    with pytest.raises(DataError, match=r"value\.x: .*NaN"):
        codec.canonical({"x": float("nan")})
    with pytest.raises(InputError, match="set"):
        codec.encode({"x": {1, 2}}, "base64")
    with pytest.raises(InputError, match="key"):
        codec.encode({1: "a"}, "base64")
    with pytest.raises(InputError, match="style"):
        codec.encode(b"", "hex")  # type: ignore[arg-type]


def test_integral_floats_are_canonical_integers() -> None:
    # JavaScript writes 1.0 as 1: a value that went through Node keeps its canonical form.
    assert codec.canonical({"t": 1.0}) == codec.canonical({"t": 1})
    assert codec.canonical({"t": 1.5}) != codec.canonical({"t": 1})


def test_lone_surrogate_is_escaped_not_lost() -> None:
    value = {"s": "a\ud800b"}
    assert codec.loads(codec.dumps_file(value)) == value
    assert codec.loads(codec.canonical(value)) == value


def test_root_name_is_kept_short_and_printable() -> None:
    bad = {"type": "Buffer", "data": "!!"}
    with pytest.raises(DataError) as caught:
        codec.decode(bad, where="session/" + "\n" * 3 + "x" * 500)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 200


# --- orjson beside the json module: same values read, same bytes written --------------------

_wide_scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # beyond 64 bits too: orjson reads those as floats, so the json module does
    | st.floats(allow_nan=False, allow_infinity=False)  # 1e-07, 1e+16: json's spelling kept
    | st.text(st.characters(exclude_categories=[]), max_size=20)  # lone surrogates too
    | st.sampled_from(["\ud800", "a\udfffb", "\x00\x1f\x7f\u2028", "é😀"])
)
_json_values = st.recursive(
    _wide_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=25,
)


@given(_json_values, st.booleans())
def test_written_bytes_are_the_json_modules(value: Any, sort_keys: bool) -> None:
    encoded = codec._encode(value, "base64", "value", js_numbers=True)
    assert codec._dumps(encoded, sort_keys=sort_keys) == codec._dumps_json(
        encoded, sort_keys=sort_keys
    )


@given(_json_values, st.booleans())
def test_parsed_values_are_the_json_modules(value: Any, as_bytes: bool) -> None:
    text = json.dumps(value, ensure_ascii=False)
    raw: str | bytes = text
    if as_bytes:
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError:
            raw = json.dumps(value).encode("ascii")  # lone surrogates travel escaped
    parsed = codec.parse(raw)
    expected = json.loads(raw)
    assert json.dumps(parsed) == json.dumps(expected)  # floats compared by spelling, -0.0 too
    assert type(parsed) is type(expected)


@pytest.mark.parametrize(
    "text",
    [
        "18446744073709551616",  # beyond 64 bits: orjson would read a float
        "-9223372036854775809",
        '{"a": 1, "b": 2, "a": 3}',  # the last duplicate wins, in the first one's place
        '"\\ud800"',  # a lone surrogate escape: orjson refuses it
        "1e400",  # beyond a double: json reads infinity (refused later by the encoder)
        "[" * 2000 + "]" * 2000,  # deeper than orjson's 1024
    ],
)
def test_what_orjson_reads_differently_goes_through_json(text: str) -> None:
    try:
        expected: Any = json.loads(text)
    except RecursionError:
        with pytest.raises(DataError, match="nested too deeply"):
            codec.parse(text)
        return
    found = codec.parse(text)
    assert json.dumps(found) == json.dumps(expected)
    assert list(found) == list(expected) if isinstance(expected, dict) else True


@pytest.mark.parametrize("text", ["", "{", "[NaN]", "[1,]", '{"a" 1}', '"\x01"'])
def test_invalid_json_is_named_by_the_json_module(text: str) -> None:
    with pytest.raises(DataError, match="invalid JSON"):
        codec.parse(text, where="session/1.0")


@given(mixed())
def test_db_forms_are_encode_and_canonical(pair: tuple[Any, Any]) -> None:
    value, mixed_value = pair
    stored, canonical_form = codec.db_forms(mixed_value)
    assert stored == codec.encode(mixed_value, "array")
    assert canonical_form == codec.canonical(mixed_value) == codec.canonical(value)


@given(mixed())
def test_db_forms_in_the_base64_style_are_encode_and_canonical(pair: tuple[Any, Any]) -> None:
    value, mixed_value = pair
    stored, canonical_form = codec.db_forms(mixed_value, style="base64")
    assert stored == codec.encode(mixed_value, "base64")
    assert canonical_form == codec.canonical(value)


def test_db_forms_refuse_a_style_they_do_not_know() -> None:
    with pytest.raises(InputError, match="unknown Buffer style 'hex'"):
        codec.db_forms({"k": b"x"}, style="hex")  # type: ignore[arg-type]


@given(mixed())
def test_file_forms_are_dumps_file_and_canonical(pair: tuple[Any, Any]) -> None:
    value, mixed_value = pair
    payload, canonical_form = codec.file_forms(mixed_value)
    assert payload == codec.dumps_file(mixed_value)
    assert canonical_form == codec.canonical(value)


@pytest.mark.parametrize(
    "value",
    [
        {"type": "other", "n": 1},  # a "type" that is not a Buffer: an ordinary map
        {"buffer": False, "x": [1.0, 1e-07]},
        {"type": "Buffer"},  # no data: an empty Buffer
        {"type": "Buffer", "data": None},
        {"k": {"buffer": True, "value": "AAE="}},
        {"k": bytearray(b"\x00\x01"), "m": memoryview(b"\x02")},
        {"k": (1, 2), "f": 2.0},
    ],
)
def test_the_forms_of_unusual_values_are_the_general_walks(value: Any) -> None:
    assert codec.file_forms(value) == (codec.dumps_file(value), codec.canonical(value))
    assert codec.db_forms(value) == (codec.encode(value, "array"), codec.canonical(value))
    assert codec.db_forms(value, style="base64") == (
        codec.encode(value, "base64"),
        codec.canonical(value),
    )


@pytest.mark.parametrize("data", BAD_DATA)
def test_the_forms_refuse_bad_buffer_data_naming_the_path(data: Any) -> None:
    for forms in (codec.file_forms, codec.db_forms):
        with pytest.raises(DataError, match=r"^session/1\.k\.inner:") as caught:
            forms({"k": {"inner": {"type": "Buffer", "data": data}}}, where="session/1")
        assert "c2VjcmV0" not in str(caught.value)


def test_the_forms_refuse_keys_that_are_not_strings() -> None:
    for forms in (codec.file_forms, codec.db_forms):
        with pytest.raises(InputError, match="object key of type int"):
            forms({"k": {1: "a"}})
