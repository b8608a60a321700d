"""Continuing a stored conversation: what a follow-up call adds to it, checked before anything runs.

Owns the rules for a conversation's next step (a new prompt, the outputs of pending calls, changed
options) and how a conversation left behind by a stopped process is reported. It never touches the
store, the model or the tools: the bridge claims and saves, the loop runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from mcp.server.mcpserver.exceptions import ToolError

from server.bridge.conversation import Conversation, ToolCallTrace
from server.bridge.request import FunctionOutput as CallerOutput
from server.bridge.request import RespondRequest
from server.upstream.model import Attachment, FunctionCall, FunctionOutput, Message


def settled(conv: Conversation) -> Conversation:
    """A stored conversation nobody runs: one saved as running was left by a process that stopped."""
    if conv.status == "in_progress":
        conv.status, conv.interrupted = "incomplete", True
        conv.notes = [*conv.notes, "the process running this conversation stopped before it finished"]
    return conv


def resume(conv: Conversation) -> None:
    """Ready an interrupted conversation to run again: calls left without an output get one (the API
    refuses a history with unanswered calls), and the notes of the interruption go."""
    answered = {i.call_id for i in conv.items if isinstance(i, FunctionOutput)}
    for item in list(conv.items):
        if isinstance(item, FunctionCall) and item.call_id not in answered:
            conv.items.append(FunctionOutput(call_id=item.call_id, output="Error: not run: the call was interrupted"))
    conv.interrupted, conv.notes, conv.error = False, [], None


def running_elsewhere(conv: Conversation, request: RespondRequest) -> Conversation:
    """A conversation another server process runs: refuse to add to it, or report where it stands."""
    note = (
        f"this conversation is running in another server process (last saved "
        f"{time.time() - conv.updated_at:.0f} s ago); call again with only its conversation_id"
    )
    if request.wants_more:
        raise ToolError(note)
    conv.status = "in_progress"
    conv.notes = [*conv.notes, note]
    return conv


def still_running(conv: Conversation, deadline: float) -> Conversation:
    """What a caller sees of a conversation still running at its deadline: a copy, with how to wait."""
    snapshot = conv.model_copy(update={"status": "in_progress"})
    snapshot.notes = [
        *conv.notes,
        f"still working after {deadline:g} s; call key4u_respond "
        f"with conversation_id={conv.id!r} (and nothing else) to wait for the result",
    ]
    return snapshot


def add_request(conv: Conversation, request: RespondRequest, attachments: Sequence[Attachment] = ()) -> None:
    """Add what a follow-up call brings (options, function outputs, a prompt) to a claimed conversation.

    It starts a new run: the result of this call reports the tool calls from here on."""
    conv.run_from, conv.run_turns = len(conv.tool_calls), []
    if request.api not in (None, "auto") and conv.api not in (None, request.api):
        raise ToolError(
            f"conversation {conv.id} uses the {conv.api} API; start a new conversation to use {request.api}"
        )
    if conv.api is None and request.api in ("responses", "chat"):
        conv.api = request.api
    conv.options = conv.options.model_copy(update=request.option_updates())
    if conv.status == "requires_action":
        _add_function_outputs(conv, request.function_outputs or [])
    elif request.function_outputs:
        raise ToolError(f"conversation {conv.id} is not waiting for function outputs (status {conv.status})")
    if conv.interrupted:
        resume(conv)
    if request.prompt:  # RespondRequest made it writable
        conv.items.append(Message(role="user", text=request.prompt, attachments=list(attachments)))
    conv.notes, conv.error = [], None
    conv.options = conv.options.model_copy(update={"max_turns": conv.turns + conv.options.max_turns})


def _add_function_outputs(conv: Conversation, outputs: list[CallerOutput]) -> None:
    pending = {p.call_id: p for p in conv.pending_calls}
    given = {o.call_id: o for o in outputs}
    unknown = sorted(set(given) - set(pending))
    if unknown:
        raise ToolError(f"no pending call has call_id {', '.join(unknown)}; pending: {', '.join(pending)}")
    missing = sorted(set(pending) - set(given))
    if missing:
        raise ToolError(f"function_outputs must answer every pending call; missing call_id {', '.join(missing)}")
    for call_id, call in pending.items():
        value = given[call_id].output
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        conv.items.append(FunctionOutput(call_id=call_id, output=text))
        conv.tool_calls.append(
            ToolCallTrace(
                turn=conv.turns,
                call_id=call_id,
                name=call.name,
                arguments=call.arguments,
                ok=True,
                ms=0.0,
                started_ms=0.0,
                output=text[:500],
                ran_by="caller",
            )
        )
    conv.pending_calls = []
