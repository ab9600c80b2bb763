"""atlas.jsoncodec decodes exactly as `json` does and encodes text that `json` reads back to the same value."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas.api.body import parse_trigger_body
from atlas.api.errors import http_status
from atlas.errors import AtlasError
from atlas.jsoncodec import dumps, loads, to_json

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: beyond 64 bits too
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=400)
@given(json_values, st.booleans())
def test_loads_agrees_with_json(value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert loads(text) == json.loads(text)
    assert loads(text.encode()) == json.loads(text.encode())


@settings(max_examples=400)
@given(json_values)
def test_dumps_reads_back_as_the_same_value(value: Any) -> None:
    assert json.loads(dumps(value)) == value
    assert json.loads(to_json(value)) == value
    assert b", " not in dumps([1, 2]) and b": " not in dumps({"a": 1})


def test_big_integers_stay_exact() -> None:
    big = 123456789012345678901234567890
    assert loads(b'{"n":123456789012345678901234567890}') == {"n": big}
    assert loads(dumps({"n": big})) == {"n": big}
    assert loads(dumps({"n": -(2**64)})) == {"n": -(2**64)}


def test_what_orjson_refuses_gets_jsons_answer() -> None:
    assert loads(b"NaN") != loads(b"NaN")  # json reads it (as nan), as before
    assert loads(b"\xef\xbb\xbf{}") == {}  # a UTF-8 byte order mark
    assert loads('{"a":1}'.encode("utf-16")) == {"a": 1}
    assert loads('"\\ud800"') == "\ud800"
    assert dumps({1: "a"}) == b'{"1":"a"}'  # non-string keys, as json writes them
    assert dumps("é") == '"é"'.encode()  # UTF-8 kept as is
    with pytest.raises(TypeError):
        dumps({"at": datetime.now(UTC)})  # as json: a datetime is not JSON
    with pytest.raises(UnicodeEncodeError):
        dumps("\ud800")
    with pytest.raises(ValueError):
        loads(b'{"a":')


@pytest.mark.parametrize(("raw", "fragment"), [
    (b'{"payload":{"x":1e400}}', "out of range"),
    (b'{"payload":{"x":NaN}}', "NaN is not valid JSON"),
    (b'{"payload":{"x":-Infinity}}', "-Infinity is not valid JSON"),
    (b'{"payload":{"s":"\\ud800"}}', "lone surrogate"),
    (b'{"payload":', "Malformed JSON body"),
    (b"\xff\xfe", "Malformed JSON body"),
])
def test_trigger_bodies_that_are_not_json_are_refused(raw: bytes, fragment: str) -> None:
    with pytest.raises(AtlasError) as info:
        parse_trigger_body(raw, {"content-type": "application/json"})
    assert http_status(info.value.code) == 400 and fragment in info.value.message


def test_trigger_body_keeps_big_integers_and_floats() -> None:
    body = parse_trigger_body(b'{"payload":{"n":123456789012345678901234567890,"f":0.1,"e":1e-05}}', {})
    assert body.payload == {"n": 123456789012345678901234567890, "f": 0.1, "e": 1e-05}
