"""The ``Toolset`` protocol: a source of tools that the remote model may call, and the tools it offers.

A toolset lists its tools as ``OfferedTool``s, each carrying the ``ToolOwner`` that runs it and
the name it has there, so that a call goes back to its owner without anyone parsing a name.
Wrappers (``PrefixedToolset``, ``PolicyToolset``) rename, filter and set modes; they own no tools
and never run anything. A toolset's health is state (``problem()``), never searched for in text.

This module owns the protocol and the generic wrappers; it never does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, Literal, Protocol, TypeVar

from mcp.types import CallToolResult, TextContent, Tool

from server.toolsets.policy import Policy

S = TypeVar("S")
V = TypeVar("V")

#: ``run``: the bridge runs the call; ``return``: the call is handed back to the caller; ``ask``: the bridge
#: runs it once the person approves it in the host (see ``server.bridge.approval``).
RunMode = Literal["run", "return", "ask"]


@dataclass(frozen=True)
class OfferedTool:
    """One tool as offered to the model: its name there, its schema, and who runs it."""

    name: str
    description: str | None
    input_schema: dict[str, Any]
    owner: ToolOwner
    #: The tool's name inside ``owner``: what ``owner.call`` expects.
    owner_name: str
    read_only: bool = False
    mode: RunMode = "run"
    #: The MCP listing the tool came from, when it came from one (for proxy mode).
    listing: Tool | None = None

    @classmethod
    def from_listing(cls, tool: Tool, owner: ToolOwner) -> OfferedTool:
        """A tool from an MCP ``tools/list``, run by ``owner`` under its own name."""
        return cls(
            name=tool.name,
            description=tool.description,
            input_schema=tool.input_schema,
            owner=owner,
            owner_name=tool.name,
            read_only=bool(tool.annotations and tool.annotations.read_only_hint),
            listing=tool,
        )

    async def call(self, arguments: dict[str, Any], timeout: float) -> CallToolResult:
        return await self.owner.call(self.owner_name, arguments, timeout)


class ToolOwner(Protocol):
    """What runs tools: a local toolset, a downstream server, the caller's functions."""

    async def call(self, name: str, arguments: dict[str, Any], timeout: float) -> CallToolResult:
        """Run the tool called ``name`` here; failures come back as an ``is_error`` result."""
        ...


class Toolset(Protocol):
    """A source of tools. ``tools()`` is cheap and synchronous: it reports the current state."""

    def tools(self) -> Sequence[OfferedTool]: ...

    def problem(self) -> str | None:
        """Why this toolset offers fewer tools than it should right now, or None when it is healthy."""
        ...

    def might_offer(self, name: str) -> bool:
        """Whether ``name`` is one this toolset would offer when healthy (to explain a missing tool)."""
        ...


class Memo(Generic[S, V]):
    """The last value built from a source, rebuilt only when the source is another object: toolsets hand
    out the same listing until a server lists its tools again, so wrappers need not redo their work."""

    def __init__(self) -> None:
        self._source: S | None = None
        self._value: V | None = None

    def get(self, source: S, build: Callable[[S], V]) -> V:
        if self._value is None or source is not self._source:
            self._source, self._value = source, build(source)
        return self._value


def error_result(text: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


class PrefixedToolset:
    """The tools of ``inner`` under ``<prefix><name>``; calls still go to ``inner``'s owners."""

    def __init__(self, inner: Toolset, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix
        self._memo = Memo[Sequence[OfferedTool], list[OfferedTool]]()

    def tools(self) -> list[OfferedTool]:
        return self._memo.get(self.inner.tools(), lambda tools: [replace(t, name=self.prefix + t.name) for t in tools])

    def problem(self) -> str | None:
        return self.inner.problem()

    def might_offer(self, name: str) -> bool:
        return name.startswith(self.prefix)


class PolicyToolset:
    """The tools of ``inner`` that ``policy`` lets the model see, each with its mode.

    ``default`` is the mode of a tool the policy does not name; None means by annotation
    (read-only tools run, the others take ``writes``: ``return`` to the caller, or ``ask`` the person).
    """

    def __init__(
        self, inner: Toolset, policy: Policy, default: RunMode | None = None, writes: RunMode = "return"
    ) -> None:
        self.inner = inner
        self.policy = policy
        self.default: RunMode | None = default
        self.writes: RunMode = writes
        self._memo = Memo[Sequence[OfferedTool], list[OfferedTool]]()

    def tools(self) -> list[OfferedTool]:
        return self._memo.get(self.inner.tools(), self._apply)

    def _apply(self, tools: Sequence[OfferedTool]) -> list[OfferedTool]:
        offered: list[OfferedTool] = []
        for tool in tools:
            mode = self.policy.mode_for(tool.name, read_only=tool.read_only, default=self.default, writes=self.writes)
            if mode != "hidden":
                offered.append(replace(tool, mode=mode))
        return offered

    def problem(self) -> str | None:
        return self.inner.problem()

    def might_offer(self, name: str) -> bool:
        return self.inner.might_offer(name)


class CombinedToolset:
    """Several toolsets seen together; the first to offer a name wins."""

    def __init__(self, toolsets: Sequence[Toolset]) -> None:
        self.toolsets = list(toolsets)
        self._sources: list[Sequence[OfferedTool]] = []
        self._by_name: dict[str, OfferedTool] = {}

    def tools(self) -> list[OfferedTool]:
        return list(self.by_name().values())

    def by_name(self) -> dict[str, OfferedTool]:
        """The offered tools by name, rebuilt only when one of the toolsets lists something new."""
        sources = [t.tools() for t in self.toolsets]
        if len(sources) != len(self._sources) or any(a is not b for a, b in zip(sources, self._sources, strict=True)):
            seen: dict[str, OfferedTool] = {}
            for tools in sources:
                for tool in tools:
                    seen.setdefault(tool.name, tool)
            self._sources, self._by_name = sources, seen
        return dict(self._by_name)

    def problems(self) -> list[str]:
        return [p for t in self.toolsets if (p := t.problem()) is not None]

    def unavailable(self, name: str) -> str | None:
        """Why ``name`` is missing, when a toolset that would offer it is unhealthy."""
        for toolset in self.toolsets:
            if toolset.might_offer(name) and (problem := toolset.problem()) is not None:
                return problem
        return None
