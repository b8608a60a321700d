"""The approval form built from a downstream tool's schema, which is hostile input like any other."""

from __future__ import annotations

from typing import Any

import pytest

from server.bridge.approval import ApprovalRequest, form_message, form_schema, read_answer


def request(schema: Any, arguments: dict[str, Any]) -> ApprovalRequest:
    return ApprovalRequest("fs__write_file", arguments, schema, "gpt-4.1", "conv_x", 1)


def test_only_simple_arguments_are_offered_for_editing() -> None:
    schema = {
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "Where"},
            "mode": {"type": "string", "enum": ["a", "w"]},  # a choice the form would have to repeat
            "size": {"type": ["integer", "null"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "decision": {"type": "string"},  # our own field's name: not offered
            "long": {"type": "string"},
        },
    }
    arguments = {"path": "/tmp/a", "mode": "w", "size": 3, "tags": ["x"], "decision": "approve", "long": "x" * 5000}
    fields = form_schema(request(schema, arguments))["properties"]
    assert set(fields) == {"decision", "reason", "path", "size"}
    assert fields["path"] == {"type": "string", "title": "path", "description": "Where", "default": "/tmp/a"}
    assert fields["decision"]["enum"] == ["approve", "deny", "approve for this conversation"]


@pytest.mark.parametrize(
    "schema",
    [{}, {"properties": []}, {"properties": {"a": "string"}}, {"properties": {"a": {"type": [1, None]}}}],
)
def test_a_strange_schema_gives_a_form_without_argument_fields(schema: Any) -> None:
    properties = form_schema(request(schema, {"a": 1}))["properties"]
    assert set(properties) == {"decision", "reason"}


def test_the_message_shortens_long_values_and_names_the_server() -> None:
    message = form_message(request({}, {"content": "y" * 1000, "n": {"deep": [1, 2]}}))
    assert "fs__write_file of the MCP server 'fs'" in message and "(1000 characters)" in message
    assert len(message) < 800 and '"deep": [1, 2]' in message


def test_answers_are_read_strictly() -> None:
    schema = {"properties": {"path": {"type": "string"}}}
    asked = request(schema, {"path": "/a"})
    assert read_answer(asked, "accept", {"decision": "approve"}, "u").arguments == {"path": "/a"}
    edited = read_answer(asked, "accept", {"decision": "approve", "path": "/b", "other": 1}, "u")
    assert edited.arguments == {"path": "/b"} and edited.edited == ["path"]  # only offered fields change
    assert read_answer(asked, "accept", {"decision": "yes please"}, "u").decision == "denied"
    assert read_answer(asked, "accept", None, "u").decision == "denied"
    assert read_answer(asked, "cancel", None, "u").reason == "the user dismissed the approval form"
    assert read_answer(asked, "accept", {"decision": "deny", "reason": "  " + "r" * 900}, "u").reason == "r" * 500
