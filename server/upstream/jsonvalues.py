"""Helpers for untrusted decoded JSON: type guards to narrow it, a depth bound, and text made writable."""

from __future__ import annotations

import re
from typing import Any, TypeGuard


def is_object(value: object) -> TypeGuard[dict[str, Any]]:
    """True for a decoded JSON object (a dict: JSON object keys are strings)."""
    return isinstance(value, dict)


def is_array(value: object) -> TypeGuard[list[Any]]:
    """True for a decoded JSON array."""
    return isinstance(value, list)


def depth_of(value: object, limit: int) -> int:
    """How deeply ``value`` nests, counted without recursion, stopping once past ``limit``."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return depth
        deepest = max(deepest, depth)
        if is_object(node):
            stack.extend((v, depth + 1) for v in node.values())
        elif is_array(node):
            stack.extend((v, depth + 1) for v in node)
    return deepest


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def scrub(text: str) -> str:
    """``text`` with lone surrogates (which no UTF-8 writer accepts) replaced by U+FFFD."""
    if text.isascii():
        return text
    return _LONE_SURROGATE.sub("\ufffd", text)


def scrub_json(value: Any, depth: int = 0) -> Any:
    """``value`` with every string in it (keys too) scrubbed; nesting beyond 200 levels is left as it is
    (callers bound depth before this)."""
    if isinstance(value, str):
        return scrub(value)
    if depth > 200:
        return value
    if is_object(value):
        return {scrub(k): scrub_json(v, depth + 1) for k, v in value.items()}
    if is_array(value):
        return [scrub_json(v, depth + 1) for v in value]
    return value
