"""Model-written arguments checked against a tool's own schema, with schemas from outside kept inert.

Schemas come from callers and downstream servers, so validation never does what a hostile schema asks
of it beyond checking: no remote ``$ref`` is fetched (local refs only), regular expressions run on
RE2 (linear time; a pattern RE2 cannot compile is not checked, the tool judges), and arguments nested
deeper than ``MAX_ARGUMENT_DEPTH`` are refused before any recursive code sees them. Loaded on the first
call, not at start-up (see ``translation.parse_arguments``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any, cast

import jsonschema.exceptions
import jsonschema.validators
import re2  # pyright: ignore[reportMissingTypeStubs] -- google-re2 ships no stubs
import referencing
import referencing.exceptions
from jsonschema.protocols import Validator

from server.upstream.jsonvalues import depth_of, is_array, is_object, scrub_json
from server.upstream.schemas import MAX_DEPTH, StrictSchemaError, resolve_ref
from server.upstream.translation import ArgumentError, FunctionSpec

MAX_ARGUMENT_DEPTH = 64
_PATTERN = "x-key4u-pattern"
_PATTERN_PROPERTIES = "x-key4u-patternProperties"
_CACHED = 256

_RE2_OPTIONS: Any = re2.Options()
_RE2_OPTIONS.log_errors = False  # an unsupported pattern is a normal case here, not a C++ log line


def _search(pattern: str, text: str) -> bool | None:
    """Whether ``pattern`` matches somewhere in ``text`` (RE2), or None when RE2 cannot compile it."""
    try:
        compiled: Any = re2.compile(pattern, _RE2_OPTIONS)  # pyright: ignore[reportUnknownMemberType]
    except Exception:  # re2.error: a pattern outside RE2's syntax (lookaround, backreferences)
        return None
    return compiled.search(text) is not None


# jsonschema calls keyword functions with the validator itself; its Validator protocol leaves out descend().


def _pattern(validator: Any, pattern: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if isinstance(instance, str) and isinstance(pattern, str) and _search(pattern, instance) is False:
        yield jsonschema.exceptions.ValidationError(f"{instance[:80]!r} does not match {pattern[:200]!r}")


def _matches_any(patterns: Mapping[str, Any], key: str) -> bool:
    return any(_search(p, key) for p in patterns)


def _pattern_properties(validator: Any, patterns: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not is_object(instance) or not is_object(patterns):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, additional: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not is_object(instance) or not is_object(schema):
        return
    properties: object = schema.get("properties") or {}
    patterns: object = schema.get(_PATTERN_PROPERTIES) or {}
    known = properties if is_object(properties) else {}
    extras = sorted(k for k in instance if k not in known and not (is_object(patterns) and _matches_any(patterns, k)))
    if is_object(additional):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif additional is False and extras:
        shown = ", ".join(repr(e[:40]) for e in extras[:10])
        yield jsonschema.exceptions.ValidationError(f"Additional properties are not allowed ({shown} unexpected)")


def _inert(node: Any, depth: int = 0) -> Any:
    """A copy of a schema whose regex keywords are renamed to the RE2 keywords above."""
    if depth > MAX_DEPTH * 4:
        raise RecursionError("schema too deep")
    if is_array(node):
        return [_inert(v, depth + 1) for v in node]
    if not is_object(node):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "pattern" and isinstance(value, str):
            out[_PATTERN] = value
        elif key == "patternProperties" and is_object(value):
            out[_PATTERN_PROPERTIES] = {k: _inert(v, depth + 1) for k, v in value.items()}
        elif key == "unevaluatedProperties" and "patternProperties" in node:
            continue  # it would consult the renamed patterns with Python's re: not checked
        elif key in ("properties", "$defs", "definitions", "dependentSchemas"):
            out[key] = {k: _inert(v, depth + 1) for k, v in value.items()} if is_object(value) else value
        else:
            out[key] = _inert(value, depth + 1)
    return out


def _refuse(uri: str) -> referencing.Resource[Any]:
    raise referencing.exceptions.NoSuchResource(ref=uri)


_REGISTRY: referencing.Registry[Any] = referencing.Registry(retrieve=_refuse)
_validators: dict[int, tuple[FunctionSpec, Validator]] = {}


def _validator(spec: FunctionSpec) -> Validator:
    cached = _validators.get(id(spec))
    if cached is not None and cached[0] is spec:
        return cached[1]
    base = jsonschema.validators.validator_for(spec.schema, default=jsonschema.Draft202012Validator)
    keywords = {
        _PATTERN: _pattern,
        _PATTERN_PROPERTIES: _pattern_properties,
        "additionalProperties": _additional_properties,
    }
    # typeshed leaves extend() unannotated: it returns a validator class like ``base``.
    checking = cast("type[Validator]", jsonschema.validators.extend(base, keywords))  # pyright: ignore[reportUnknownMemberType]
    validator = checking(_inert(spec.schema), registry=_REGISTRY)
    if len(_validators) >= _CACHED:
        _validators.clear()
    _validators[id(spec)] = (spec, validator)
    return validator


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


def parse(spec: FunctionSpec, arguments: str) -> dict[str, Any]:
    """The MCP arguments for a call, or ``ArgumentError`` with a message the model can act on."""
    try:
        value: Any = json.loads(arguments) if arguments.strip() else {}
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise ArgumentError(
            f"the arguments for {spec.api_name} are not valid JSON ({reason}); send a JSON object matching its schema"
        ) from None
    if not is_object(value):
        raise ArgumentError(f"the arguments for {spec.api_name} must be a JSON object, got {type(value).__name__}")
    if depth_of(value, MAX_ARGUMENT_DEPTH) > MAX_ARGUMENT_DEPTH:
        raise ArgumentError(
            f"the arguments for {spec.api_name} nest deeper than {MAX_ARGUMENT_DEPTH} levels; send flatter JSON"
        )
    if "\\u" in arguments:  # an escape may have decoded to a lone surrogate, which nothing can write out
        value = scrub_json(value)
    value = _drop_optional_nulls(value, spec.schema, spec.schema)
    try:
        # typeshed's jsonschema stubs leave out best_match's return type: the most relevant error, or None.
        error = cast(
            "jsonschema.exceptions.ValidationError | None",
            jsonschema.exceptions.best_match(_validator(spec).iter_errors(value)),  # pyright: ignore[reportUnknownMemberType]
        )
    except (jsonschema.exceptions.SchemaError, referencing.exceptions.Unresolvable, RecursionError):
        return cast("dict[str, Any]", value)  # the tool's own schema is broken or remote: the tool judges
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise ArgumentError(f"invalid arguments for {spec.api_name} at {where}: {error.message[:500]}")
    return cast("dict[str, Any]", value)


__all__ = ["MAX_ARGUMENT_DEPTH", "parse"]
