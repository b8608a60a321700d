"""Lone surrogate escapes in JSON text: written as U+FFFD, everything else left as it was."""

from __future__ import annotations

import json

import pydantic_core
import pytest

from server.upstream.jsonvalues import writable_escapes, writable_escapes_bytes


@pytest.mark.parametrize(
    ("sent", "parsed"),
    [
        (r'"a\ud800b"', "a\ufffdb"),  # a lone high surrogate
        (r'"\udc00\ud83d"', "\ufffd\ufffd"),  # low then high: no pair
        (r'"\ud83d\ude00 \uD83D\uDE00"', "😀 😀"),  # pairs, in either case, are kept
        (r'"\\ud800"', "\\ud800"),  # an escaped backslash, then the letters: no escape at all
        (r'"\\\ud800"', "\\\ufffd"),  # an escaped backslash, then a lone surrogate escape
        (r'"caf\u00e9"', "café"),
    ],
)
def test_lone_surrogate_escapes_become_replacement_characters(sent: str, parsed: str) -> None:
    writable = writable_escapes(sent)
    assert pydantic_core.from_json(writable) == json.loads(writable) == parsed
    assert writable_escapes_bytes(sent.encode()) == writable.encode()


def test_text_without_escapes_is_returned_as_it_is() -> None:
    text = '{"prompt": "hello"}'
    assert writable_escapes(text) is text and writable_escapes_bytes(text.encode()) == text.encode()
    escaped = r'{"prompt": "caf\u00e9 \ud83d\ude00 \\ud800"}'  # escapes, none of a lone surrogate
    raw = escaped.encode()
    assert writable_escapes(escaped) is escaped and writable_escapes_bytes(raw) is raw
