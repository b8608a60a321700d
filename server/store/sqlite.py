"""Conversations in an embedded SQLite database, so they survive a restart and can be shared by
processes on one machine.

Every query runs on a worker thread (one at a time), never on the event loop. A claim is one
``UPDATE ... WHERE`` statement, which SQLite applies atomically across processes. Bounded in
count and age: saves prune the oldest beyond ``max_conversations`` and any not touched for
``max_age_days``. WAL mode with ``synchronous=NORMAL`` keeps writes cheap. Not for network
filesystems.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

from server.bridge.conversation import Conversation, Status
from server.store.base import ConversationInfo, Stored

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    updated_at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_updated ON conversations (updated_at);
"""
#: Columns added since the first release; added to older files on open.
_CLAIM_COLUMNS = {"owner": "TEXT", "lease_until": "REAL", "status": "TEXT"}
_PRUNE_EVERY = 50


class SQLiteStore:
    """A ``ConversationStore`` in one SQLite file, shared by the processes of one machine.

    Opens the file on first use and runs every query on a worker thread, one at a time.
    """

    def __init__(self, path: Path | str, *, max_conversations: int = 1000, max_age_days: float = 30) -> None:
        self.path = path
        self.max_conversations = max_conversations
        self.max_age = max_age_days * 86400
        self._saves = 0
        self._conn: sqlite3.Connection | None = None
        self._limiter = anyio.CapacityLimiter(1)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await anyio.to_thread.run_sync(lambda: work(self._db()), limiter=self._limiter)

    def _db(self) -> sqlite3.Connection:
        """The connection, opened on first use: a server that never runs a conversation never makes the file."""
        if self._conn is None:
            if str(self.path) != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=5)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            have = {row[1] for row in conn.execute("PRAGMA table_info(conversations)")}
            for column, kind in _CLAIM_COLUMNS.items():
                if column not in have:
                    try:
                        conn.execute(f"ALTER TABLE conversations ADD COLUMN {column} {kind}")
                    except sqlite3.OperationalError:  # another process added it first
                        logger.debug("column %s already added", column)
            self._conn = conn
        return self._conn

    async def get(self, conversation_id: str) -> Stored | None:
        def read(db: sqlite3.Connection) -> tuple[str, str | None, float | None] | None:
            return db.execute(
                "SELECT data, owner, lease_until FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()

        row = await self._run(read)
        return Stored(Conversation.model_validate_json(row[0]), row[1], row[2]) if row else None

    async def put(self, conversation: Conversation) -> None:
        conversation.updated_at = time.time()
        values = (conversation.id, conversation.updated_at, conversation.model_dump_json(), conversation.status)

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO conversations (id, updated_at, data, status) VALUES (?, ?, ?, ?) ON CONFLICT(id) "
                "DO UPDATE SET updated_at = excluded.updated_at, data = excluded.data, status = excluded.status",
                values,
            )
            self._saves += 1
            if self._saves % _PRUNE_EVERY == 1:
                self._prune(db)

        await self._run(write)

    async def create(self, conversation: Conversation, owner: str, lease: float) -> None:
        # One statement: no other process ever sees it saved as running without its claim.
        conversation.updated_at = time.time()
        values = (
            conversation.id,
            conversation.updated_at,
            conversation.model_dump_json(),
            conversation.status,
            owner,
            conversation.updated_at + lease,
        )

        def insert(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO conversations (id, updated_at, data, status, owner, lease_until) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                values,
            )

        await self._run(insert)

    async def claim(self, conversation_id: str, owner: str, lease: float) -> Conversation | None:
        def take(db: sqlite3.Connection) -> str | None:
            now = time.time()
            won = db.execute(
                "UPDATE conversations SET owner = ?, lease_until = ? WHERE id = ? "
                "AND (owner IS NULL OR owner = ? OR lease_until IS NULL OR lease_until <= ?)",
                (owner, now + lease, conversation_id, owner, now),
            ).rowcount
            if won != 1:
                return None
            # Ours now: nobody else writes it until the lease ends.
            row = db.execute("SELECT data FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
            return row[0] if row else None

        data = await self._run(take)
        return Conversation.model_validate_json(data) if data is not None else None

    async def renew(self, conversation_id: str, owner: str, lease: float) -> bool:
        def extend(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE conversations SET lease_until = ? WHERE id = ? AND owner = ?",
                (time.time() + lease, conversation_id, owner),
            )
            return cursor.rowcount == 1

        return await self._run(extend)

    async def release(self, conversation_id: str, owner: str) -> None:
        def free(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE conversations SET owner = NULL, lease_until = NULL WHERE id = ? AND owner = ?",
                (conversation_id, owner),
            )

        await self._run(free)

    async def list(self, limit: int = 50) -> list[ConversationInfo]:
        def read(db: sqlite3.Connection) -> list[tuple[str, str | None, float, str]]:
            return db.execute(
                "SELECT id, status, updated_at, data FROM conversations ORDER BY updated_at DESC LIMIT ?", (limit,)
            ).fetchall()

        rows = await self._run(read)
        return [ConversationInfo(i, _status(s, d), u) for i, s, u, d in rows]

    def _prune(self, db: sqlite3.Connection) -> None:
        db.execute(
            "DELETE FROM conversations WHERE updated_at < ? AND (lease_until IS NULL OR lease_until < ?)",
            (time.time() - self.max_age, time.time()),
        )
        db.execute(
            "DELETE FROM conversations WHERE id NOT IN (SELECT id FROM conversations ORDER BY updated_at DESC LIMIT ?)",
            (self.max_conversations,),
        )

    async def prune(self) -> None:
        await self._run(self._prune)

    async def count(self) -> int:
        return await self._run(lambda db: int(db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0]))

    async def aclose(self) -> None:
        def close(_: sqlite3.Connection) -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        if self._conn is not None:
            await self._run(close)


def _status(column: str | None, data: str) -> Status:
    """The status column, or (rows saved before it existed) the status inside the data."""
    if column in ("completed", "requires_action", "in_progress", "incomplete", "failed"):
        return column  # type: ignore[return-value]
    return Conversation.model_validate_json(data).status
