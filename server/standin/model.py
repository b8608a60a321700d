"""The stand-in's deterministic "model": which tools a prompt asks for, with which arguments,
and the answer built from tool outputs.

It is not a language model and never pretends to be one: every answer it writes starts with
``LABEL``. Its rules are simple enough to predict in a test:

* A tool is asked for when a word of its name (split on ``_``, ``-``, ``.``; the last part of a
  namespaced ``server__tool`` name counts too) appears in the prompt, matched on its first five
  letters ("calculator" matches "Calculate"). Arguments come from the prompt where a rule knows
  the parameter (numbers around an operator, "N random numbers between X and Y", a quoted string,
  a time zone name), else from the schema's default, else a plain value of the right type.
* Only function tools are called, top-level or offered inside a ``namespace`` (the call then
  names its namespace); built-in tools (web search, file search, ...) and custom tools never are.
* It calls every asked-for tool at once (one at a time when ``parallel_tool_calls`` is false),
  never the same tool twice in one conversation, and answers once every call has its output.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, TypeGuard

LABEL = "[offline stand-in, not a model]"

_WORD = re.compile(r"[A-Za-z]+")
_BINARY = re.compile(r"(-?\d+(?:\.\d+)?)\s*([+\-*/^×÷x]|\*\*)\s*(-?\d+(?:\.\d+)?)")
_BETWEEN = re.compile(r"between\s+(-?\d+)\s+and\s+(-?\d+)", re.IGNORECASE)
_COUNT = re.compile(r"(\d+)\s+(?:random\s+)?(?:numbers|integers|values)", re.IGNORECASE)
_QUOTED = re.compile(r"[\"“']([^\"”']{1,500})[\"”']")
_ANSWER_LABEL = re.compile(r'<answer label="([^"]{1,80})">')
_ZONE = re.compile(r"\b([A-Z][a-z]+/[A-Z][A-Za-z_]+)\b")
_OPERATORS = {
    "+": "add",
    "-": "subtract",
    "*": "multiply",
    "x": "multiply",
    "×": "multiply",
    "/": "divide",
    "÷": "divide",
    "^": "power",
    "**": "power",
}
_STOP = {"get", "set", "the", "info", "tool", "list", "data", "call", "run", "use", "make"}


def is_object(value: object) -> TypeGuard[dict[str, Any]]:
    """True for a decoded JSON object (a dict: JSON object keys are strings)."""
    return isinstance(value, dict)


def is_array(value: object) -> TypeGuard[list[Any]]:
    """True for a decoded JSON array."""
    return isinstance(value, list)


@dataclass(frozen=True)
class PlannedCall:
    """One function call the stand-in will make this turn: the tool's name, its arguments, and the
    namespace the tool was offered in (None for a top-level function)."""

    name: str
    arguments: dict[str, Any]
    namespace: str | None = None


def tool_key(name: str, namespace: str | None = None) -> str:
    """What tells offered functions apart: the name, qualified by its namespace (``ns.name``) if any.

    Function and namespace names never contain a dot, so the key is unambiguous."""
    return f"{namespace}.{name}" if namespace else name


def _stem(word: str) -> str:
    return word.lower()[:5]


def _name_words(name: str) -> list[str]:
    tail = name.split("__")[-1]
    words = [w for w in _WORD.findall(tail.replace("_", " ")) if len(w) >= 3 and w.lower() not in _STOP]
    return words or [tail]


def asks_for(prompt: str, tool_name: str) -> bool:
    prompt_stems = {_stem(w) for w in _WORD.findall(prompt) if len(w) >= 3}
    return any(_stem(w) in prompt_stems for w in _name_words(tool_name))


def _types(schema: dict[str, Any]) -> list[str]:
    kind = schema.get("type")
    if is_array(kind):
        return [k for k in kind if k != "null"]
    if isinstance(kind, str):
        return [kind]
    for option in schema.get("anyOf", []):
        if is_object(option) and option.get("type") not in (None, "null"):
            return _types(option)
    return ["string"]


def _nullable(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    if kind == "null" or (is_array(kind) and "null" in kind):
        return True
    return any(is_object(o) and o.get("type") == "null" for o in schema.get("anyOf", []))


def _plain_value(schema: dict[str, Any]) -> Any:
    if _nullable(schema):
        return None
    if "default" in schema:
        return schema["default"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = _types(schema)[0]
    plain: dict[str, Any] = {"string": "", "integer": 0, "number": 0, "boolean": False, "array": [], "object": {}}
    return plain.get(kind)


def _from_prompt(param: str, prompt: str) -> Any:
    """A value for ``param`` read from the prompt, or None when no rule applies."""
    key = param.lower()
    binary = _BINARY.search(prompt)
    between = _BETWEEN.search(prompt)
    if key in {"a", "x", "left", "first"} and binary:
        return float(binary.group(1))
    if key in {"b", "y", "right", "second"} and binary:
        return float(binary.group(3))
    if key in {"operation", "op", "operator"} and binary:
        return _OPERATORS[binary.group(2)]
    if key in {"min", "minimum", "low", "lower"} and between:
        return int(between.group(1))
    if key in {"max", "maximum", "high", "upper"} and between:
        return int(between.group(2))
    if key in {"count", "n", "number", "how_many"} and (match := _COUNT.search(prompt)):
        return int(match.group(1))
    if key in {"timezone", "tz", "zone"} and (match := _ZONE.search(prompt)):
        return match.group(1)
    return None


def plan_arguments(prompt: str, parameters: dict[str, Any], strict: bool) -> dict[str, Any]:
    properties: dict[str, Any] = parameters.get("properties") or {}
    required = set(parameters.get("required") or [])
    quoted = _QUOTED.search(prompt)
    arguments: dict[str, Any] = {}
    for name, schema in properties.items():
        schema: dict[str, Any] = schema if is_object(schema) else {}
        value = _from_prompt(name, prompt)
        kinds = _types(schema)
        if value is None and "string" in kinds and quoted and name in required:
            value, quoted = quoted.group(1), None
        if value is not None:
            if kinds[0] == "integer" and isinstance(value, float) and value.is_integer():
                value = int(value)
            arguments[name] = value
        elif name in required:
            arguments[name] = _plain_value(schema)
        elif strict:
            arguments[name] = None  # strict mode: optional parameters are sent as null
    return arguments


def plan_calls(
    prompt: str, tools: list[dict[str, Any]], done: set[str], tool_choice: Any, parallel: bool
) -> list[PlannedCall]:
    """The calls for this turn: tools asked for and not yet called.

    Only ``function`` tools are ever called (a function of a namespace comes with its ``namespace``
    key); ``done`` holds the ``tool_key`` of each function called already."""
    functions = [t for t in tools if t.get("type") == "function"]
    if tool_choice == "none":
        return []

    def key(tool: dict[str, Any]) -> str:
        return tool_key(tool["name"], tool.get("namespace"))

    if is_object(tool_choice) and tool_choice.get("type") == "function":
        functions = [t for t in functions if t.get("name") == tool_choice.get("name")]
        wanted = [t for t in functions if key(t) not in done]
    else:
        wanted = [t for t in functions if key(t) not in done and asks_for(prompt, t["name"])]
        if not wanted and tool_choice == "required" and functions and not done:
            wanted = functions[:1]
    if not parallel:
        wanted = wanted[:1]
    return [
        PlannedCall(
            t["name"], plan_arguments(prompt, t.get("parameters") or {}, bool(t.get("strict"))), t.get("namespace")
        )
        for t in wanted
    ]


def _shorten(text: str, limit: int = 600) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def answer(prompt: str, outputs: list[tuple[str, str]], model: str = "") -> str:
    """The final message: what each tool returned, labelled as the stand-in's and by the model asked for
    (so that answers of different models differ). Asked to compare labelled answers (``<answer
    label="...">``, as a synthesis request has them), it lists the labels it was given."""
    label = f"{LABEL} As {model}:" if model else LABEL
    if not outputs and (compared := _ANSWER_LABEL.findall(prompt)):
        return f"{label} Compared {len(compared)} answers: {', '.join(compared)}."
    if not outputs:
        return f"{label} No tool was needed. You asked: {_shorten(prompt, 300)}"
    lines = [f"{label} Results of {len(outputs)} tool call(s):"]
    lines += [f"- {name}: {_shorten(output)}" for name, output in outputs]
    return "\n".join(lines)


def structured_answer(schema: dict[str, Any], outputs: list[tuple[str, str]]) -> str:
    """A JSON document matching ``schema``; strings say where it came from."""

    def build(node: dict[str, Any], depth: int = 0) -> Any:
        if depth > 8:
            return None
        if "enum" in node and node["enum"]:
            return node["enum"][0]
        kind = _types(node)[0]
        if kind == "object":
            properties: dict[str, Any] = node.get("properties") or {}
            return {k: build(v if is_object(v) else {}, depth + 1) for k, v in properties.items()}
        if kind == "array":
            return []
        if kind in ("integer", "number"):
            return node.get("minimum", 0)
        if kind == "boolean":
            return False
        return f"{LABEL} " + "; ".join(f"{n}: {_shorten(o, 120)}" for n, o in outputs) if outputs else LABEL

    return json.dumps(build(schema), ensure_ascii=False)


def estimate_tokens(text: str) -> int:
    """Token count estimate: one token per four characters (OpenAI's rule of thumb), at least one."""
    return max(1, (len(text) + 3) // 4) if text else 0
