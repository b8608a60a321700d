"""Pure conversions between MCP and the Responses API. No I/O.

* MCP tool definition -> Responses function tool: a valid, collision-free name with a reverse
  map, and a schema made strict where it can be (``strict: true``), else sent as it is with
  ``strict: false``.
* ``function_call`` item -> MCP call: arguments parsed, strict mode's nulls for optional
  parameters dropped, and checked against the tool's own schema; a problem becomes an
  ``ArgumentError`` whose message is sent back to the model as the call's output.
* ``CallToolResult`` -> ``function_call_output`` string.
"""

from __future__ import annotations

import copy
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

from server.upstream.wire import is_array, is_object

_VALID_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_INVALID_CHAR = re.compile(r"[^a-zA-Z0-9_-]")
MAX_DEPTH = 10
MAX_PROPERTIES = 5000
MAX_OUTPUT_CHARS = 100_000

#: Keywords the strict subset cannot express and that change what is valid: refuse strict mode.
_STRUCTURAL = {
    "not",
    "if",
    "then",
    "else",
    "dependentRequired",
    "dependentSchemas",
    "patternProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
    "prefixItems",
    "propertyNames",
}
#: Keywords strict mode rejects but that only narrow what is valid: dropped from what the model
#: sees, mentioned in the description, and still enforced because arguments are checked
#: against the original schema before the tool runs.
_NARROWING = {
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
    "uniqueItems",
    "contains",
    "minContains",
    "maxContains",
}
_DROPPED = {
    "$schema",
    "$id",
    "$comment",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
    "contentMediaType",
    "contentEncoding",
    "default",
}
_FORMATS = {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}


class StrictSchemaError(ValueError):
    """Raised when a schema cannot be expressed in strict mode."""


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


# --- schemas ---------------------------------------------------------------------------------


def normalise(schema: Any) -> dict[str, Any]:
    """A copy of ``schema`` that is a JSON Schema object with ``properties`` (MCP allows less)."""
    result: dict[str, Any] = copy.deepcopy(schema) if is_object(schema) else {}
    if "type" not in result and "anyOf" not in result and "oneOf" not in result:
        result["type"] = "object"
    if result.get("type") == "object" and not isinstance(result.get("properties"), dict):
        result["properties"] = {}
    if "definitions" in result and "$defs" not in result:
        result["$defs"] = result.pop("definitions")
        result = _rewrite_refs(result)
    return result


def _rewrite_refs(node: Any) -> Any:
    """Point ``#/definitions/...`` references at ``#/$defs/...``."""
    if is_object(node):
        return {
            k: (v.replace("#/definitions/", "#/$defs/", 1) if k == "$ref" and isinstance(v, str) else _rewrite_refs(v))
            for k, v in node.items()
        }
    if is_array(node):
        return [_rewrite_refs(v) for v in node]
    return node


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    match = re.fullmatch(r"#/(\$defs|definitions)/([^/]+)", ref)
    if not match:
        raise StrictSchemaError(f"only local $ref to #/$defs are supported, got {ref!r}")
    defs: Any = root.get("$defs") or {}
    target: Any = defs.get(match.group(2).replace("~1", "/").replace("~0", "~"))
    if not is_object(target):
        raise StrictSchemaError(f"$ref {ref!r} points nowhere")
    return target


def _note(node: dict[str, Any], extra: str) -> None:
    description = str(node.get("description") or "")
    node["description"] = f"{description} ({extra})".strip() if description else extra


def _make_nullable(node: dict[str, Any]) -> dict[str, Any]:
    kind = node.get("type")
    if isinstance(kind, str) and "anyOf" not in node and "$ref" not in node:
        if kind == "null":
            return node
        result = {**node, "type": [kind, "null"]}
        if isinstance(node.get("enum"), list) and None not in node["enum"]:
            result["enum"] = [*node["enum"], None]
        return result
    if isinstance(kind, list):
        return node if "null" in kind else {**node, "type": [*kind, "null"]}
    if isinstance(node.get("anyOf"), list):
        if any(o.get("type") == "null" for o in node["anyOf"] if is_object(o)):
            return node
        return {**node, "anyOf": [*node["anyOf"], {"type": "null"}]}
    description = node.pop("description", None)
    wrapped: dict[str, Any] = {"anyOf": [node, {"type": "null"}]}
    if description:
        wrapped["description"] = description
    return wrapped


