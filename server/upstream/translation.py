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
from typing import Any, cast

from mcp.types import (
    AudioContent,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    TextResourceContents,
)

from server.upstream.jsonvalues import is_object
from server.upstream.schemas import MAX_DEPTH, StrictSchemaError, normalise, resolve_ref, strictify

_VALID_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_INVALID_CHAR = re.compile(r"[^a-zA-Z0-9_-]")
MAX_OUTPUT_CHARS = 100_000


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
    """The function for an MCP tool, or ``UnsupportedToolError`` when its schema is not an object schema."""
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


def _drop_optional_nulls(value: Any, schema: dict[str, Any], root: dict[str, Any], depth: int = 0) -> Any:
    if depth > MAX_DEPTH or not is_object(value):
        return value
    if "$ref" in schema:
        try:
            schema = resolve_ref(schema["$ref"], root)
        except StrictSchemaError:
            return value
    properties: Any = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    result: dict[str, Any] = {}
    for key, item in value.items():
        if item is None and key in properties and key not in required:
            continue
        sub: Any = properties.get(key)
        result[key] = _drop_optional_nulls(item, sub, root, depth + 1) if is_object(sub) else item
    return result


def parse_arguments(spec: FunctionSpec, arguments: str) -> dict[str, Any]:
    """The MCP arguments for a call, or ``ArgumentError`` with a message the model can act on."""
    try:
        value: Any = json.loads(arguments) if arguments.strip() else {}
    except ValueError as exc:
        raise ArgumentError(
            f"the arguments for {spec.api_name} are not valid JSON ({exc}); send a JSON object matching its schema"
        ) from None
    if not isinstance(value, dict):
        raise ArgumentError(f"the arguments for {spec.api_name} must be a JSON object, got {type(value).__name__}")
    value = _drop_optional_nulls(value, spec.schema, spec.schema)
    # Imported on first use, the one such seam in the bridge: jsonschema adds ~110 ms to start-up, and
    # only model-written arguments need it.
    import jsonschema.exceptions
    import jsonschema.validators
    import referencing.exceptions

    try:
        validator_cls = jsonschema.validators.validator_for(spec.schema, default=jsonschema.Draft202012Validator)
        # typeshed's jsonschema stubs leave out best_match's return type: the most relevant error, or None.
        error = cast(
            "jsonschema.exceptions.ValidationError | None",
            jsonschema.exceptions.best_match(  # pyright: ignore[reportUnknownMemberType] -- unannotated in the stubs
                validator_cls(spec.schema).iter_errors(value)
            ),
        )
    except (jsonschema.exceptions.SchemaError, referencing.exceptions.Unresolvable, RecursionError):
        return value  # the tool's own schema is broken: let the tool judge its arguments
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise ArgumentError(f"invalid arguments for {spec.api_name} at {where}: {error.message}")
    return value


def _describe(block: Any) -> str:
    if isinstance(block, TextContent):
        return block.text
    if isinstance(block, ImageContent | AudioContent):
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
    if result.structured_content is not None:
        structured = json.dumps(result.structured_content, ensure_ascii=False, separators=(",", ":"))
        if structured not in parts:
            parts.append(structured)
    text = "\n".join(p for p in parts if p) or "(no output)"
    if result.is_error:
        text = f"Error: {text}"
    return cap(text, limit)


def error_output(message: str) -> str:
    return f"Error: {message}"
