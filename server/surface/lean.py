"""Lean tool listings: the tools' JSON Schemas without the noise pydantic adds.

Every MCP host sends every tool's definition with every model request, so each character of a
``tools/list`` answer is context the user pays for, on every turn. Pydantic's schemas carry
keywords no model or validator needs: a ``title`` on every property and model (the name again,
title-cased), ``"default": null`` on every optional argument, ``"additionalProperties": true``.

``lean_schema`` returns a copy without them that accepts exactly the same instances, and
``LeanMiddleware`` applies it to every tool's ``inputSchema`` and ``outputSchema`` in ``tools/list``,
proxied tools included. Only the listing changes: the SDK still validates arguments and results
against the tools' own models, and the client validates results against the lean schema it was
sent, which accepts the same results.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.types import ListToolsResult, Tool
from pydantic import ValidationError

from server.upstream.jsonvalues import is_array, is_object

#: Keywords whose value is one subschema.
_SCHEMA = frozenset(
    {
        "additionalItems",
        "additionalProperties",
        "contains",
        "contentSchema",
        "else",
        "if",
        "items",
        "not",
        "propertyNames",
        "then",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
#: Keywords whose value is a list of subschemas (``items`` too, in drafts before 2020-12).
_SCHEMA_LIST = frozenset({"allOf", "anyOf", "oneOf", "prefixItems", "items"})
#: Keywords whose value maps names (of properties, definitions, ...) to subschemas.
_SCHEMA_MAP = frozenset({"$defs", "definitions", "dependentSchemas", "patternProperties", "properties"})
#: ``unevaluated*`` see the properties and items that an ``additionalProperties: true`` or an
#: ``items: {}`` marks as evaluated, so in a schema that has either those are not no-ops.
_UNEVALUATED = frozenset({"unevaluatedItems", "unevaluatedProperties"})


def lean_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` without noise, accepting exactly the instances ``schema`` accepts.

    Dropped wherever a subschema stands (never a property *named* ``title``, nor anything inside
    ``enum``, ``const``, ``default`` or ``examples``, which are values, not schemas):

    - ``title``: an annotation; pydantic sets it to the property's or model's name;
    - ``"default": null``: an annotation, and null is what an absent optional argument means anyway
      (other defaults are kept: they tell the model what omitting an argument does);
    - ``"required": []``;
    - ``"additionalProperties": true`` and ``"items": {}`` (or ``true``), the defaults; kept when the
      schema uses ``unevaluatedProperties`` or ``unevaluatedItems``, which they would affect.
    """
    return _lean(schema, keep_defaults=_uses_unevaluated(schema))


def _lean(schema: Mapping[str, Any], *, keep_defaults: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if _is_noise(key, value, keep_defaults=keep_defaults):
            continue
        if key in _SCHEMA_MAP and isinstance(value, Mapping):
            named = cast("Mapping[str, Any]", value)
            out[key] = {name: _sub(sub, keep_defaults) for name, sub in named.items()}
        elif key in _SCHEMA_LIST and isinstance(value, list):
            out[key] = [_sub(sub, keep_defaults) for sub in cast("list[Any]", value)]
        elif key in _SCHEMA or key == "dependencies":
            # ``dependencies`` (before 2019-09) maps a name to a schema or to a list of names.
            if key == "dependencies" and isinstance(value, Mapping):
                deps = cast("Mapping[str, Any]", value)
                out[key] = {name: _sub(sub, keep_defaults) for name, sub in deps.items()}
            else:
                out[key] = _sub(value, keep_defaults)
        else:
            out[key] = value
    return out


def _sub(value: Any, keep_defaults: bool) -> Any:
    """A subschema leaned; anything that is not an object schema (``true``, a list of names) as it is."""
    if isinstance(value, Mapping):
        return _lean(cast("Mapping[str, Any]", value), keep_defaults=keep_defaults)
    return value


def _is_noise(key: str, value: Any, *, keep_defaults: bool) -> bool:
    if key == "title":
        return True
    if key == "default" and value is None:
        return True
    if key == "required" and value == []:
        return True
    if keep_defaults:
        return False
    if key == "additionalProperties" and value is True:
        return True
    return key == "items" and (value is True or value == {})


def _uses_unevaluated(value: Any) -> bool:
    """Whether ``unevaluatedProperties`` or ``unevaluatedItems`` appears anywhere (as a key, which
    errs on the safe side when a property bears one of those names)."""
    if isinstance(value, Mapping):
        mapping = cast("Mapping[str, Any]", value)
        return any(k in _UNEVALUATED or _uses_unevaluated(v) for k, v in mapping.items())
    if isinstance(value, list):
        return any(_uses_unevaluated(v) for v in cast("list[Any]", value))
    return False


def optional_arguments(schema: dict[str, Any]) -> dict[str, Any]:
    """An input schema whose optional arguments are listed as their type alone, without ``anyOf [T, null]``.

    The one change here that narrows what the listing accepts, on purpose: an optional argument is
    left out rather than sent as null, and pydantic's nullable spelling costs ~40 characters per
    argument. The server still accepts an explicit null (its own model validates the call)."""
    properties: object = schema.get("properties")
    if not is_object(properties):
        return schema
    required = set(schema.get("required") or [])
    simplified: dict[str, Any] = {}
    for name, prop in properties.items():
        choices: object = prop.get("anyOf") if is_object(prop) else None
        kept = [c for c in choices if c != {"type": "null"}] if is_array(choices) and len(choices) == 2 else []
        if name in required or not is_object(prop) or len(kept) != 1 or not is_object(kept[0]):
            simplified[name] = prop
            continue
        simplified[name] = {**kept[0], **{k: v for k, v in prop.items() if k != "anyOf"}}
    return {**schema, "properties": simplified}


def lean_tool(tool: Tool) -> Tool:
    """``tool`` with its input and output schemas leaned; everything else as it was."""
    update: dict[str, Any] = {"input_schema": optional_arguments(lean_schema(tool.input_schema))}
    if tool.output_schema is not None:
        update["output_schema"] = lean_schema(tool.output_schema)
    return tool.model_copy(update=update)


class LeanMiddleware:
    """Leans every tool's schemas in ``tools/list`` answers. Registered outside ``ProxyMiddleware``, so
    it sees the proxied tools too. Every other request goes on to the SDK unchanged."""

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        result = await call_next(ctx)
        if ctx.method != "tools/list":
            return result
        if isinstance(result, ListToolsResult):
            listing = result
        elif isinstance(result, dict):
            try:
                listing = ListToolsResult.model_validate(result)
            except ValidationError:  # not a listing after all: the client gets it as it was
                return result
        else:
            return result
        return listing.model_copy(update={"tools": [lean_tool(t) for t in listing.tools]})
