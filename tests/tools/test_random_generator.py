from __future__ import annotations

import pytest

from tools.errors import ToolInputError
from tools.random_generator import random_generator


def test_defaults_give_one_number_from_1_to_100() -> None:
    result = random_generator()
    assert (result.min, result.max, result.count) == (1, 100, 1)
    assert len(result.numbers) == 1 and 1 <= result.numbers[0] <= 100


def test_numbers_stay_in_the_inclusive_range_and_reach_both_ends() -> None:
    seen: set[int] = set()
    for _ in range(200):
        seen.update(random_generator(1, 3, 10).numbers)
    assert seen == {1, 2, 3}


def test_a_one_value_range_is_allowed() -> None:
    assert random_generator(7, 7, 3).numbers == [7, 7, 7]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min": 5, "max": 1}, "min \\(5\\) is greater than max \\(1\\)"),
        ({"count": 0}, "count must be from 1 to 10"),
        ({"count": 11}, "count must be from 1 to 10"),
        ({"min": -(2**60)}, "within"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ToolInputError, match=message):
        random_generator(**kwargs)
