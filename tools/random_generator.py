"""random_generator: uniformly random integers in an inclusive range."""

from __future__ import annotations

import random
from typing import Annotated

from pydantic import BaseModel, Field

from tools.errors import ToolInputError

NAME = "random_generator"
DESCRIPTION = "Uniformly random integers from min to max inclusive."
MAX_COUNT = 10
#: Bounds beyond this are refused: they would not survive a round trip through a JavaScript client.
MAX_ABS = 2**53 - 1

_rng = random.SystemRandom()


class RandomNumbers(BaseModel):
    """Integers drawn uniformly from min to max inclusive."""

    numbers: list[int]
    min: int
    max: int
    count: int

    def summary(self) -> str:
        return f"{self.count} random integer(s) from {self.min} to {self.max}: " + ", ".join(map(str, self.numbers))


def random_generator(
    min: int = 1,
    max: int = 100,
    count: Annotated[int, Field(description=f"how many, 1 to {MAX_COUNT}")] = 1,
) -> RandomNumbers:
    """Draw ``count`` integers from ``min`` to ``max`` inclusive."""
    if min > max:
        raise ToolInputError(f"min ({min}) is greater than max ({max}); pass min <= max")
    if not 1 <= count <= MAX_COUNT:
        raise ToolInputError(f"count must be from 1 to {MAX_COUNT}, got {count}")
    if abs(min) > MAX_ABS or abs(max) > MAX_ABS:
        raise ToolInputError(f"min and max must be within ±{MAX_ABS}")
    numbers = [_rng.randint(min, max) for _ in range(count)]
    return RandomNumbers(numbers=numbers, min=min, max=max, count=count)