class _Strictifier:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.properties = 0

    def convert(self, node: Any, depth: int) -> dict[str, Any]:
        if depth > MAX_DEPTH:
            raise StrictSchemaError(f"nested deeper than {MAX_DEPTH} levels")
        if not is_object(node):
            if node is True:
                raise StrictSchemaError("a schema of `true` (anything) cannot be strict")
            raise StrictSchemaError("a schema must be an object")
        node = dict(node)
        if "$ref" in node and len(node) > 1:
            target = _resolve(node.pop("$ref"), self.root)
            node = {**target, **node}  # a $ref with siblings is inlined
        for key in _STRUCTURAL & node.keys():
            raise StrictSchemaError(f"'{key}' is not supported in strict mode")
        for key in _DROPPED & node.keys():
            if key == "default" and node["default"] is not None:
                _note(node, f"default: {json.dumps(node['default'])}")
            node.pop(key)
        for key in sorted(_NARROWING & node.keys()):
            _note(node, f"{key} {json.dumps(node.pop(key))}")
        if "format" in node and node["format"] not in _FORMATS:
            _note(node, f"format {node.pop('format')}")
        if "const" in node:
            node["enum"] = [node.pop("const")]
        if "oneOf" in node:
            node["anyOf"] = node.pop("oneOf")
        if "allOf" in node:
            parts: Any = node.pop("allOf")
            if not is_array(parts) or len(parts) != 1 or not is_object(only := parts[0]):
                raise StrictSchemaError("'allOf' with more than one schema is not supported in strict mode")
            node = {**only, **node}
            return self.convert(node, depth)
        if "$ref" in node:
            _resolve(node["$ref"], self.root)  # checked, kept: strict mode supports local refs
            return node
        if isinstance(node.get("anyOf"), list):
            node["anyOf"] = [self.convert(option, depth + 1) for option in node["anyOf"]]
        kind = node.get("type")
        kinds: list[Any] = kind if is_array(kind) else [kind]
        if "object" in kinds or (kind is None and "properties" in node):
            node = self._object(node, depth)
        if "items" in node:
            if isinstance(node["items"], list):
                raise StrictSchemaError("tuple-style 'items' is not supported in strict mode")
            node["items"] = self.convert(node["items"], depth + 1)
        return node

    def _object(self, node: dict[str, Any], depth: int) -> dict[str, Any]:
        properties: Any = node.get("properties")
        extra = node.get("additionalProperties", False if properties else None)
        if extra not in (False, None):
            raise StrictSchemaError("objects with additionalProperties cannot be strict")
        if not properties and depth > 0:
            raise StrictSchemaError("a free-form object (no properties) cannot be strict")
        properties = properties or {}
        self.properties += len(properties)
        if self.properties > MAX_PROPERTIES:
            raise StrictSchemaError(f"more than {MAX_PROPERTIES} properties")
        required = set(node.get("required") or [])
        converted: dict[str, Any] = {}
        for key, sub in properties.items():
            strict_sub = self.convert(sub, depth + 1)
            converted[key] = strict_sub if key in required else _make_nullable(strict_sub)
        node.update(properties=converted, required=list(properties), additionalProperties=False)
        if "type" not in node:
            node["type"] = "object"
        return node


def strictify(schema: dict[str, Any]) -> dict[str, Any]:
    """The strict-mode form of a normalised object schema, or ``StrictSchemaError``."""
    if schema.get("type") != "object":
        raise StrictSchemaError("the root must be a plain object schema (not anyOf, not nullable)")
    root = copy.deepcopy(schema)
    converter = _Strictifier(root)
    result = converter.convert(root, 0)
    if isinstance(root.get("$defs"), dict):
        result["$defs"] = {name: converter.convert(sub, 1) for name, sub in root["$defs"].items()}
    return result


# --- tools -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FunctionSpec:
    """A tool as offered to the model, with what is needed to take its calls back."""

    mcp_name: str
    api_name: str
    tool: dict[str, Any]
    schema: dict[str, Any]
    strict: bool
    strict_error: str | None = None


def to_function_tool(name: str, description: str | None, input_schema: Any, api_name: str) -> FunctionSpec:
    """The function tool for an MCP tool, or ``UnsupportedToolError`` when its schema is not an object schema."""
    schema = normalise(input_schema)
    if schema.get("type") != "object":
        raise UnsupportedToolError(
            f"tool {name!r} cannot be offered: its inputSchema must be an object schema, "
            f"got {json.dumps(input_schema)[:80]}"
        )
    tool: dict[str, Any] = {"type": "function", "name": api_name, "description": (description or "")[:1024]}
    try:
        tool["parameters"], tool["strict"] = strictify(schema), True
        strict_error = None
    except (StrictSchemaError, RecursionError) as exc:
        tool["parameters"], tool["strict"] = schema, False
        strict_error = str(exc)
    return FunctionSpec(name, api_name, tool, schema, tool["strict"], strict_error)


# --- calls back ------------------------------------------------------------------------------


def _drop_optional_nulls(value: Any, schema: dict[str, Any], root: dict[str, Any], depth: int = 0) -> Any:
    if depth > MAX_DEPTH or not is_object(value):
        return value
    if "$ref" in schema:
        try:
            schema = _resolve(schema["$ref"], root)
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
