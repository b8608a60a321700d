"""``key4u_respond``'s request and result: validated once at the MCP boundary, typed all the way down.

The fields of ``RespondRequest`` are the tool's parameters (the MCP surface derives the tool's
signature from them), so the schema a host sees and the validation the bridge relies on are one
object. This module holds data only: no I/O, no MCP wiring.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from server.bridge.conversation import (
    Conversation,
    Effort,
    FunctionDefinition,
    Labels,
    PendingCall,
    ResultUsage,
    Status,
    ToolCallTrace,
)
from server.logs import mask
from server.upstream.jsonvalues import scrub_json
from server.upstream.model import ApiStyle


class FunctionOutput(BaseModel):
    """A pending call's result."""

    call_id: str = Field(min_length=1)
    output: Any


class RespondRequest(BaseModel):
    """One ``key4u_respond`` call: start a conversation, continue one, or wait for one."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _writable(cls, data: Any, info: ValidationInfo) -> Any:
        """Lone surrogates (valid JSON escapes, unwritable as UTF-8) replaced in every string the host sent,
        unless the caller has just found there are none (``context={"writable": True}``)."""
        if info.context and info.context.get("writable"):
            return data
        return scrub_json(data)

    prompt: str | None = Field(default=None, description="Required for a new conversation.")
    instructions: str | None = Field(default=None, description=None)
    model: str | None = Field(default=None, description=None)
    models: list[str] | None = Field(
        default=None, min_length=2, max_length=8, description="Ask 2-8 models at once, each on its own."
    )
    synthesize: str | None = Field(default=None, description="A model that then compares their answers.")
    synthesis_labels: Labels = Field(default="anonymous", description=None)
    images: list[str] | None = Field(default=None, description="Image paths, https URLs or data: URIs.")
    files: list[str] | None = Field(default=None, description="PDF or text paths, https URLs or data: URIs.")
    tools: list[str] | None = Field(
        default=None,
        description="This server's tools to offer (default all).",
    )
    functions: list[FunctionDefinition] | None = Field(
        default=None,
        description="Your tools; their calls come back as pending_calls.",
    )
    function_outputs: list[FunctionOutput] | None = Field(
        default=None,
        description="Results of pending_calls.",
    )
    conversation_id: str | None = Field(default=None, description="Continue, resume or wait for one.")
    reasoning_effort: Effort | None = Field(default=None, description=None)
    web_search: bool = Field(default=False, description="Responses API only.")
    response_format: dict[str, Any] | None = Field(
        default=None,
        description="JSON Schema for the answer (returned in parsed).",
    )
    tool_choice: str = Field(default="auto", description="auto, none, required or a name.")
    parallel_tool_calls: bool = True
    max_turns: int = Field(default=8, ge=1, le=64, description=None)
    max_output_tokens: int | None = Field(default=None, ge=16, description=None)
    metadata: dict[str, str] | None = Field(
        default=None,
        max_length=16,
        description=None,
    )
    offset: int | None = Field(default=None, ge=0, description="The answer from this character.")
    api: Literal["auto", "responses", "chat"] | None = Field(
        default=None,
        description=None,
    )

    @property
    def attaches(self) -> bool:
        return bool(self.images or self.files)

    @property
    def wants_more(self) -> bool:
        """Whether this call adds to the conversation (rather than only waiting for it)."""
        return bool(self.prompt or self.function_outputs)

    def option_updates(self) -> dict[str, Any]:
        """The options this call sets, for a conversation being started or continued.

        Unset (None) fields are left out: a continued conversation keeps those options.
        """
        given = self.model_dump(include=_OPTION_FIELDS, exclude_none=True)
        if self.functions is not None:  # kept as models: ``model_copy(update=...)`` does not validate
            given["functions"] = self.functions
        if not self.web_search:
            given.pop("web_search", None)
        return given


_OPTION_FIELDS = {
    "model",
    "instructions",
    "tools",
    "reasoning_effort",
    "web_search",
    "response_format",
    "tool_choice",
    "parallel_tool_calls",
    "max_turns",
    "max_output_tokens",
    "metadata",
}


class RespondResult(BaseModel):
    """What ``key4u_respond`` returns: the answer, where the conversation stands, and its trace."""

    text: str = Field(description="The model's final answer (possibly shortened; see the transcript resource).")
    status: Status
    conversation_id: str
    next: str | None = Field(default=None, description="What to do next, when there is something to do.")
    model: str | None = Field(description="The model as the gateway reports it (gateways rename models).")
    api: ApiStyle | None = Field(
        default=None, description="The model API used: responses (/v1/responses) or chat (/v1/chat/completions)."
    )
    turns: int
    tool_calls: list[ToolCallTrace]
    pending_calls: list[PendingCall]
    parsed: Any = Field(default=None, description="The parsed JSON answer, when response_format was given.")
    usage: ResultUsage
    error: str | None = None
    notes: list[str] = Field(default_factory=list)
    transcript: str = Field(description="URI of the full transcript resource.")
    seconds: float | None = Field(default=None, description="How long the latest run took.")
    answers: list[ModelAnswer] | None = Field(
        default=None, description="With models: each model's own result, in the order listed."
    )

    @classmethod
    def of(cls, conv: Conversation, secrets: Sequence[str]) -> RespondResult:
        """Where ``conv`` stands, with every secret masked in the text the model wrote."""
        return cls(
            text=mask(conv.text, secrets),
            status=conv.status,
            conversation_id=conv.id,
            model=conv.model,
            api=conv.api,
            turns=conv.turns,
            tool_calls=conv.tool_calls[conv.run_from :],
            pending_calls=conv.pending_calls,
            parsed=conv.parsed,
            usage=ResultUsage(**dict(conv.usage), turns=conv.run_turns),
            error=mask(conv.error, secrets) if conv.error else None,
            notes=conv.notes,
            transcript=f"key4u://conversations/{conv.id}",
            next=_NEXT.get(conv.status, "").format(id=conv.id) or None,
            seconds=conv.run_seconds,
        )


class ModelAnswer(RespondResult):
    """One model's result in a group: its own conversation, under the model name as it was asked for."""

    asked: str = Field(description="The model as listed in models.")

    @classmethod
    def of_member(cls, result: RespondResult, asked: str) -> ModelAnswer:
        return cls(**dict(result), asked=asked)


_NEXT = {
    "requires_action": "run the pending_calls, then call key4u_respond with conversation_id={id!r} and "
    "function_outputs (one per call_id)",
    "in_progress": "call key4u_respond with only conversation_id={id!r} to wait for the result",
    "incomplete": "call key4u_respond with conversation_id={id!r} and a prompt to go on",
    "failed": "see error; after fixing it, call key4u_respond with conversation_id={id!r} and a prompt to retry",
}


RespondResult.model_rebuild()

__all__ = ["FunctionDefinition", "FunctionOutput", "ModelAnswer", "RespondRequest", "RespondResult"]
