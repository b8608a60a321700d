"""Conversations kept in an embedded SQLite database, so they survive a restart.

Bounded in count and age: each save prunes the oldest beyond ``max_conversations`` and any
not touched for ``max_age_days``. WAL mode with ``synchronous=NORMAL`` keeps writes cheap.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from server.bridge.conversation import Conversation

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    updated_at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_updated ON conversations (updated_at);
"""


class ConversationStore:
    def __init__(self, path: Path | str, *, max_conversations: int = 1000, max_age_days: float = 30) -> None:
        self.path = path
        self.max_conversations = max_conversations
        self.max_age = max_age_days * 86400
        self._saves = 0
        self._conn: sqlite3.Connection | None = None

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection, opened on first use: a server that never runs a conversation never makes the file."""
        if self._conn is None:
            if str(self.path) != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=5)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    def get(self, conversation_id: str) -> Conversation | None:
        row = self._db.execute("SELECT data FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        return Conversation.model_validate_json(row[0]) if row else None

    def put(self, conversation: Conversation) -> None:
        conversation.updated_at = time.time()
        self._db.execute(
            "INSERT OR REPLACE INTO conversations (id, updated_at, data) VALUES (?, ?, ?)",
            (conversation.id, conversation.updated_at, conversation.model_dump_json()),
        )
        self._saves += 1
        if self._saves % 50 == 1:
            self.prune()

    def prune(self) -> None:
        self._db.execute("DELETE FROM conversations WHERE updated_at < ?", (time.time() - self.max_age,))
        self._db.execute(
            "DELETE FROM conversations WHERE id NOT IN (SELECT id FROM conversations ORDER BY updated_at DESC LIMIT ?)",
            (self.max_conversations,),
        )

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
