"""Local tools: plain functions with typed parameters, usable without MCP.

Each module defines ``NAME``, ``DESCRIPTION``, the function, and a result model with a
``summary()`` for people. ``LOCAL_TOOLS`` is the registry the server publishes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tools import current_time, math_calculator, random_generator, system_info
from tools.errors import ToolInputError


@dataclass(frozen=True)
class LocalTool:
    """One local tool as the server publishes it: its name, description, function and title, and whether
    it is idempotent. Holds no MCP objects: the surface turns it into an MCP tool.
    """

    name: str
    description: str
    fn: Callable[..., Any]
    title: str
    #: Same arguments always give the same result (true of none of these but the calculator).
    idempotent: bool


LOCAL_TOOLS: tuple[LocalTool, ...] = (
    LocalTool(current_time.NAME, current_time.DESCRIPTION, current_time.current_time, "Current time", False),
    LocalTool(system_info.NAME, system_info.DESCRIPTION, system_info.system_info, "System information", False),
    LocalTool(math_calculator.NAME, math_calculator.DESCRIPTION, math_calculator.math_calculator, "Calculator", True),
    LocalTool(
        random_generator.NAME, random_generator.DESCRIPTION, random_generator.random_generator, "Random integers", False
    ),
)

__all__ = ["LOCAL_TOOLS", "LocalTool", "ToolInputError"]
