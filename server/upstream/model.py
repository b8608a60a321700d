"""The neutral model interface: what the loop sends a model and what it gets back, whatever the wire.

A ``ModelRequest`` (instructions, the conversation's items, the offered functions, options) goes to a
``Model``; a ``ModelResponse`` (output items, status, usage, the model as reported) comes back. Each
wire format is an adapter implementing ``Model`` (``responses.ResponsesModel``, ``chat.ChatModel``),
and ``routing.AutoModel`` chooses between them per model. The loop and the bridge use only this
module: they never build or read a wire dict.

Items are stored in conversations, so they keep the ``type`` tags and fields of the Responses items the
first version stored (``message``, ``function_call``, ``function_call_output``, ``reasoning``): a
conversation saved by an older version loads unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from server.upstream.jsonvalues import is_array, is_object
from server.upstream.translation import FunctionSpec

T = TypeVar("T")

ApiStyle = Literal["responses", "chat"]
Effort = Literal["minimal", "low", "medium", "high"]


class Attachment(BaseModel):
    """An image or a document sent with a user message: its bytes (base64), or a URL passed by reference."""

    kind: Literal["image", "file"]
    mime: str
    name: str | None = None
    data: str | None = None
    url: str | None = None
    detail: Literal["auto", "low", "high"] = "auto"
    size: int = 0
    """Bytes of the content (0 for a URL, which this server never fetches)."""

    def reference(self) -> str:
        """The URL, or the content as a ``data:`` URI."""
        return self.url if self.url is not None else f"data:{self.mime};base64,{self.data or ''}"


class _HistoryItem(BaseModel):
    """An item of a conversation's history. Frozen (a change is a new item), so what an adapter makes of it
    for the wire is made once and kept with it: a conversation continued a hundred times replays its
    early items a hundred times."""

    model_config = ConfigDict(frozen=True)
    _wire: tuple[str, Any] | None = PrivateAttr(default=None)

    def wire_form(self, api: str, make: Callable[[Any], T]) -> T:
        """``make(self)``, made once per ``api`` (the last one asked), kept for the next request. What it
        returns is shared by every request that replays the item: never changed in place."""
        # Read from pydantic's private dict itself: ``self._wire`` goes through ``BaseModel.__getattr__``
        # (1.5 µs against 0.05, for each item of each replay).
        private = self.__pydantic_private__
        kept = private.get("_wire") if private is not None else None
        if kept is None or kept[0] != api:
            kept = (api, make(self))
            if private is not None:
                private["_wire"] = kept
        return kept[1]


class Message(_HistoryItem):
    """A user prompt or an assistant's text; a user message may carry images and documents."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant"]
    text: str = ""
    attachments: list[Attachment] = Field(default_factory=list[Attachment])

    @model_validator(mode="before")
    @classmethod
    def _from_stored_wire(cls, data: Any) -> Any:
        """Accept the Responses form older versions stored: ``content`` as a string or a list of parts."""
        if not is_object(data) or "text" in data or "content" not in data:
            return data
        content: object = data["content"]
        if isinstance(content, str):
            text = content
        else:
            parts = content if is_array(content) else []
            text = "".join(str(p.get("text", "")) for p in parts if is_object(p))
        return {"type": "message", "role": data.get("role", "user"), "text": text}


class FunctionCall(_HistoryItem):
    """A call the model asked for: the function's API name and its arguments as the model wrote them."""

    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    """The Responses item id, sent back in a replay where the wire has one."""


class FunctionOutput(_HistoryItem):
    """The output of one call, as the model will read it."""

    type: Literal["function_call_output"] = "function_call_output"
    call_id: str
    output: str


class Reasoning(_HistoryItem):
    """A reasoning item: opaque, replayed only by the adapter that received it (Responses, encrypted)."""

    type: Literal["reasoning"] = "reasoning"
    wire: dict[str, Any]

    @model_validator(mode="before")
    @classmethod
    def _from_stored_wire(cls, data: Any) -> Any:
        if is_object(data) and "wire" not in data:
            return {"type": "reasoning", "wire": data}
        return data


Item = Annotated[Message | FunctionCall | FunctionOutput | Reasoning, Field(discriminator="type")]


class TokenUsage(BaseModel):
    """Tokens one model turn used; zero where the gateway did not say."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True)
class ModelRequest:
    """One model turn: the whole conversation so far and what the model may do."""

    model: str
    items: Sequence[Item]
    instructions: str | None = None
    tools: Sequence[FunctionSpec] = ()
    tool_choice: str = "auto"
    """``auto``, ``none``, ``required`` or the API name of one offered function."""
    parallel_tool_calls: bool = True
    reasoning_effort: Effort | None = None
    response_format: dict[str, Any] | None = None
    """A JSON Schema the answer must follow."""
    max_output_tokens: int | None = None
    metadata: dict[str, str] | None = None
    web_search: bool = False
    api: ApiStyle | None = None
    """The API this conversation uses, once chosen; None lets the model choose (``AutoModel``)."""
    previous_response_id: str | None = None
    """The last response's id, for APIs that keep history server-side (Responses, when configured)."""
    new_from: int = 0
    """Index in ``items`` of the first item that response has not seen."""


@dataclass
class ModelResponse:
    """One model turn's outcome, in neutral form."""

    api: ApiStyle
    status: Literal["completed", "incomplete", "failed"] = "completed"
    output: list[Item] = field(default_factory=list[Item])
    id: str | None = None
    model: str | None = None
    """The model as the gateway reports it (gateways rename models)."""
    usage: TokenUsage | None = None
    error: str | None = None
    """Why a ``failed`` response failed, for the caller to read."""
    incomplete_reason: str | None = None
    notes: list[str] = field(default_factory=list[str])
    """What the adapter could not do as asked (e.g. an option this API lacks)."""

    @property
    def text(self) -> str:
        return "".join(i.text for i in self.output if isinstance(i, Message) and i.role == "assistant")

    @property
    def function_calls(self) -> list[FunctionCall]:
        return [i for i in self.output if isinstance(i, FunctionCall)]


@dataclass(frozen=True)
class StreamEvent:
    """Something the model is doing while its reply streams: writing text, or calling a function."""

    kind: Literal["text", "function_call"]
    name: str | None = None
    """The function's API name, for ``function_call``."""


OnEvent = Callable[[StreamEvent], Awaitable[None]]


class Model(Protocol):
    """A model behind the gateway, reached through one wire format (or a choice of them)."""

    async def respond(self, request: ModelRequest, on_event: OnEvent | None = None) -> ModelResponse:
        """One turn; failures raise ``server.errors.UpstreamError`` with the key masked."""
        ...


__all__ = [
    "ApiStyle",
    "Effort",
    "FunctionCall",
    "FunctionOutput",
    "Item",
    "Message",
    "Model",
    "ModelRequest",
    "ModelResponse",
    "OnEvent",
    "Reasoning",
    "StreamEvent",
    "TokenUsage",
]
