"""math_calculator: add, subtract, multiply, divide and power, exact for decimal input.

Numbers arrive as binary floats, but what a person typed was a decimal (123.5, 0.1), and
the shortest repr of a float gives that decimal back. The arithmetic runs in ``decimal``
on those values, so 0.1 + 0.2 is 0.3, as on a desk calculator. Results must fit in a
double: anything larger, and any power that would be, is refused before it is computed.
"""

from __future__ import annotations

import math
from decimal import MAX_EMAX, MIN_EMIN, Decimal, DivisionByZero, InvalidOperation, localcontext
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from tools.errors import ToolInputError

NAME = "math_calculator"
DESCRIPTION = "a + b, a - b, a * b, a / b or a^b; exact for decimal input."

Operation = Literal["add", "subtract", "multiply", "divide", "power"]
OPERATIONS: tuple[Operation, ...] = ("add", "subtract", "multiply", "divide", "power")
_ALIASES: dict[str, Operation] = {
    "+": "add",
    "plus": "add",
    "sum": "add",
    "addition": "add",
    "-": "subtract",
    "minus": "subtract",
    "sub": "subtract",
    "subtraction": "subtract",
    "difference": "subtract",
    "*": "multiply",
    "x": "multiply",
    "times": "multiply",
    "mul": "multiply",
    "product": "multiply",
    "multiplication": "multiply",
    "/": "divide",
    "div": "divide",
    "division": "divide",
    "quotient": "divide",
    "^": "power",
    "**": "power",
    "pow": "power",
    "exponent": "power",
    "exponentiation": "power",
}
_SYMBOL: dict[Operation, str] = {"add": "+", "subtract": "-", "multiply": "×", "divide": "÷", "power": "^"}

#: log10 of the largest finite double (about 1.8e308).
_MAX_LOG10 = math.log10(1.7976931348623157e308)
#: Digits kept: enough that +, - and × of two doubles' decimals are exact.
_PRECISION = 34


class Calculation(BaseModel):
    """The result of one operation."""

    operation: Operation
    a: float
    b: float
    result: int | float = Field(description="nearest double")
    exact: str = Field(description=f"exact decimal, up to {_PRECISION} significant digits")
    expression: str = Field(description="e.g. '1.5 + 2 = 3.5'")

    def summary(self) -> str:
        return self.expression


def _parse_operation(operation: str) -> Operation:
    key = operation.strip().lower()
    for op in OPERATIONS:
        if key == op:
            return op
    if key in _ALIASES:
        return _ALIASES[key]
    raise ToolInputError(f"unknown operation {operation!r}; use one of: {', '.join(OPERATIONS)}")


def _decimal(x: float) -> Decimal:
    if isinstance(x, int):
        return Decimal(x)
    # repr gives the shortest decimal that round-trips: the number the caller wrote.
    return Decimal(repr(x))


def _text(d: Decimal) -> str:
    if d.is_zero():
        return "0"
    d = d.normalize()
    if -12 <= d.adjusted() < 21:
        return format(d, "f")
    return format(d, "e").replace("E", "e")


def _check_power(a: Decimal, b: Decimal) -> None:
    if a.is_zero() and b < 0:
        raise ToolInputError("0 raised to a negative power is a division by zero; use a non-zero base")
    if a < 0 and b != b.to_integral_value():
        raise ToolInputError("a negative base needs a whole-number exponent; the result would not be a real number")
    if a.is_zero() or abs(a) == 1:
        return
    magnitude = float(b) * math.log10(abs(float(a)))
    if magnitude > _MAX_LOG10:
        raise ToolInputError(
            f"the result would be about 10^{magnitude:.0f}, beyond the largest number this calculator handles "
            "(about 1.8e308); use a smaller base or exponent"
        )


def _compute(op: Operation, a: Decimal, b: Decimal) -> Decimal:
    match op:
        case "add":
            return a + b
        case "subtract":
            return a - b
        case "multiply":
            return a * b
        case "divide":
            if b.is_zero():
                raise ToolInputError("division by zero; b must not be 0")
            return a / b
        case "power":
            _check_power(a, b)
            return Decimal(1) if b.is_zero() else a**b  # 0 ** 0 is 1, as in Python and on calculators


def math_calculator(
    operation: Annotated[str, Field(description="add, subtract, multiply, divide or power", max_length=32)],
    a: Annotated[float, Field(allow_inf_nan=False)],
    b: Annotated[float, Field(allow_inf_nan=False)],
) -> Calculation:
    """Apply ``operation`` to ``a`` and ``b`` (``a`` is the base of a power)."""
    op = _parse_operation(operation)
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ToolInputError("a and b must be finite numbers")
    da, db = _decimal(a), _decimal(b)
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        ctx.Emax, ctx.Emin = MAX_EMAX, MIN_EMIN
        try:
            exact = _compute(op, da, db)
        except (InvalidOperation, DivisionByZero) as exc:
            raise ToolInputError(f"{op} of {_text(da)} and {_text(db)} has no finite result") from exc
        text, a_text, b_text = _text(exact), _text(da), _text(db)
    if da < 0 and op == "power":
        a_text = f"({a_text})"
    value = float(exact)
    if not math.isfinite(value):
        raise ToolInputError(
            f"the result ({text}) is beyond the largest number this calculator handles (about 1.8e308)"
        )
    result: int | float = int(exact) if exact == exact.to_integral_value() and abs(value) < 2**53 else value
    return Calculation(
        operation=op, a=a, b=b, result=result, exact=text, expression=f"{a_text} {_SYMBOL[op]} {b_text} = {text}"
    )
