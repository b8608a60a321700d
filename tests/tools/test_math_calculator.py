from __future__ import annotations

import time
import tracemalloc

import pytest

from tools.errors import ToolInputError
from tools.math_calculator import math_calculator


@pytest.mark.parametrize(
    ("operation", "a", "b", "result", "exact"),
    [
        ("add", 123.5, 456.7, 580.2, "580.2"),
        ("add", 0.1, 0.2, 0.3, "0.3"),
        ("subtract", 0.3, 0.1, 0.2, "0.2"),
        ("multiply", 1.1, 1.1, 1.21, "1.21"),
        ("divide", 10, 4, 2.5, "2.5"),
        ("divide", 1, 3, 1 / 3, "0.3333333333333333333333333333333333"),
        ("power", 2, 10, 1024, "1024"),
        ("power", 2, 0.5, 2**0.5, "1.414213562373095048801688724209698"),
        ("power", -2, 3, -8, "-8"),
        ("power", 0, 0, 1, "1"),
        ("power", 10, -3, 0.001, "0.001"),
        ("power", 2, 100, 2.0**100, "1.267650600228229401496703205376e+30"),
    ],
)
def test_results_are_exact_for_decimal_input(operation: str, a: float, b: float, result: float, exact: str) -> None:
    calc = math_calculator(operation, a, b)
    assert calc.result == result
    assert calc.exact == exact


def test_whole_results_are_integers_and_the_expression_reads_like_a_calculator() -> None:
    calc = math_calculator("add", 2, 3)
    assert calc.result == 5 and isinstance(calc.result, int)
    assert math_calculator("add", 123.5, 456.7).expression == "123.5 + 456.7 = 580.2"
    assert math_calculator("power", -2, 3).expression == "(-2) ^ 3 = -8"


@pytest.mark.parametrize(("alias", "operation"), [("+", "add"), ("Plus", "add"), ("**", "power"), ("/", "divide")])
def test_common_spellings_of_an_operation_are_understood(alias: str, operation: str) -> None:
    assert math_calculator(alias, 6, 3).operation == operation


@pytest.mark.parametrize(
    ("operation", "a", "b", "message"),
    [
        ("divide", 1, 0, "division by zero"),
        ("modulo", 1, 2, "add, subtract, multiply, divide, power"),
        ("multiply", 1e200, 1e200, "largest number"),
        ("power", 0, -1, "division by zero"),
        ("power", -8, 1 / 3, "whole-number exponent"),
        ("power", 10, float("inf"), "finite"),
        ("add", float("nan"), 1, "finite"),
    ],
)
def test_impossible_calculations_are_clear_errors(operation: str, a: float, b: float, message: str) -> None:
    with pytest.raises(ToolInputError, match=message):
        math_calculator(operation, a, b)


@pytest.mark.parametrize(("a", "b"), [(10, 1_000_000_000), (1.0000001, 1e15), (-3, 999_999_999)])
def test_huge_powers_are_refused_without_computing_them(a: float, b: float) -> None:
    tracemalloc.start()
    started = time.process_time()
    with pytest.raises(ToolInputError, match="about 10\\^"):
        math_calculator("power", a, b)
    cpu = time.process_time() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Generous bounds: computing 10**1e9 would take minutes and hundreds of MB.
    assert cpu < 1.0
    assert peak < 1_000_000


def test_tiny_powers_underflow_to_zero_but_keep_the_exact_value() -> None:
    calc = math_calculator("power", 10, -1_000_000_000)
    assert calc.result == 0
    assert calc.exact == "1e-1000000000"
