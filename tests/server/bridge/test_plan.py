"""The planner's cache of converted function specs: a large toolset is converted once, not on every call."""

from __future__ import annotations

from typing import Any

import pytest
from mcp.types import CallToolResult

from server.bridge import plan
from server.bridge.conversation import Options
from server.bridge.plan import Planner
from server.toolsets.base import CombinedToolset, OfferedTool, error_result


class ManyTools:
    """A toolset listing ``count`` tools, the same listed objects on every call (as the hub's are)."""

    def __init__(self, count: int) -> None:
        self._tools = [
            OfferedTool(
                name=f"tool_{i}",
                description=f"tool number {i}",
                input_schema={"type": "object", "properties": {"n": {"type": "integer", "minimum": i}}},
                owner=self,
                owner_name=f"tool_{i}",
            )
            for i in range(count)
        ]

    def tools(self) -> list[OfferedTool]:
        return self._tools

    async def call(self, name: str, arguments: dict[str, Any], timeout: float) -> CallToolResult:
        return error_result("not run in this test")

    def problem(self) -> str | None:
        return None

    def might_offer(self, name: str) -> bool:
        return True


@pytest.mark.parametrize("count", [10, 1_500])
def test_a_toolset_is_converted_once_however_large(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    conversions: list[str] = []
    real = plan.to_function_tool

    def counting(*args: Any, **kwargs: Any) -> Any:
        conversions.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(plan, "to_function_tool", counting)
    planner = Planner(CombinedToolset([ManyTools(count)]))
    first = planner.offer(Options(model="m"))
    assert len(conversions) == count
    second = planner.offer(Options(model="m"))
    assert len(conversions) == count  # above the old 1,024 bound, every call converted everything again
    assert list(second.offered) == list(first.offered)
    assert len(second.offered) == count
    assert all(second.offered[n].spec is first.offered[n].spec for n in first.offered)
