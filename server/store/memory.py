"""A ``ConversationStore`` in this process's memory: for tests, and for a server with no disk.

Conversations are kept as JSON, as a database would, so that a stored conversation is never the
same object as the one a job is changing. Bounded by ``max_conversations``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from server.bridge.conversation import Conversation, TurnUsage
from server.store.base import USAGE_KEPT_DAYS, ConversationInfo, Stored, UsageRow, usage_rows
from server.store.parts import Saved, joined, mark_saved, plan_save


@dataclass
class _Row:
    head: str
    items: list[str]
    traces: list[str]
    saved: Saved
    owner: str | None = None
    lease_until: float | None = None


class MemoryStore:
    """A ``ConversationStore`` in a dict, as JSON, for this process alone: nothing survives a restart.

    Kept as a head and parts, as ``SQLiteStore`` keeps them, so that a save appends what the history
    gained. Beyond ``max_conversations`` the least recently saved are dropped; nothing expires by age.
    """

    def __init__(self, *, max_conversations: int = 1000) -> None:
        self.max_conversations = max_conversations
        self.notice: str | None = None
        self._rows: dict[str, _Row] = {}
        self._ledger: dict[tuple[str, int], TurnUsage] = {}

    def _conversation(self, row: _Row) -> Conversation:
        conv = Conversation.model_validate_json(joined(row.head, row.items, row.traces))
        mark_saved(conv, row.saved)
        return conv

    async def get(self, conversation_id: str) -> Stored | None:
        row = self._rows.get(conversation_id)
        if row is None:
            return None
        return Stored(self._conversation(row), row.owner, row.lease_until)

    async def put(self, conversation: Conversation, *, owner: str | None = None, release: bool = False) -> bool:
        existing = self._rows.get(conversation.id)
        if owner is not None and existing is not None and existing.owner != owner:
            return False
        conversation.updated_at = time.time()
        row = self._rows.pop(conversation.id, None)
        plan = plan_save(conversation, row.saved if row is not None else None)
        if row is None or plan.rewrite:
            owner, lease_until = (row.owner, row.lease_until) if row is not None else (None, None)
            row = _Row(plan.head, plan.items, plan.traces, plan.after, owner, lease_until)
        else:
            row.head, row.saved = plan.head, plan.after
            row.items.extend(plan.items)
            row.traces.extend(plan.traces)
        self._rows[conversation.id] = row
        mark_saved(conversation, plan.after)
        for turn in conversation.run_turns:
            self._ledger.setdefault((conversation.id, turn.turn), turn.model_copy())
        kept_from = time.time() - USAGE_KEPT_DAYS * 86400
        while self._ledger and next(iter(self._ledger.values())).at < kept_from:
            del self._ledger[next(iter(self._ledger))]
        if release:
            row.owner, row.lease_until = None, None
        while len(self._rows) > self.max_conversations:
            del self._rows[next(iter(self._rows))]
        return True

    async def create(self, conversation: Conversation, owner: str, lease: float) -> None:
        await self.put(conversation)
        row = self._rows[conversation.id]
        row.owner, row.lease_until = owner, time.time() + lease

    async def claim(self, conversation_id: str, owner: str, lease: float) -> Conversation | None:
        stored = await self.get(conversation_id)
        if stored is None or stored.held_by_other(owner, time.time()):
            return None
        row = self._rows[conversation_id]
        row.owner, row.lease_until = owner, time.time() + lease
        return stored.conversation

    async def renew(self, conversation_id: str, owner: str, lease: float) -> bool:
        row = self._rows.get(conversation_id)
        if row is None or row.owner != owner:
            return False
        row.lease_until = time.time() + lease
        return True

    async def release(self, conversation_id: str, owner: str) -> None:
        row = self._rows.get(conversation_id)
        if row is not None and row.owner == owner:
            row.owner, row.lease_until = None, None

    async def list(self, limit: int = 50) -> list[ConversationInfo]:
        convs = [self._conversation(row) for row in self._rows.values()]
        convs.sort(key=lambda c: c.updated_at, reverse=True)
        return [ConversationInfo.of(c) for c in convs[:limit]]

    async def count(self) -> int:
        return len(self._rows)

    async def usage(self, since: float) -> list[UsageRow]:
        return usage_rows(self._ledger.values(), since)

    async def aclose(self) -> None:
        return None
