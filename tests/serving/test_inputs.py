"""``to_matrix``: both instance forms, and a precise error for every bad input."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from xserve.errors import InvalidInput, PayloadTooLarge
from xserve.repository.manifest import Feature
from xserve.serving.inputs import FLOAT32_MAX, to_matrix

FEATURES = [
    Feature(name="income", type="numeric"),
    Feature(name="accounts", type="integer"),
    Feature(name="owner", type="boolean"),
    Feature(name="region", type="categorical", categories=["north", "south", "east"]),
    Feature(name="score", type="numeric", nullable=True),
]
GOOD = {"income": 52000.5, "accounts": 3, "owner": True, "region": "south", "score": 0.7}
GOOD_ROW = [52000.5, 3, True, "south", 0.7]
EXPECTED = [52000.5, 3.0, 1.0, 1.0, 0.7]


def matrix(instances: Any, max_instances: int = 100) -> np.ndarray:
    return to_matrix(instances, FEATURES, max_instances)


def with_value(name: str, value: Any) -> dict[str, Any]:
    return {**GOOD, name: value}


def assert_invalid(instances: Any, *fragments: str) -> str:
    with pytest.raises(InvalidInput) as info:
        matrix(instances)
    assert info.value.status == 422 and info.value.code == "invalid_input"
    for fragment in fragments:
        assert fragment in info.value.message, info.value.message
    return info.value.message


# -- the two accepted forms ------------------------------------------------------


def test_objects_by_name_in_feature_order() -> None:
    shuffled = dict(reversed(list(GOOD.items())))
    x = matrix([GOOD, shuffled])
    assert x.dtype == np.float64 and x.shape == (2, 5)
    np.testing.assert_array_equal(x, [EXPECTED, EXPECTED])


def test_rows_in_feature_order() -> None:
    x = matrix([GOOD_ROW, GOOD_ROW, GOOD_ROW])
    assert x.dtype == np.float64 and x.shape == (3, 5)
    np.testing.assert_array_equal(x, [EXPECTED] * 3)


def test_objects_and_rows_may_be_mixed() -> None:
    np.testing.assert_array_equal(matrix([GOOD, GOOD_ROW]), [EXPECTED, EXPECTED])


def test_integral_floats_are_accepted_for_integer_features() -> None:
    assert matrix([with_value("accounts", 4.0)])[0, 1] == 4.0


# -- objects: feature names ------------------------------------------------------


def test_missing_feature() -> None:
    row = {k: v for k, v in GOOD.items() if k != "accounts"}
    message = assert_invalid([GOOD, row], "instances[1].accounts", "missing")
    assert "instances[0]" not in message


def test_unknown_feature() -> None:
    assert_invalid([GOOD, GOOD, {**GOOD, "colour": "red"}], "instances[2].colour", "unknown")


def test_misspelt_feature_is_named_as_unknown() -> None:
    row = {k: v for k, v in GOOD.items() if k != "income"} | {"incme": 1}
    assert_invalid([row], "instances[0].incme", "unknown")


# -- values ----------------------------------------------------------------------


def test_non_numeric_string() -> None:
    assert_invalid([GOOD, with_value("income", "high")], "instances[1].income", "'high'")


def test_numeric_string_is_not_silently_converted() -> None:
    assert_invalid([with_value("income", "52000")], "instances[0].income", "number")


@pytest.mark.parametrize("value", [True, False])
def test_bool_for_a_numeric_feature(value: bool) -> None:
    assert_invalid([with_value("income", value)], "instances[0].income", "number")


def test_bool_for_an_integer_feature() -> None:
    assert_invalid([with_value("accounts", True)], "instances[0].accounts")


@pytest.mark.parametrize("value", [[1], {"a": 1}])
def test_containers_for_a_numeric_feature(value: Any) -> None:
    assert_invalid([with_value("income", value)], "instances[0].income", "number")


def test_null_for_a_non_nullable_feature() -> None:
    assert_invalid([with_value("income", None)], "instances[0].income", "null")
    assert_invalid([[52000.5, None, True, "south", 0.7]], "instances[0].accounts", "null")


def test_null_for_a_nullable_feature_is_nan() -> None:
    x = matrix([with_value("score", None), [52000.5, 3, True, "south", None]])
    assert np.isnan(x[:, 4]).all()
    np.testing.assert_array_equal(x[:, :4], [EXPECTED[:4]] * 2)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused(value: float) -> None:
    assert_invalid([with_value("income", value)], "instances[0].income", "finite")


def test_nan_is_accepted_for_a_nullable_feature_but_not_infinity() -> None:
    assert np.isnan(matrix([with_value("score", math.nan)])[0, 4])
    assert_invalid([with_value("score", math.inf)], "instances[0].score", "finite")


def test_integer_too_large_for_a_float() -> None:
    # JSON integers have no size limit; this one cannot become a float64.
    assert_invalid([with_value("income", 10**400)], "instances[0].income", "out of range")


def test_integer_too_long_to_print_is_still_reported() -> None:
    # Python refuses to turn ints of more than 4300 digits into text.
    message = assert_invalid([with_value("income", 10**5000)], "instances[0].income")
    assert len(message) < 300


def test_long_values_are_not_echoed_whole() -> None:
    message = assert_invalid([with_value("income", "x" * 100_000)], "instances[0].income")
    assert len(message) < 300


@pytest.mark.parametrize("value", [2.5, 0.1, -1.000001])
def test_non_integral_value_for_an_integer_feature(value: float) -> None:
    assert_invalid([with_value("accounts", value)], "instances[0].accounts", "integer")


def test_categorical_string_is_encoded_by_position() -> None:
    rows = [with_value("region", r) for r in ("north", "south", "east")]
    np.testing.assert_array_equal(matrix(rows)[:, 3], [0.0, 1.0, 2.0])


def test_categorical_index_is_accepted() -> None:
    assert matrix([with_value("region", 2)])[0, 3] == 2.0


@pytest.mark.parametrize("value", ["west", "North", ""])
def test_categorical_string_not_in_categories(value: str) -> None:
    assert_invalid([with_value("region", value)], "instances[0].region", repr(value), "north")


@pytest.mark.parametrize("value", [3, -1, 1.0, True])
def test_categorical_non_string_out_of_range(value: Any) -> None:
    assert_invalid([with_value("region", value)], "instances[0].region")


def test_boolean_feature() -> None:
    rows = [with_value("owner", v) for v in (True, False, 1, 0)]
    np.testing.assert_array_equal(matrix(rows)[:, 2], [1.0, 0.0, 1.0, 0.0])


@pytest.mark.parametrize("value", ["true", 2, 0.5, "yes"])
def test_boolean_feature_refuses_other_values(value: Any) -> None:
    assert_invalid([with_value("owner", value)], "instances[0].owner", "true or false")


# -- the shape of the request -----------------------------------------------------


@pytest.mark.parametrize("row", [GOOD_ROW[:4], [*GOOD_ROW, 1.0], []])
def test_wrong_row_length(row: list[Any]) -> None:
    assert_invalid([GOOD_ROW, row], "instances[1]", "expected 5 values", f"got {len(row)}")


@pytest.mark.parametrize("instances", [None, GOOD, "rows", 3, (GOOD_ROW,)])
def test_instances_must_be_a_list(instances: Any) -> None:
    assert_invalid(instances, "instances", "list")


def test_empty_list() -> None:
    assert_invalid([], "instances", "at least one")


@pytest.mark.parametrize("row", [3.5, "a,b", None, True])
def test_instance_neither_object_nor_list(row: Any) -> None:
    assert_invalid([GOOD, row], "instances[1]", "object or a list")


def test_too_many_instances() -> None:
    assert matrix([GOOD_ROW] * 3, max_instances=3).shape == (3, 5)
    with pytest.raises(PayloadTooLarge) as info:
        matrix([GOOD_ROW] * 4, max_instances=3)
    assert info.value.status == 413 and "4" in info.value.message and "3" in info.value.message


def test_first_bad_instance_is_the_one_named() -> None:
    bad = with_value("income", "x")
    assert_invalid([GOOD, GOOD, bad, bad], "instances[2].income")


# -- property ---------------------------------------------------------------------

NUMERIC = [Feature(name=f"f{i}") for i in range(4)]
finite = st.floats(min_value=-FLOAT32_MAX, max_value=FLOAT32_MAX)  # what float32 holds


@given(st.lists(st.lists(finite, min_size=4, max_size=4), min_size=1, max_size=20))
def test_finite_float_rows_round_trip_exactly(rows: list[list[float]]) -> None:
    x = to_matrix(rows, NUMERIC, 100)
    assert x.shape == (len(rows), 4)
    assert x.tolist() == rows
    objects = [{f.name: v for f, v in zip(NUMERIC, row, strict=True)} for row in rows]
    assert to_matrix(objects, NUMERIC, 100).tolist() == rows
