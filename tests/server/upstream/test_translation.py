"""Translation between MCP and the Responses API: tables, then properties over generated input."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp.types import CallToolResult, EmbeddedResource, ImageContent, TextContent, TextResourceContents

from server.standin.app import RequestError, check_tools
from server.upstream.responses import function_tool
from server.upstream.schemas import StrictSchemaError, strictify
from server.upstream.translation import (
    ArgumentError,
    NameMap,
    UnsupportedToolError,
    parse_arguments,
    result_to_output,
    to_function_tool,
)

VALID_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
CALCULATOR = {
    "type": "object",
    "properties": {"a": {"type": "number"}, "b": {"type": "number"}, "operation": {"type": "string"}},
    "required": ["operation", "a", "b"],
}
RANDOM = {
    "type": "object",
    "properties": {
        "min": {"type": "integer", "default": 1},
        "max": {"type": "integer"},
        "count": {"type": "integer", "minimum": 1, "maximum": 10},
    },
}


def test_names_are_made_valid_reversibly_and_without_collisions() -> None:
    names = ["files.read", "files_read", "x" * 100, "x" * 100 + "y", "ok-name", "日本語", ""]
    mapping = NameMap.build(names)
    api = [mapping.to_api[n] for n in names]
    assert all(VALID_NAME.match(a) for a in api)
    assert len(set(api)) == len(api)
    assert all(mapping.to_mcp[mapping.to_api[n]] == n for n in names)
    assert mapping.to_api["ok-name"] == "ok-name" and mapping.to_api["files_read"] == "files_read"


def test_key4u_example_schemas_become_strict_with_optional_parameters_nullable() -> None:
    spec = to_function_tool("random_generator", "Generate", RANDOM, "random_generator")
    assert spec.strict and spec.strict is True
    params = spec.parameters
    assert params["additionalProperties"] is False
    assert params["required"] == ["min", "max", "count"]
    assert params["properties"]["min"]["type"] == ["integer", "null"]
    assert "default: 1" in params["properties"]["min"]["description"]
    assert parse_arguments(spec, '{"min": null, "max": 100, "count": 3}') == {"max": 100, "count": 3}


def test_zero_argument_tool_is_a_strict_empty_object() -> None:
    spec = to_function_tool("system_info", "", {"type": "object"}, "system_info")
    assert spec.strict
    assert spec.parameters == {
        "type": "object",
        "properties": {},
        "required": [],
        "additionalProperties": False,
    }
    assert parse_arguments(spec, "") == {}


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"type": "object", "additionalProperties": True}, "additionalProperties"),
        ({"type": "object", "properties": {"x": {"type": "object"}}}, "free-form"),
        ({"type": "object", "properties": {"x": {"not": {"type": "string"}}}}, "'not'"),
        ({"type": "object", "properties": {"x": {"allOf": [{"type": "string"}, {"minLength": 1}]}}}, "allOf"),
        ({"type": "object", "properties": {"x": {"$ref": "https://example.com/s.json"}}}, "local \\$ref"),
    ],
)
def test_schemas_strict_mode_cannot_express_fall_back_to_strict_false(schema: dict[str, Any], reason: str) -> None:
    spec = to_function_tool("t", "", schema, "t")
    assert spec.strict is False and not spec.strict
    assert spec.strict_error is not None and re.search(reason, spec.strict_error)
    assert spec.parameters["type"] == "object"


@pytest.mark.parametrize(
    "schema", [{"anyOf": [{"type": "object"}, {"type": "null"}]}, {"type": "string"}, {"type": ["object", "null"]}]
)
def test_non_object_roots_are_refused_clearly(schema: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedToolError, match="must be an object schema"):
        to_function_tool("t", "", schema, "t")


def test_refs_defs_oneof_const_and_single_allof_are_normalised() -> None:
    schema = {
        "type": "object",
        "definitions": {"Unit": {"type": "string", "enum": ["c", "f"]}},
        "properties": {
            "unit": {"$ref": "#/definitions/Unit", "description": "units"},
            "mode": {"oneOf": [{"const": "fast"}, {"const": "slow"}]},
            "name": {"allOf": [{"type": "string", "maxLength": 10}]},
        },
        "required": ["unit", "mode", "name"],
    }
    spec = to_function_tool("t", "", schema, "t")
    assert spec.strict, spec.strict_error
    props = spec.parameters["properties"]
    assert props["unit"]["enum"] == ["c", "f"] and props["unit"]["description"] == "units"
    assert props["mode"]["anyOf"] == [{"enum": ["fast"]}, {"enum": ["slow"]}]
    assert props["name"]["type"] == "string" and "maxLength 10" in props["name"]["description"]
    with pytest.raises(ArgumentError, match="too long"):
        parse_arguments(spec, json.dumps({"unit": "c", "mode": "fast", "name": "x" * 11}))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"operation": "add", "a": "one", "b": 2}', "at a: 'one' is not of type 'number'"),
        ('{"operation": "add", "a": 1}', "'b' is a required property"),
    ],
)
def test_bad_arguments_become_messages_for_the_model(arguments: str, message: str) -> None:
    spec = to_function_tool("math_calculator", "", CALCULATOR, "math_calculator")
    with pytest.raises(ArgumentError, match=re.escape(message)):
        parse_arguments(spec, arguments)


def test_results_become_strings_with_errors_marked_and_non_text_described() -> None:
    ok = CallToolResult(content=[TextContent(type="text", text="580.2")], structured_content={"result": 580.2})
    assert result_to_output(ok) == "580.2"  # said once: the SDK's {"result": ...} wrapping adds nothing
    said = CallToolResult(
        content=[TextContent(type="text", text="it is 12:00")], structured_content={"result": "it is 12:00"}
    )
    assert result_to_output(said) == "it is 12:00"
    pretty = CallToolResult(
        content=[TextContent(type="text", text='{\n  "a": 1,\n  "b": [1, 2]\n}')],
        structured_content={"a": 1, "b": [1, 2]},
    )
    assert result_to_output(pretty) == '{"a":1,"b":[1,2]}'  # the same JSON, once and compact
    other = CallToolResult(content=[TextContent(type="text", text="a summary")], structured_content={"a": 1})
    assert result_to_output(other) == 'a summary\n{"a":1}'  # different things: both go
    error = CallToolResult(content=[TextContent(type="text", text="division by zero")], is_error=True)
    assert result_to_output(error) == "Error: division by zero"
    mixed = CallToolResult(
        content=[
            ImageContent(type="image", data="aGVsbG8=", mime_type="image/png"),
            EmbeddedResource(type="resource", resource=TextResourceContents(uri="file:///a.txt", text="body")),
        ]
    )
    output = result_to_output(mixed)
    assert "[image: image/png" in output and "[resource file:///a.txt]\nbody" in output
    assert result_to_output(CallToolResult(content=[])) == "(no output)"
    assert "truncated" in result_to_output(CallToolResult(content=[TextContent(type="text", text="x" * 500)]), 100)


# --- properties -----------------------------------------------------------------------------------

_leaf = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["string", "integer", "number", "boolean", "null"])}),
    st.fixed_dictionaries({"enum": st.lists(st.one_of(st.integers(), st.text(max_size=5)), min_size=1, max_size=4)}),
    st.fixed_dictionaries({"type": st.just("string"), "maxLength": st.integers(0, 10)}),
    st.fixed_dictionaries({"type": st.just("string"), "format": st.sampled_from(["date", "uri", "email"])}),
    st.just({"not": {"type": "string"}}),
    st.just({"$ref": "#/$defs/Thing"}),
    st.just({"$ref": "http://elsewhere/x"}),
    st.just({}),
    st.just(True),
)


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=8)
    props = st.dictionaries(keys, children, max_size=4)
    return st.one_of(
        st.builds(
            lambda p, r, extra: {
                "type": "object",
                "properties": p,
                "required": list(p)[:r],
                **({"additionalProperties": extra} if extra is not None else {}),
            },
            props,
            st.integers(0, 4),
            st.sampled_from([None, False, True]),
        ),
        st.builds(lambda i: {"type": "array", "items": i}, children),
        st.builds(lambda a: {"anyOf": a}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda a: {"oneOf": a}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda a: {"allOf": a}, st.lists(children, min_size=1, max_size=2)),
    )


schemas = st.recursive(_leaf, _extend, max_leaves=12)
roots = st.one_of(
    st.builds(
        lambda p, d: {"type": "object", "properties": p, **({"$defs": {"Thing": d}} if d is not None else {})},
        st.dictionaries(st.text(min_size=1, max_size=6), schemas, max_size=5),
        st.one_of(st.none(), schemas),
    ),
    schemas,
    st.none(),
    st.integers(),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(roots)
def test_any_schema_becomes_a_valid_function_tool_or_a_clear_strict_false(schema: Any) -> None:
    try:
        spec = to_function_tool("tool", "desc", schema, "tool")
    except UnsupportedToolError as exc:
        assert "must be an object schema" in str(exc)
        return
    assert isinstance(spec.strict, bool)
    assert spec.parameters["type"] == "object"
    if spec.strict:
        # What we call strict, the stand-in's copy of the endpoint's checks accepts.
        check_tools([function_tool(spec)])
        assert strictify(spec.schema)  # deterministic
    else:
        assert spec.strict_error


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.text(max_size=200),
        st.builds(
            json.dumps,
            st.recursive(
                st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)),
                lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=5), c, max_size=3)),
                max_leaves=10,
            ),
        ),
    )
)
def test_any_argument_string_gives_arguments_or_an_error_message(arguments: str) -> None:
    for schema in (CALCULATOR, RANDOM, {"type": "object"}, {"type": "object", "additionalProperties": True}):
        spec = to_function_tool("t", "", schema, "t")
        try:
            value = parse_arguments(spec, arguments)
        except ArgumentError as exc:
            assert str(exc)
        else:
            assert isinstance(value, dict)


def test_stand_in_rejects_what_the_real_endpoint_rejects() -> None:
    with pytest.raises(RequestError, match="additionalProperties"):
        check_tools(
            [{"type": "function", "name": "t", "strict": True, "parameters": {"type": "object", "properties": {}}}]
        )
    with pytest.raises(RequestError, match="pattern"):
        check_tools([{"type": "function", "name": "bad.name", "parameters": {"type": "object"}}])
    with pytest.raises(StrictSchemaError):
        strictify({"type": "object", "properties": {"x": {"if": {}}}})
