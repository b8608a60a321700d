"""The conversation store protocol: where conversations live, and who is running each one.

A running conversation is *claimed*: its owner (one server process) holds a lease that it renews
while it works. A claim is atomic, so of two replicas racing to continue one conversation exactly
one wins; a lease that is not renewed (its owner crashed) expires, and then anyone may claim it.
Implementations: ``SQLiteStore`` (the default, one machine) and ``MemoryStore`` (tests, and a
server with no disk). This module holds the protocol only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from server.bridge.conversation import Conversation, Status
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
    """The conversation's first prompt, on one line and shortened: its title in listings."""
    prompt = next((i.text for i in conv.items if isinstance(i, Message) and i.role == "user"), "")
    title = " ".join(prompt[:400].split())
    return title if len(title) <= 80 else title[:79] + "…"


class ConversationStore(Protocol):
    """Where conversations are saved and who runs each one: saves, atomic claims with leases, and listings.

    It keeps conversations as data only; it never runs or changes one beyond ``updated_at``. Its failures
    are ``server.errors.StoreError`` (naming the file and the fix), never a crash.
    """

    #: Set when the store had to do something the user must hear about (a corrupt file moved aside).
    notice: str | None

    async def get(self, conversation_id: str) -> Stored | None: ...

    async def put(self, conversation: Conversation) -> None:
        """Save ``conversation`` (insert or replace its data); its claim is left as it is."""
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

    async def aclose(self) -> None: ...
