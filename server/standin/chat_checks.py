"""Request checks of the stand-in's ``POST /v1/chat/completions``, with OpenAI's 400 messages."""

from __future__ import annotations

from typing import Any

from server.standin.common import RequestError, check_function, strict_problem
from server.standin.model import is_array, is_object

_ROLES = ("system", "developer", "user", "assistant", "tool")
_CHOICES = ("auto", "none", "required")

# --- request checks ----------------------------------------------------------------------------


def check_chat_tools(tools: Any) -> list[dict[str, Any]]:
    """The offered functions, flattened to the Responses shape (``name`` at the top) the model plans with."""
    if tools is None:
        return []
    if not is_array(tools):
        raise RequestError(400, "Invalid type for 'tools': expected an array.", param="tools")
    flat: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        if not is_object(tool) or "type" not in tool:
            raise RequestError(400, f"Missing required parameter: 'tools[{i}].type'.", param=f"tools[{i}].type")
        if tool["type"] != "function":
            raise RequestError(
                400,
                f"Invalid value: '{tool['type']}'. Supported values are: 'function'.",
                param=f"tools[{i}].type",
                code="invalid_value",
            )
        function = tool.get("function")
        if not is_object(function):
            hint = " (The Responses shape's top-level 'name' is not Chat Completions' nested 'function'.)"
            raise RequestError(
                400,
                f"Missing required parameter: 'tools[{i}].function'.{hint if 'name' in tool else ''}",
                param=f"tools[{i}].function",
            )
        strict = function.get("strict") is True
        check_function(function.get("name"), function.get("parameters"), strict, f"tools[{i}].function")
        flat.append({"type": "function", **{k: function.get(k) for k in ("name", "description", "parameters")}})
        flat[-1]["strict"] = strict
    return flat


def _check_tool_calls(calls: Any, where: str) -> None:
    if not is_array(calls):
        raise RequestError(400, f"Invalid type for '{where}': expected an array.", param=where)
    for j, call in enumerate(calls):
        at = f"{where}[{j}]"
        function: Any = call.get("function") if is_object(call) else None
        if not is_object(call) or not isinstance(call.get("id"), str):
            raise RequestError(400, f"Missing required parameter: '{at}.id'.", param=f"{at}.id")
        if not is_object(function) or not isinstance(function.get("name"), str):
            raise RequestError(400, f"Missing required parameter: '{at}.function.name'.", param=f"{at}.function.name")
        if not isinstance(function.get("arguments"), str):
            raise RequestError(
                400,
                f"Invalid type for '{at}.function.arguments': expected a string.",
                param=f"{at}.function.arguments",
            )


def _check_pairing(messages: list[dict[str, Any]]) -> None:
    """Every ``tool_calls`` id answered by the ``tool`` messages right after it, and no other."""
    pending: list[str] = []
    offered: set[str] | None = None  # the ids of the assistant message the current tool run answers
    ended: list[dict[str, Any]] = [*messages, {"role": "end"}]
    for i, message in enumerate(ended):
        if message["role"] == "tool":
            if offered is None or message["tool_call_id"] not in offered:
                raise RequestError(
                    400,
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                    "with 'tool_calls'.",
                    param=f"messages.[{i}].role",
                )
            pending = [p for p in pending if p != message["tool_call_id"]]
            continue
        if pending:
            raise RequestError(
                400,
                "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
                f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(pending)}",
                param=f"messages.[{i}].role",
            )
        calls: list[Any] = (message.get("tool_calls") or []) if message["role"] == "assistant" else []
        pending = [c["id"] for c in calls]
        offered = set(pending) if pending else None


def check_messages(messages: Any) -> list[dict[str, Any]]:
    if messages is None:
        raise RequestError(400, "Missing required parameter: 'messages'.", param="messages")
    if not is_array(messages) or not all(is_object(m) for m in messages):
        raise RequestError(400, "Invalid type for 'messages': expected an array of objects.", param="messages")
    if not messages:
        raise RequestError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    checked: list[dict[str, Any]] = messages
    for i, message in enumerate(checked):
        role, content = message.get("role"), message.get("content")
        if role is None:
            raise RequestError(400, f"Missing required parameter: 'messages[{i}].role'.", param=f"messages[{i}].role")
        if role not in _ROLES:
            raise RequestError(
                400,
                f"Invalid value: '{role}'. Supported values are: 'system', 'developer', 'user', 'assistant', "
                "and 'tool'.",
                param=f"messages[{i}].role",
                code="invalid_value",
            )
        if content is None and role != "assistant":
            raise RequestError(
                400, f"Missing required parameter: 'messages[{i}].content'.", param=f"messages[{i}].content"
            )
        if content is not None and not isinstance(content, str) and not is_array(content):
            raise RequestError(
                400,
                f"Invalid type for 'messages[{i}].content': expected one of a string or array of objects.",
                param=f"messages[{i}].content",
            )
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise RequestError(
                400, f"Missing required parameter: 'messages[{i}].tool_call_id'.", param=f"messages[{i}].tool_call_id"
            )
        if role == "assistant" and message.get("tool_calls") is not None:
            _check_tool_calls(message["tool_calls"], f"messages[{i}].tool_calls")
    _check_pairing(checked)
    return checked


def tool_choice(choice: Any, tools: list[dict[str, Any]]) -> Any:
    """``tool_choice`` checked and put in the Responses shape the model plans with."""
    if choice is None:
        return "auto"
    if isinstance(choice, str) and choice in _CHOICES:
        return choice
    if is_object(choice) and choice.get("type") == "function":
        function: Any = choice.get("function")
        name = function.get("name") if is_object(function) else None
        if not isinstance(name, str):
            raise RequestError(
                400, "Missing required parameter: 'tool_choice.function.name'.", param="tool_choice.function.name"
            )
        if name not in {t["name"] for t in tools}:
            raise RequestError(
                400,
                f"Invalid value for 'tool_choice': function '{name}' is not among the functions in 'tools'.",
                param="tool_choice",
                code="invalid_value",
            )
        return {"type": "function", "name": name}
    raise RequestError(
        400,
        f"Invalid value: '{choice}'. Supported values are: 'none', 'auto', and 'required'.",
        param="tool_choice",
        code="invalid_value",
    )


def response_format(value: Any) -> tuple[str, dict[str, Any]]:
    """The reply's format (``text``, ``json_object`` or ``json_schema``) and its schema."""
    if value is None:
        return "text", {}
    kind = value.get("type") if is_object(value) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise RequestError(
            400,
            f"Invalid value: '{kind}'. Supported values are: 'text', 'json_object', and 'json_schema'.",
            param="response_format.type",
            code="invalid_value",
        )
    if kind != "json_schema":
        return kind, {}
    spec: Any = value.get("json_schema") if is_object(value) else None
    if not is_object(spec) or not isinstance(spec.get("name"), str):
        raise RequestError(
            400,
            "Missing required parameter: 'response_format.json_schema.name'.",
            param="response_format.json_schema.name",
        )
    schema: Any = spec.get("schema") if is_object(spec.get("schema")) else {"type": "object"}
    if spec.get("strict") is True and (problem := strict_problem(schema)):
        raise RequestError(
            400,
            f"Invalid schema for response_format '{spec['name']}': {problem}",
            param="response_format",
            code="invalid_json_schema",
        )
    return kind, schema
