"""Pure conversions between MCP and the neutral model interface, for every wire format. No I/O.

* MCP tool definition -> ``FunctionSpec``: a valid, collision-free API name with a reverse map, and
  a schema made strict where it can be (``schemas.strictify``), else offered as it is.
* A function call -> MCP call arguments: parsed, strict mode's nulls for optional parameters
  dropped, and checked against the tool's own schema; a problem becomes an ``ArgumentError``
  whose message is sent back to the model as the call's output.
* ``CallToolResult`` -> the output string the model reads.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mcp.types import (
    AudioContent,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    TextResourceContents,
)

from server.upstream.jsonvalues import depth_of, scrub
from server.upstream.schemas import StrictSchemaError, normalise, strictify

_VALID_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_INVALID_CHAR = re.compile(r"[^a-zA-Z0-9_-]")
MAX_OUTPUT_CHARS = 100_000
MAX_SCHEMA_DEPTH = 32
MAX_SCHEMA_BYTES = 256 * 1024


class UnsupportedToolError(ValueError):
    """Raised when a tool's input schema cannot be offered as a function at all."""


class ArgumentError(ValueError):
    """Raised when a model's arguments cannot be used; the message is for the model."""


# --- names -----------------------------------------------------------------------------------


def _api_name(name: str) -> str:
    clean = _INVALID_CHAR.sub("_", name) or "tool"
    if clean == name and len(name) <= 64:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{clean[:55]}_{digest}"


@dataclass
class NameMap:
    """Reversible mapping between tool names and names valid for the API."""

    to_api: dict[str, str] = field(default_factory=dict[str, str])
    to_mcp: dict[str, str] = field(default_factory=dict[str, str])

    @classmethod
    def build(cls, names: Iterable[str]) -> NameMap:
        mapping = cls()
        for name in names:
            mapping.add(name)
        return mapping

    def add(self, name: str) -> str:
        if name in self.to_api:
            return self.to_api[name]
        candidate = _api_name(name)
        n = 1
        while candidate in self.to_mcp:
            n += 1
            digest = hashlib.sha256(f"{name}#{n}".encode()).hexdigest()[:8]
            candidate = f"{_INVALID_CHAR.sub('_', name)[:55]}_{digest}"
        self.to_api[name], self.to_mcp[candidate] = candidate, name
        return candidate


@dataclass(frozen=True)
class FunctionSpec:
    """A tool as offered to the model, whatever the wire: its API name, description and schemas.

    ``parameters`` is the strict form when ``strict`` (else ``schema`` itself); ``schema`` is the
    tool's own schema, normalised, which every call's arguments are checked against.
    """

    mcp_name: str
    api_name: str
    description: str
    parameters: dict[str, Any]
    schema: dict[str, Any]
    strict: bool
    strict_error: str | None = None


def to_function_tool(name: str, description: str | None, input_schema: Any, api_name: str) -> FunctionSpec:
    """The function for an MCP tool, or ``UnsupportedToolError`` when its schema is not an object schema,
    or is too deep or too large to offer (schemas come from callers and downstream servers)."""
    if depth_of(input_schema, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
        raise UnsupportedToolError(
            f"tool {name!r} cannot be offered: its inputSchema nests deeper than {MAX_SCHEMA_DEPTH}"
        )
    size = len(json.dumps(input_schema, default=str))
    if size > MAX_SCHEMA_BYTES:
        raise UnsupportedToolError(
            f"tool {name!r} cannot be offered: its inputSchema is {size} bytes (at most {MAX_SCHEMA_BYTES})"
        )
    schema = normalise(input_schema)
    if schema.get("type") != "object":
        raise UnsupportedToolError(
            f"tool {name!r} cannot be offered: its inputSchema must be an object schema, "
            f"got {json.dumps(input_schema)[:80]}"
        )
    text = (description or "")[:1024]
    try:
        return FunctionSpec(name, api_name, text, strictify(schema), schema, True)
    except (StrictSchemaError, RecursionError) as exc:
        return FunctionSpec(name, api_name, text, schema, schema, False, str(exc))


# --- calls back ------------------------------------------------------------------------------


def parse_arguments(spec: FunctionSpec, arguments: str) -> dict[str, Any]:
    """The MCP arguments for a call, or ``ArgumentError`` with a message the model can act on."""
    # Imported on first use, the one such seam in the bridge: jsonschema and RE2 add ~110 ms to
    # start-up, and only model-written arguments need them.
    from server.upstream.arguments import parse

    return parse(spec, arguments)


def _describe(block: Any) -> str:
    if isinstance(block, TextContent):
        return block.text
    if isinstance(block, ImageContent):  # the bridge sends what it can of it as an image, after the outputs
        size = len(block.data) * 3 // 4
        return f"[image: {block.mime_type}, about {size} bytes; shown after the tool outputs if it can be]"
    if isinstance(block, AudioContent):
        size = len(block.data) * 3 // 4
        return f"[{block.type}: {block.mime_type}, about {size} bytes, not shown]"
    if isinstance(block, ResourceLink):
        return f"[resource link: {block.uri}{f' ({block.name})' if block.name else ''}]"
    if isinstance(block, EmbeddedResource):
        resource = block.resource
        if isinstance(resource, TextResourceContents):
            return f"[resource {resource.uri}]\n{resource.text}"
        return f"[resource {resource.uri}: {resource.mime_type or 'binary'}, not shown]"
    return f"[{getattr(block, 'type', 'unknown')} content, not shown]"


def cap(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... truncated: {len(text) - limit} more characters]"


def result_to_output(result: CallToolResult, limit: int = MAX_OUTPUT_CHARS) -> str:
    """The ``function_call_output`` string for an MCP tool result."""
    parts = [_describe(block) for block in result.content]
    value = result.structured_content
    if value is not None:
        try:
            structured = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
        except (ValueError, RecursionError):  # circular or too deep to write out
            structured = "[structured content that cannot be written as JSON]"
        same, as_json = _same_as_structured(parts, value)
        if same is None:
            parts.append(structured)
        elif as_json:  # the same JSON, perhaps pretty-printed: sent once, compact
            parts[same] = structured
    text = "\n".join(p for p in parts if p) or "(no output)"
    if result.is_error:
        text = f"Error: {text}"
    return scrub(cap(text, limit))


def _same_as_structured(parts: list[str], value: dict[str, Any]) -> tuple[int | None, bool]:
    """Which text part says what the structured content says, so it is said once, not twice: the text a
    tool returned (the SDK wraps it as ``{"result": text}``), or the same JSON (then True: send the
    compact form). ``(None, False)`` when none does."""
    for n, part in enumerate(parts):
        if value == {"result": part}:
            return n, False
        if len(part) <= MAX_OUTPUT_CHARS:  # text that is not JSON fails at its first character
            try:
                parsed = json.loads(part)
            except (ValueError, RecursionError):
                continue
            if parsed == value:
                return n, True
            if value == {"result": parsed}:
                return n, False
    return None, False


def error_output(message: str) -> str:
    return scrub(f"Error: {message}")
