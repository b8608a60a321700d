"""Type guards for decoded JSON: what every parser in this package narrows untrusted values with."""

from __future__ import annotations

from typing import Any, TypeGuard


def is_object(value: object) -> TypeGuard[dict[str, Any]]:
    """True for a decoded JSON object (a dict: JSON object keys are strings)."""
    return isinstance(value, dict)


def is_array(value: object) -> TypeGuard[list[Any]]:
    """True for a decoded JSON array."""
    return isinstance(value, list)
