"""The four local tools through a real MCP client, in memory, in both protocol eras."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest
from mcp import Client

from server.config import Settings
from server.surface.app import build_server

pytestmark = pytest.mark.anyio

KEY4U_EXAMPLE_PARAMETERS: dict[str, dict[str, Any]] = {
    "random_generator": {"min": "integer", "max": "integer", "count": "integer"},
    "system_info": {},
    "math_calculator": {"a": "number", "b": "number", "operation": "string"},
    "current_time": {},
}


@pytest.fixture(params=["auto", "legacy"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    async with Client(build_server(Settings()), mode=request.param) as c:
        yield c


async def test_lists_the_four_tools_of_the_key4u_example(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(KEY4U_EXAMPLE_PARAMETERS) <= set(tools)
    for name, params in KEY4U_EXAMPLE_PARAMETERS.items():
        schema = tools[name].input_schema
        for param, kind in params.items():
            assert schema["properties"][param]["type"] == kind
        assert tools[name].output_schema is not None
        annotations = tools[name].annotations
        assert annotations is not None and annotations.read_only_hint is True
    assert tools["math_calculator"].input_schema["required"] == ["operation", "a", "b"]
    assert tools["math_calculator"].annotations.idempotent_hint is True  # type: ignore[union-attr]
    assert "timezone" in tools["current_time"].input_schema["properties"]
    assert "Python" in (tools["system_info"].description or "")


async def test_calculator_adds_exactly(client: Client) -> None:
    result = await client.call_tool("math_calculator", {"operation": "add", "a": 123.5, "b": 456.7})
    assert not result.is_error
    assert result.structured_content is not None
    assert result.structured_content["result"] == 580.2
    assert result.content[0].text == "123.5 + 456.7 = 580.2"  # type: ignore[union-attr]


async def test_structured_content_matches_each_output_schema(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    calls = {
        "current_time": {"timezone": "Europe/Paris"},
        "system_info": {},
        "math_calculator": {"operation": "divide", "a": 1, "b": 8},
        "random_generator": {"min": 1, "max": 100, "count": 3},
    }
    for name, args in calls.items():
        result = await client.call_tool(name, args)
        assert not result.is_error, result.content
        jsonschema.validate(result.structured_content, tools[name].output_schema)  # type: ignore[arg-type]
        assert result.content[0].text  # type: ignore[union-attr]
    random = await client.call_tool("random_generator", {"min": 1, "max": 100, "count": 3})
    assert len(random.structured_content["numbers"]) == 3  # type: ignore[index]


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("math_calculator", {"operation": "modulo", "a": 1, "b": 2}, "add, subtract, multiply, divide, power"),
        ("math_calculator", {"operation": "divide", "a": 1, "b": 0}, "division by zero"),
        ("math_calculator", {"operation": "power", "a": 10, "b": 1_000_000_000}, "largest number"),
        ("math_calculator", {"operation": "add", "a": "twelve", "b": 1}, "valid number"),
        ("math_calculator", {"operation": "add", "a": 1}, "Field required"),
        ("random_generator", {"min": 10, "max": 1}, "greater than max"),
        ("random_generator", {"count": 11}, "count must be from 1 to 10"),
        ("random_generator", {"count": 0}, "count must be from 1 to 10"),
        ("current_time", {"timezone": "Nowhere/Special"}, "unknown time zone"),
        ("no_such_tool", {}, "Unknown tool"),
    ],
)
async def test_bad_arguments_are_tool_errors_and_the_server_keeps_serving(
    client: Client, name: str, args: dict[str, Any], message: str
) -> None:
    result = await client.call_tool(name, args)
    assert result.is_error
    assert message in result.content[0].text  # type: ignore[union-attr]
    after = await client.call_tool("math_calculator", {"operation": "add", "a": 0.1, "b": 0.2})
    assert after.structured_content["result"] == 0.3  # type: ignore[index]
