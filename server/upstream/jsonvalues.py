"""Helpers for untrusted decoded JSON: type guards to narrow it, a depth bound, and text made writable."""

from __future__ import annotations

import re
from typing import Any, TypeGuard

import pydantic_core


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


#: In JSON text: an escaped backslash, a valid surrogate pair, or the escape of a lone surrogate. Matched
#: from left to right, so a ``\\u`` that is an escaped backslash and a ``u`` is never taken for an escape.
_ESCAPES = r"\\\\|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u[dD][89a-fA-F][0-9a-fA-F]{2}"
_TEXT_ESCAPES = re.compile(_ESCAPES)
_BYTES_ESCAPES = re.compile(_ESCAPES.encode())


def _escape_kept_or_replaced(match: re.Match[Any]) -> Any:
    escape = match.group()
    if len(escape) == 6:  # a lone surrogate: U+FFFD
        return "\\ufffd" if isinstance(escape, str) else b"\\ufffd"
    return escape


def writable_escapes(text: str) -> str:
    """JSON ``text`` with each lone surrogate escape (``\\ud800``: valid JSON, text no UTF-8 writer accepts,
    which pydantic's parser refuses) written as U+FFFD, as ``scrub`` does to parsed strings. ``text`` itself
    when it has none: then pydantic's refusal was for something else."""
    if "\\u" not in text:
        return text
    written = _TEXT_ESCAPES.sub(_escape_kept_or_replaced, text)
    return text if written == text else written


def writable_escapes_bytes(raw: bytes) -> bytes:
    """``writable_escapes`` of JSON bytes."""
    if b"\\u" not in raw:
        return raw
    written = _BYTES_ESCAPES.sub(_escape_kept_or_replaced, raw)
    return raw if written == raw else written


def scrub(text: str) -> str:
    """``text`` with lone surrogates (which no UTF-8 writer accepts) replaced by U+FFFD."""
    if text.isascii():
        return text
    return _LONE_SURROGATE.sub("\ufffd", text)


def scrub_json(value: Any, depth: int = 0) -> Any:
    """``value`` with every string in it (keys too) scrubbed; nesting beyond 200 levels is left as it is
    (callers bound depth before this). Almost every value has no lone surrogate at all: one pass of the C
    JSON encoder finds that out (and returns ``value`` itself) before any string is looked at in Python."""
    if depth == 0 and not isinstance(value, str) and is_writable(value):
        return value
    return _scrubbed(value, depth)


def is_writable(value: Any) -> bool:
    """Whether ``value`` (JSON data, or pydantic models of it) holds no lone surrogate: pydantic's JSON
    writer, which refuses them, writes it (about 1 ms for a thousand function definitions)."""
    try:
        pydantic_core.to_json(value)
    except (pydantic_core.PydanticSerializationError, ValueError, RecursionError):
        return False
    return True


def _scrubbed(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if depth > 200:
        return value
    if is_object(value):
        return {scrub(k): _scrubbed(v, depth + 1) for k, v in value.items()}
    if is_array(value):
        return [_scrubbed(v, depth + 1) for v in value]
    return value
