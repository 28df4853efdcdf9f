"""Schedules at their boundaries: first step, last step, period edges."""

import math
import re

import pytest
from pydantic import ValidationError

from rshape.schedules import parse_schedule


def test_constant():
    assert parse_schedule({"schedule": "constant", "value": 0.3})(0) == 0.3


def test_linear_boundaries():
    s = parse_schedule({"schedule": "linear", "start": 1.0, "end": 0.0, "begin": 10, "until": 20})
    assert [s(t) for t in (0, 10, 15, 20, 99)] == [1.0, 1.0, 0.5, 0.0, 0.0]


def test_cosine_boundaries():
    s = parse_schedule({"schedule": "cosine", "start": 2.0, "end": 0.0, "until": 4})
    assert s(0) == 2.0 and s(4) == pytest.approx(0.0) and s(2) == pytest.approx(1.0)
    assert s(1) == pytest.approx(1.0 + math.cos(math.pi / 4))


def test_exponential_train_long_think_short():
    # B(t) = max(1, 256·0.7^⌊t/150⌋): 256 until step 149, 179.2 from 150, then 125.44, 87.808
    s = parse_schedule({"schedule": "exponential", "start": 256, "gamma": 0.7, "period": 150, "floor": 1})
    assert [s(t) for t in (0, 149, 150, 299, 300, 450, 600)] == pytest.approx(
        [256, 256, 179.2, 179.2, 125.44, 87.808, 61.4656])
    tiny = parse_schedule({"schedule": "exponential", "start": 2, "gamma": 0.1, "period": 1, "floor": 1})
    assert tiny(5) == 1


def test_step_and_piecewise():
    s = parse_schedule({"schedule": "step", "values": [4000, 2000, 1000], "milestones": [10, 20]})
    assert [s(t) for t in (0, 9, 10, 19, 20, 100)] == [4000, 4000, 2000, 2000, 1000, 1000]
    p = parse_schedule({"schedule": "piecewise", "points": [[0, 0.0], [10, 1.0], [20, 1.0], [30, 0.0]]})
    assert [p(t) for t in (-1, 0, 5, 10, 15, 25, 30, 40)] == [0.0, 0.0, 0.5, 1.0, 1.0, 0.5, 0.0, 0.0]


@pytest.mark.parametrize("bad, text", [
    ({"schedule": "linear", "start": 0, "end": 1, "begin": 10, "until": 5}, "until (5) must be after begin (10)"),
    ({"schedule": "step", "values": [1, 2], "milestones": [1, 2]}, "one more value"),
    ({"schedule": "piecewise", "points": [[5, 1], [2, 0]]}, "increasing"),
    ({"schedule": "exponential", "start": 1, "gamma": 0}, "greater than 0"),
    ({"schedule": "wobbly"}, "does not match any of the expected tags"),
])
def test_bad_schedules(bad, text):
    with pytest.raises(ValidationError, match=re.escape(text)):
        parse_schedule(bad)
