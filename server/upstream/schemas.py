"""JSON Schemas for function tools: MCP's input schemas normalised, and made strict where they can be.

Strict mode (Structured Outputs) accepts a subset of JSON Schema: every property required, no
additional properties, a short list of keywords. ``strictify`` rewrites a schema into that subset
(optional properties become required and nullable) or raises ``StrictSchemaError``; keywords that only
narrow what is valid are dropped and still enforced, since arguments are checked against the
original schema. Pure functions, no I/O.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from server.upstream.jsonvalues import is_array, is_object

MAX_DEPTH = 10
MAX_PROPERTIES = 5000

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


def resolve_ref(ref: str, root: dict[str, Any]) -> dict[str, Any]:
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
            target = resolve_ref(node.pop("$ref"), self.root)
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
            resolve_ref(node["$ref"], self.root)  # checked, kept: strict mode supports local refs
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


def is_strict(schema: dict[str, Any]) -> bool:
    """Whether ``schema`` already is a valid strict schema (a ``response_format`` can be sent as strict)."""
    try:
        return strictify(schema) == schema
    except (StrictSchemaError, RecursionError):
        return False
