"""A ``ConversationStore`` in this process's memory: for tests, and for a server with no disk.

Conversations are kept as JSON, as a database would, so that a stored conversation is never the
same object as the one a job is changing. Bounded by ``max_conversations``.
"""

from __future__ import annotations

import time

from server.bridge.conversation import Conversation
from server.store.base import ConversationInfo, Stored


class MemoryStore:
    """A ``ConversationStore`` in a dict, as JSON, for this process alone: nothing survives a restart.

    Beyond ``max_conversations`` the least recently saved are dropped; nothing expires by age.
    """

    def __init__(self, *, max_conversations: int = 1000) -> None:
        self.max_conversations = max_conversations
        self.notice: str | None = None
        self._rows: dict[str, tuple[str, str | None, float | None]] = {}

    async def get(self, conversation_id: str) -> Stored | None:
        row = self._rows.get(conversation_id)
        if row is None:
            return None
        return Stored(Conversation.model_validate_json(row[0]), row[1], row[2])

    async def put(self, conversation: Conversation) -> None:
        conversation.updated_at = time.time()
        _, owner, lease_until = self._rows.pop(conversation.id, ("", None, None))
        self._rows[conversation.id] = (conversation.model_dump_json(), owner, lease_until)
        while len(self._rows) > self.max_conversations:
            del self._rows[next(iter(self._rows))]

    async def create(self, conversation: Conversation, owner: str, lease: float) -> None:
        await self.put(conversation)
        self._rows[conversation.id] = (self._rows[conversation.id][0], owner, time.time() + lease)

    async def claim(self, conversation_id: str, owner: str, lease: float) -> Conversation | None:
        stored = await self.get(conversation_id)
        if stored is None or stored.held_by_other(owner, time.time()):
            return None
        self._rows[conversation_id] = (self._rows[conversation_id][0], owner, time.time() + lease)
        return stored.conversation

    async def renew(self, conversation_id: str, owner: str, lease: float) -> bool:
        row = self._rows.get(conversation_id)
        if row is None or row[1] != owner:
            return False
        self._rows[conversation_id] = (row[0], owner, time.time() + lease)
        return True

    async def release(self, conversation_id: str, owner: str) -> None:
        row = self._rows.get(conversation_id)
        if row is not None and row[1] == owner:
            self._rows[conversation_id] = (row[0], None, None)

    async def list(self, limit: int = 50) -> list[ConversationInfo]:
        convs = [Conversation.model_validate_json(row[0]) for row in self._rows.values()]
        convs.sort(key=lambda c: c.updated_at, reverse=True)
        return [ConversationInfo.of(c) for c in convs[:limit]]

    async def count(self) -> int:
        return len(self._rows)

    async def aclose(self) -> None:
        return None
