"""A conversation's state: everything needed to send its next request, resume it after a
restart, and report what happened. Plain data, serialised to JSON by the store."""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from server.upstream.model import ApiStyle, Effort, Item

Status = Literal["completed", "requires_action", "in_progress", "incomplete", "failed"]


class UsageTotals(BaseModel):
    """Tokens used by the conversation so far, summed over all its model turns, and what they cost."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float | None = Field(
        default=None,
        description="USD for all the conversation's turns, from the gateway's published prices or KEY4U_PRICES; "
        "null when any turn's price is unknown (cost_note says why).",
    )
    cost_note: str | None = None


class TurnUsage(BaseModel):
    """One model turn's tokens and cost, under the model name the gateway bills (the one requested)."""

    turn: int
    model: str
    api: ApiStyle | None = None
    at: float = Field(description="When the turn ended, in seconds since the epoch.")
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float | None = None
    cost_note: str | None = Field(default=None, description="Why cost_usd is null.")


class ResultUsage(UsageTotals):
    """A result's usage: the conversation's totals, and each model turn of this call's run."""

    turns: list[TurnUsage] = Field(default_factory=list[TurnUsage])


class ToolCallTrace(BaseModel):
    """One tool call the model made: its name and arguments, whether it succeeded, how long it took, and who ran it."""

    turn: int
    call_id: str
    name: str
    arguments: dict[str, Any] | str
    ok: bool
    ms: float
    started_ms: float = Field(description="Start time, in ms since the conversation's request began.")
    output: str = Field(default="", description="What the model was sent (shortened).")
    ran_by: Literal["bridge", "caller"] = "bridge"
    approval: str | None = Field(default=None, description="Who approved or denied the call, when it was asked.")


Decision = Literal["approved", "approved for this conversation", "denied", "no answer", "not asked"]


class Approval(BaseModel):
    """A person's decision on one call of an ``ask`` tool, as the transcript keeps it."""

    turn: int
    call_id: str
    tool: str
    decision: Decision
    by: str = Field(description="Who decided: the host whose user answered, or the rule that applied.")
    at: float = Field(default_factory=time.time)
    reason: str | None = None
    edited: list[str] = Field(default_factory=list[str], description="Arguments the person changed.")


class PendingCall(BaseModel):
    """A call to one of your functions that the model made: run it and send its result back in function_outputs."""

    call_id: str
    name: str
    arguments: dict[str, Any]


class FunctionDefinition(BaseModel):
    """A function you run."""

    model_config = ConfigDict(populate_by_name=True)
    name: str = Field(min_length=1, max_length=128)
    description: str = ""
    input_schema: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        validation_alias=AliasChoices("inputSchema", "input_schema", "parameters"),
        serialization_alias="inputSchema",
    )


class Options(BaseModel):
    """The settings a conversation runs under: model, instructions, offered tools and functions, and limits.

    Frozen: a change makes a new object (``model_copy(update=...)``), so what is made of one (its JSON
    in a stored head) can be kept while the conversation holds it.
    """

    model_config = ConfigDict(frozen=True)

    model: str
    instructions: str | None = None
    tools: list[str] | None = None
    functions: list[FunctionDefinition] = Field(default_factory=list[FunctionDefinition])
    reasoning_effort: Effort | None = None
    web_search: bool = False
    response_format: dict[str, Any] | None = None
    tool_choice: str = "auto"
    parallel_tool_calls: bool = True
    max_turns: int = 8
    max_output_tokens: int | None = None
    metadata: dict[str, str] | None = None


Labels = Literal["anonymous", "shuffled", "named"]


class Member(BaseModel):
    """One model of a group: its conversation, or why it has none (listed twice, say)."""

    model: str
    conversation_id: str | None = None
    error: str | None = None


class Group(BaseModel):
    """Several models asked the same thing at once, each in a conversation of its own that sees no other's.

    The group's own conversation holds the synthesis, when one is asked for: one more model, given the
    answers, writes where they agree and differ and what it recommends."""

    members: list[Member]
    synthesize: str | None = None
    labels: Labels = "anonymous"
    #: The prompts the group was asked, one per round (the first, then each follow-up).
    prompts: list[str] = Field(default_factory=list[str])
    #: The round whose synthesis was started (0: none yet); the group conversation's status says how it went.
    synthesized: int = 0
    #: How the latest synthesis named the answers it was given: label -> model.
    seen_as: dict[str, str] = Field(default_factory=dict[str, str])


class Conversation(BaseModel):
    """One conversation: its options, full replay history, status, answer and trace.

    Plain data: the bridge changes it and the store saves it as JSON; it never does I/O.
    """

    id: str = Field(default_factory=lambda: "conv_" + secrets.token_hex(12))
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    options: Options
    #: The whole history, in neutral form: prompts, the model's messages and calls, and call outputs.
    items: list[Item] = Field(default_factory=list[Item])
    #: Stopped by a cancelled call: a later call with only the id resumes it.
    interrupted: bool = False
    #: The model API this conversation uses, fixed at its first turn (None until then).
    api: ApiStyle | None = None
    #: Index in ``items`` from which items are new since the last stored response.
    unsent_from: int = 0
    previous_response_id: str | None = None
    status: Status = "in_progress"
    text: str = ""
    error: str | None = None
    model: str | None = None
    turns: int = 0
    usage: UsageTotals = Field(default_factory=UsageTotals)
    tool_calls: list[ToolCallTrace] = Field(default_factory=list[ToolCallTrace])
    #: Index in ``tool_calls`` of the first call of the latest run: a result reports the calls from there.
    run_from: int = 0
    #: The model turns of the latest run (at most its ``max_turns``): a result reports their usage, and the
    #: store adds them to its usage ledger.
    run_turns: list[TurnUsage] = Field(default_factory=list[TurnUsage])
    pending_calls: list[PendingCall] = Field(default_factory=list[PendingCall])
    parsed: Any = None
    notes: list[str] = Field(default_factory=list)
    #: Decisions on calls of ``ask`` tools, oldest first; and the tools approved for the rest of the conversation.
    approvals: list[Approval] = Field(default_factory=list[Approval])
    approved_tools: list[str] = Field(default_factory=list[str])
    #: Seconds the latest run took, from its start to its end (None while it runs).
    run_seconds: float | None = None
    #: Set on a group's conversation (``grp_`` ids): its members, and the synthesis this conversation holds.
    group: Group | None = None

    #: How much of this conversation its store holds (``server.store.parts.Saved``): the store's
    #: bookkeeping, so that a save writes only what was added since.
    _saved: object = PrivateAttr(default=None)
    #: ``options`` and its JSON, kept by the store for the next save of the head (``options`` is frozen).
    _options_json: tuple[Options, str] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _api_of_older_versions(self) -> Conversation:
        """A conversation stored before the API was recorded ran on Responses, the only one then."""
        if self.api is None and self.turns > 0:
            self.api = "responses"
        return self
