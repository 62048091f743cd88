"""Reading stored bodies whatever they hold: over-deep values as a marker, lone
surrogates as U+FFFD, anything else exactly as ``json.loads`` reads it."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from tests.audit_support import body
from xserve.audit.reading import MAX_READ_DEPTH, OMITTED, read_body
from xserve.audit.record import canonical


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@pytest.mark.parametrize("levels", [MAX_READ_DEPTH - 1, MAX_READ_DEPTH, 970, 100_000])
@pytest.mark.parametrize("opener", ["[", '{"k":'])
def test_a_value_too_deep_reads_as_the_marker(levels: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    deep = opener * levels + '"x"' + closer * levels
    # Brackets and escaped quotes in strings beside it must not be counted.
    text = '{"a":' + deep + ',"b":"]]]}}}\\"[[[","c":[[1]],"seq":3}'
    read = read_body(text)
    assert read is not None
    assert read["b"] == ']]]}}}"[[[' and read["c"] == [[1]] and read["seq"] == 3
    assert _depth(read) <= MAX_READ_DEPTH + 1
    msgspec.json.encode(read)  # an answer can carry it
    if levels + 1 <= MAX_READ_DEPTH:
        assert read == json.loads(text)  # within the bound: exactly as stored
    else:
        value = read["a"]
        while value != OMITTED:
            value = value[0] if isinstance(value, list) else value["k"]


def test_ordinary_bodies_read_exactly_as_stored() -> None:
    for i in range(30):
        text = canonical({**body(i), "explanations": [{"v": [[0.1] * 8]}] * i, "seq": i})
        assert read_body(text) == json.loads(text)


def test_lone_surrogates_read_as_replacement_characters() -> None:
    text = '{"a":"x\\ud800y","b":["\\ud83d\\ude00"],"\\udc00":1,"c":"\\\\ud800"}'
    read = read_body(text)
    assert read == {"a": "x\ufffdy", "b": ["\U0001f600"], "\ufffd": 1, "c": "\\ud800"}
    msgspec.json.encode(read)


@pytest.mark.parametrize("text", ["", "[1]", "null", '{"a":', "{bad", '"\\ud800"'])
def test_what_is_no_json_object_reads_as_none(text: str) -> None:
    assert read_body(text) is None
