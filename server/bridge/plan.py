"""Which functions a conversation offers the model: checked before anything is sent.

``Planner`` turns the conversation's options (``tools``, ``functions``, ``tool_choice``) and the
toolsets available now into an ``Offer``. It owns the cache of converted function specs; it
never runs a tool and never talks to the gateway.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import pydantic_core
from mcp.server.mcpserver.exceptions import ToolError

from server.bridge.conversation import Options
from server.bridge.loop import Offer
from server.toolsets.base import CombinedToolset, OfferedTool
from server.toolsets.functions import FunctionsToolset
from server.upstream.translation import FunctionSpec, NameMap, UnsupportedToolError, to_function_tool

logger = logging.getLogger(__name__)

# Least recently used first out. The count bound is above any real toolset (the hub caps a server's tools
# at 1,000): a cache smaller than the set offered on every call would miss on every call.
_MAX_CACHED_SPECS = 16_384
_MAX_CACHED_BYTES = 16 * 1024 * 1024


class Planner:
    """Turns a conversation's options into the ``Offer`` of functions the model sees, remembering converted specs.

    Never runs a tool and never talks to the gateway.
    """

    def __init__(self, available: CombinedToolset) -> None:
        self.available = available
        self._specs: OrderedDict[tuple[str, str | None, bytes, str], FunctionSpec] = OrderedDict()
        self._cached_bytes = 0
        self._keys: OrderedDict[int, tuple[dict[str, Any], bytes]] = OrderedDict()

    def offer(self, options: Options) -> Offer:
        """The functions offered under ``options``; a ``ToolError`` says what the caller must change."""
        available = self.available.by_name()
        names = list(available) if options.tools is None else options.tools
        self._check_names(names, available)
        functions = FunctionsToolset(options.functions).tools()
        self._check_functions(functions, names)
        offer = Offer(names=NameMap.build([*names, *(f.name for f in functions)]))
        for name in names:
            try:
                offer.add(self._spec(available[name], offer.names.to_api[name]), available[name])
            except UnsupportedToolError as exc:
                logger.warning("%s", exc)
        for function in functions:
            try:
                offer.add(self._spec(function, offer.names.to_api[function.name]), function)
            except UnsupportedToolError as exc:
                raise ToolError(str(exc)) from exc
        choice = options.tool_choice
        if choice not in ("auto", "none", "required") and choice not in offer.names.to_api:
            raise ToolError(f"tool_choice {choice!r} is not auto, none, required or the name of an offered tool")
        return offer

    def _check_names(self, names: list[str], available: dict[str, OfferedTool]) -> None:
        unknown = [n for n in names if n not in available]
        down = sorted({p for n in unknown if (p := self.available.unavailable(n)) is not None})
        if down:
            raise ToolError(f"{'; '.join(down)}; it is retried with backoff, try again shortly")
        if unknown:
            raise ToolError(
                f"unknown tool(s) {', '.join(unknown)} in tools; the tools available are: {', '.join(available)}"
            )

    @staticmethod
    def _check_functions(functions: list[OfferedTool], names: list[str]) -> None:
        clash = [f.name for f in functions if f.name in names]
        if clash:
            raise ToolError(
                f"function name(s) {', '.join(clash)} clash with this server's tools; rename them, or leave those "
                "tools out with the tools argument"
            )
        if len({f.name for f in functions}) != len(functions):
            raise ToolError("two functions have the same name")

    def _key_of(self, schema: dict[str, Any]) -> bytes:
        """The schema's cache key, computed once per schema object: toolsets hand out the same listed
        schema objects on every call until a server lists its tools again."""
        known = self._keys.get(id(schema))
        if known is not None and known[0] is schema:
            self._keys.move_to_end(id(schema))
            return known[1]
        key = _schema_key(schema)
        self._keys[id(schema)] = (schema, key)
        self._keys.move_to_end(id(schema))
        while len(self._keys) > _MAX_CACHED_SPECS:
            self._keys.popitem(last=False)
        return key

    def _spec(self, tool: OfferedTool, api_name: str) -> FunctionSpec:
        """``to_function_tool``, remembered: the same tools are offered on every call."""
        schema_key = self._key_of(tool.input_schema)
        key = (tool.name, tool.description, schema_key, api_name)
        spec = self._specs.get(key)
        if spec is not None:
            self._specs.move_to_end(key)
            return spec
        spec = to_function_tool(tool.name, tool.description, tool.input_schema, api_name)
        self._specs[key] = spec
        self._cached_bytes += len(schema_key)
        # Bounded in count and in bytes (callers' schemas may all differ); the oldest go, never all at once.
        while len(self._specs) > 1 and (len(self._specs) > _MAX_CACHED_SPECS or self._cached_bytes > _MAX_CACHED_BYTES):
            old, _ = self._specs.popitem(last=False)
            self._cached_bytes -= len(old[2])
        return spec


def _schema_key(schema: dict[str, Any]) -> bytes:
    """The schema's JSON as pydantic writes it (fast; keys in their order: the same client sends the same
    order, and another order only costs a conversion)."""
    try:
        return pydantic_core.to_json(schema)
    except (pydantic_core.PydanticSerializationError, ValueError, RecursionError):  # circular, too deep
        return f"unkeyable:{id(schema)}".encode()
