"""Approving a call before it runs: what the person is shown, the form they fill in, and reading their answer.

A tool in ``ask`` mode runs only once a person approves the call in the host's own UI, through MCP
elicitation (form mode). The loop hands each such call to an ``Approver`` (the surface's, tied to the
MCP request that is waiting for the conversation) one after another, and gets a ``Verdict`` back:
``not asked`` when nobody can be asked (the host declared no elicitation, or no caller is waiting right
now). Then the call comes back to the caller as a pending call, exactly as in ``return`` mode: a call
of an ``ask`` tool never runs without a person's approval or the caller's output.

The form offers approve / deny / approve for this conversation, a reason, and the call's simple
arguments (top-level strings, numbers, integers and booleans, as the tool's schema types them), each
prefilled with the model's value, so the person may correct one before approving. Nothing here does I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from server.bridge.conversation import Decision
from server.upstream.jsonvalues import is_array

APPROVE = "approve"
DENY = "deny"
APPROVE_ALL = "approve for this conversation"
#: Longest value shown of an argument in the message, and longest string offered for editing.
SHOWN_CHARS = 300
EDITABLE_CHARS = 2_000
_SIMPLE = {"string", "number", "integer", "boolean"}
#: Form fields of our own; a tool argument of the same name is not offered for editing.
_OURS = {"decision", "reason"}


@dataclass(frozen=True)
class ApprovalRequest:
    """One call to approve: the tool (its MCP name), the server it belongs to, and the model's arguments."""

    tool: str
    arguments: dict[str, Any]
    schema: Mapping[str, Any]
    model: str
    conversation_id: str
    turn: int

    @property
    def server(self) -> str | None:
        """The downstream server of a ``<server>__<tool>`` name, or None for a local tool."""
        server, sep, _ = self.tool.partition("__")
        return server if sep else None


@dataclass(frozen=True)
class Verdict:
    """What the person decided; ``arguments`` are the ones to run with (edited or as the model wrote them)."""

    decision: Decision
    by: str
    reason: str | None = None
    arguments: dict[str, Any] | None = None
    edited: list[str] = field(default_factory=list[str])

    @property
    def approved(self) -> bool:
        return self.decision in ("approved", "approved for this conversation")


class Approver(Protocol):
    async def ask(self, request: ApprovalRequest) -> Verdict:
        """The person's verdict on ``request``; ``not asked`` (saying why in ``by``) when nobody can be asked."""
        ...


NOBODY = Verdict("not asked", "no caller was waiting for the conversation to ask its host")


def editable(request: ApprovalRequest) -> dict[str, dict[str, Any]]:
    """The arguments offered for editing, as form fields: simple top-level properties with a simple value."""
    properties: object = request.schema.get("properties")
    if not isinstance(properties, Mapping):
        return {}
    fields: dict[str, dict[str, Any]] = {}
    for name, prop in properties.items():  # pyright: ignore[reportUnknownVariableType]
        if not isinstance(name, str) or name in _OURS or not isinstance(prop, Mapping):
            continue
        kind = _simple_type(prop)  # pyright: ignore[reportUnknownArgumentType]
        value = request.arguments.get(name)
        if kind is None or not _fits(kind, value):
            continue
        spec: dict[str, Any] = {"type": kind, "title": name}
        description = prop.get("description")  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
        if isinstance(description, str) and description:
            spec["description"] = description[:200]
        if value is not None:
            spec["default"] = value
        fields[name] = spec
    return fields


def _simple_type(prop: Mapping[str, Any]) -> str | None:
    kind: object = prop.get("type")
    if is_array(kind):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if not isinstance(kind, str) or kind not in _SIMPLE or "enum" in prop:
        return None
    return kind


def _fits(kind: str, value: Any) -> bool:
    if value is None:
        return True
    if kind == "string":
        return isinstance(value, str) and len(value) <= EDITABLE_CHARS
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def form_schema(request: ApprovalRequest) -> dict[str, Any]:
    """The form: the decision, a reason, and the editable arguments."""
    properties: dict[str, Any] = {
        "decision": {
            "type": "string",
            "title": "Decision",
            "enum": [APPROVE, DENY, APPROVE_ALL],
            "description": f"'{APPROVE_ALL}' also approves later calls of {request.tool} in this conversation",
        },
        "reason": {"type": "string", "title": "Reason", "description": "Optional: told to the model if you deny"},
    }
    properties.update(editable(request))
    return {"type": "object", "properties": properties, "required": ["decision"]}


def form_message(request: ApprovalRequest) -> str:
    """What the person reads: which model wants which tool of which server, with its arguments shown readably."""
    where = f" of the MCP server {request.server!r}" if request.server else " (this server's own tool)"
    lines = [f"{request.model} (through key4u_respond) wants to call {request.tool}{where} with:"]
    if not request.arguments:
        lines.append("  (no arguments)")
    for name, value in request.arguments.items():
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if len(shown) > SHOWN_CHARS:
            shown = f"{shown[:SHOWN_CHARS]}… ({len(shown)} characters)"
        lines.append(f"  {name}: {shown}")
    lines.append("Approve it, deny it, or approve this tool for the rest of the conversation.")
    return "\n".join(lines)


def read_answer(request: ApprovalRequest, action: str, content: Mapping[str, Any] | None, by: str) -> Verdict:
    """The verdict in the host's answer: ``accept`` with a decision (and maybe edited arguments), or a
    ``decline``/``cancel`` of the form, which deny."""
    if action != "accept" or content is None:
        verb = "declined" if action == "decline" else "dismissed"
        return Verdict("denied", by, reason=f"the user {verb} the approval form")
    reason = content.get("reason")
    reason = reason.strip()[:500] if isinstance(reason, str) and reason.strip() else None
    decision = content.get("decision")
    if decision not in (APPROVE, APPROVE_ALL):
        return Verdict("denied", by, reason=reason)
    arguments = dict(request.arguments)
    edited: list[str] = []
    for name in editable(request):
        if name in content and content[name] != request.arguments.get(name):
            arguments[name] = content[name]
            edited.append(name)
    kind: Decision = "approved" if decision == APPROVE else "approved for this conversation"
    return Verdict(kind, by, reason=reason, arguments=arguments, edited=edited)


__all__ = [
    "NOBODY",
    "ApprovalRequest",
    "Approver",
    "Verdict",
    "editable",
    "form_message",
    "form_schema",
    "read_answer",
]
