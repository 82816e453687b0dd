"""params and ctx must be plain JSON; the error points at the bad element."""

from __future__ import annotations

import datetime
import math

import pytest

from threadjobs import InvalidValueError
from threadjobs.jsonvalues import check_dict, check_json, dumps


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": {1, 2}}, r"params\['a'\] is a set"),
        ({"a": b"x"}, r"params\['a'\] is a bytes"),
        ({"a": datetime.date(2020, 1, 1)}, "is a date"),
        ({"a": object()}, "is a object"),
        ({"a": [1, math.nan]}, r"params\['a'\]\[1\] is nan"),
        ({"a": math.inf}, "is inf"),
        ({"a": {1: "x"}}, "has the key 1 of type int"),
        ({"a": (1, 2)}, "is a tuple .convert it to a list."),
    ],
)
def test_non_json_values_are_refused_with_their_path(value, message) -> None:
    with pytest.raises(InvalidValueError, match=message):
        check_json(value, "params")


def test_deep_nesting_is_refused() -> None:
    value: dict = {}
    inner = value
    for _ in range(100):
        inner["x"] = {}
        inner = inner["x"]
    with pytest.raises(InvalidValueError, match="nests deeper than 64"):
        check_json(value, "ctx")


def test_check_dict_wants_a_dict() -> None:
    with pytest.raises(InvalidValueError, match="params must be a dict, got list"):
        check_dict([1], "params")


def test_canonical_encoding_ignores_key_order() -> None:
    assert dumps({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == dumps(
        {"a": [1, {"c": 3, "d": 2}], "b": 1}
    )
    assert dumps({"é": 1}) == '{"é":1}'
