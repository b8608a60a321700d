"""The caller's own functions: offered to the model, never run here.

Every call to one of them comes back to the caller as a pending call (mode ``return``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mcp.types import CallToolResult

from server.bridge.request import FunctionDefinition
from server.toolsets.base import OfferedTool, error_result


class FunctionsToolset:
    """A conversation's caller-defined functions, as tools in ``return`` mode: offered to the model, never
    run here.

    ``call`` only answers with an error result: the caller runs them.
    """

    def __init__(self, functions: Sequence[FunctionDefinition]) -> None:
        self._tools = [
            OfferedTool(
                name=f.name,
                description=f.description,
                input_schema=f.input_schema,
                owner=self,
                owner_name=f.name,
                mode="return",
            )
            for f in functions
        ]

    def tools(self) -> list[OfferedTool]:
        return self._tools

    async def call(self, name: str, arguments: dict[str, Any], timeout: float) -> CallToolResult:
        return error_result(f"{name} is the caller's function: it runs on the caller's side")

    def problem(self) -> str | None:
        return None

    def might_offer(self, name: str) -> bool:
        return any(t.name == name for t in self._tools)
