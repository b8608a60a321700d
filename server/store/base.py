"""The conversation store protocol: where conversations live, and who is running each one.

A running conversation is *claimed*: its owner (one server process) holds a lease that it renews
while it works. A claim is atomic, so of two replicas racing to continue one conversation exactly
one wins; a lease that is not renewed (its owner crashed) expires, and then anyone may claim it.
Implementations: ``SQLiteStore`` (the default, one machine) and ``MemoryStore`` (tests, and a
server with no disk). This module holds the protocol only.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from server.bridge.conversation import Conversation, Status, TurnUsage
from server.upstream.model import Message


@dataclass(frozen=True)
class Stored:
    """A conversation as stored, with its claim."""

    conversation: Conversation
    owner: str | None
    lease_until: float | None

    def held_by_other(self, owner: str, now: float) -> bool:
        """Whether another process holds a live claim on it."""
        return self.owner is not None and self.owner != owner and (self.lease_until or 0.0) > now


@dataclass(frozen=True)
class ConversationInfo:
    """A stored conversation in a listing: its id, status, when it was last saved, its first prompt
    (shortened, as a title) and its model."""

    id: str
    status: Status
    updated_at: float
    title: str = ""
    model: str | None = None

    @classmethod
    def of(cls, conv: Conversation, status: Status | None = None, title: str | None = None) -> ConversationInfo:
        title = title_of(conv) if title is None else title
        return cls(conv.id, status or conv.status, conv.updated_at, title, conv.model or conv.options.model)


def title_of(conv: Conversation) -> str:
    """The conversation's first prompt, on one line and shortened: its title in listings (a group's: the
    prompt its models were asked, not the synthesis request)."""
    prompt = next((i.text for i in conv.items if isinstance(i, Message) and i.role == "user"), "")
    if conv.group is not None:
        prompt = conv.group.prompts[0] if conv.group.prompts else ""
    title = " ".join(prompt[:400].split())
    return title if len(title) <= 80 else title[:79] + "…"


def row_status(column: str | None, conv: Conversation) -> Status:
    """A row's status column, or (rows saved before it existed) the status inside the data."""
    if column in ("completed", "requires_action", "in_progress", "incomplete", "failed"):
        return column  # type: ignore[return-value]
    return conv.status


#: How long the usage ledger keeps a turn: totals by day cover a year, whatever conversations are pruned.
USAGE_KEPT_DAYS = 400


@dataclass(frozen=True)
class UsageRow:
    """The model turns of one UTC day and one model (the name requested), summed from the usage ledger.

    ``cost_usd`` sums the priced turns (None when none was priced); ``unpriced_turns`` counts the others.
    """

    day: str
    model: str
    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float | None = None
    unpriced_turns: int = 0


def usage_rows(turns: Iterable[TurnUsage], since: float) -> list[UsageRow]:
    """``turns`` ended at or after ``since``, summed per day and model: newest day first, then by model."""
    sums: dict[tuple[str, str], list[float]] = {}
    priced: set[tuple[str, str]] = set()
    for t in turns:
        if t.at < since:
            continue
        key = (time.strftime("%Y-%m-%d", time.gmtime(t.at)), t.model)
        row = sums.setdefault(key, [0, 0, 0, 0, 0, 0.0, 0])
        row[0] += 1
        row[1] += t.input_tokens
        row[2] += t.output_tokens
        row[3] += t.cached_tokens
        row[4] += t.reasoning_tokens
        if t.cost_usd is None:
            row[6] += 1
        else:
            row[5] += t.cost_usd
            priced.add(key)
    ordered = sorted(sums.items(), key=lambda kv: (-_day_number(kv[0][0]), kv[0][1]))
    return [
        UsageRow(
            day,
            model,
            int(r[0]),
            int(r[1]),
            int(r[2]),
            int(r[3]),
            int(r[4]),
            r[5] if (day, model) in priced else None,
            int(r[6]),
        )  # fmt: skip
        for (day, model), r in ordered
    ]


def _day_number(day: str) -> int:
    return int(day.replace("-", ""))


class ConversationStore(Protocol):
    """Where conversations are saved and who runs each one: saves, atomic claims with leases, and listings.

    It keeps conversations as data only; it never runs or changes one beyond ``updated_at``. Its failures
    are ``server.errors.StoreError`` (naming the file and the fix), never a crash.
    """

    #: Set when the store had to do something the user must hear about (a corrupt file moved aside).
    notice: str | None

    async def get(self, conversation_id: str) -> Stored | None: ...

    async def put(self, conversation: Conversation, *, owner: str | None = None, release: bool = False) -> bool:
        """Save ``conversation`` (insert or replace its data); its claim is left as it is, or freed in the same
        write with ``release``. With ``owner``, only while ``owner`` holds the claim: a run whose claim
        another process took over (or released) must not overwrite that process's work; then nothing is
        written and the answer is False."""
        ...

    async def create(self, conversation: Conversation, owner: str, lease: float) -> None:
        """Save a new conversation, claimed by ``owner`` for ``lease`` seconds."""
        ...

    async def claim(self, conversation_id: str, owner: str, lease: float) -> Conversation | None:
        """Atomically claim an unclaimed (or expired, or own) conversation and return its latest state;
        None when another owner holds a live claim or it does not exist."""
        ...

    async def renew(self, conversation_id: str, owner: str, lease: float) -> bool:
        """Extend ``owner``'s claim; False when it is no longer theirs."""
        ...

    async def release(self, conversation_id: str, owner: str) -> None: ...

    async def list(self, limit: int = 50) -> list[ConversationInfo]:
        """The most recently updated conversations, newest first."""
        ...

    async def count(self) -> int: ...

    async def usage(self, since: float) -> list[UsageRow]:
        """The usage ledger from ``since`` (seconds since the epoch), summed per UTC day and model.

        Every save adds the model turns of the conversation's latest run (``run_turns``) to the ledger,
        once each; the ledger outlives the conversations (``USAGE_KEPT_DAYS``)."""
        ...

    async def aclose(self) -> None: ...
