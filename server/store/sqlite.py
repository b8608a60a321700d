"""Conversations in an embedded SQLite database, so they survive a restart and can be shared by
processes on one machine.

Every query runs on a worker thread (one at a time), never on the event loop. A claim is one short
write transaction (``BEGIN IMMEDIATE``, one ``UPDATE ... WHERE``, the read of what it won), which
SQLite applies atomically across processes. Bounded in count and age: saves prune the oldest beyond
``max_conversations`` and any not touched for ``max_age_days``. WAL mode with ``synchronous=NORMAL``
keeps writes cheap. Not for network filesystems.

Faults are reported, never fatal. Every failure of the database (a file or directory it may not
write, a full disk, a lock another process holds past ``timeout``) is raised as ``StoreError``,
which names the file, the cause and the fix; the connection is then dropped, so the next call opens
the file again and works once the cause is gone. A file that is not a database, or whose pages are
malformed, is moved aside to ``<name>.corrupt-<unix time>`` (with its ``-wal`` and ``-shm``), a new
database is started in its place, and ``notice`` says so. A single row that no longer reads as a
``Conversation`` is ignored: ``get`` and ``claim`` find nothing and ``list`` skips it; other rows
are untouched.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread
from pydantic import ValidationError

from server.bridge.conversation import Conversation, Status
from server.errors import StoreError
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
#: The files SQLite keeps beside the database; they move aside with it.
_SIDE_FILES = ("-wal", "-shm", "-journal")
#: SQLite's primary result codes for a lock held elsewhere and for a damaged file.
_BUSY_CODES = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_LOCKED_HINT = "another process is using the database: try again, or set KEY4U_DB_PATH to another file"


class SQLiteStore:
    """A ``ConversationStore`` in one SQLite file, shared by the processes of one machine.

    Opens the file on first use and runs every query on a worker thread, one at a time. Waits up to
    ``timeout`` seconds for a lock another process holds. Raises ``StoreError`` for every failure
    of the database; ``notice`` is set (and stays set) once a corrupt file has been moved aside.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        max_conversations: int = 1000,
        max_age_days: float = 30,
        timeout: float = 5.0,
    ) -> None:
        self.path = path
        self.max_conversations = max_conversations
        self.max_age = max_age_days * 86400
        self.timeout = timeout
        #: Set when a corrupt file was moved aside and a new database started: for the user to hear.
        self.notice: str | None = None
        self._saves = 0
        self._conn: sqlite3.Connection | None = None
        self._limiter = anyio.CapacityLimiter(1)
        self._unreadable: set[str] = set()

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await anyio.to_thread.run_sync(lambda: self._guarded(work), limiter=self._limiter)

    def _guarded(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` on the connection, raising every failure of the database as ``StoreError``.

        After a corrupt file is moved aside, ``work`` runs once more, on the new database.
        """
        try:
            return work(self._db())
        except (sqlite3.Error, OSError) as exc:
            if not (_is_corrupt(exc) and self._recovered(exc)):
                raise self._fault(exc) from exc
        try:
            return work(self._db())
        except (sqlite3.Error, OSError) as exc:
            raise self._fault(exc) from exc

    def _db(self) -> sqlite3.Connection:
        """The connection, opened on first use: a server that never runs a conversation never makes the file.

        A failed open leaves no connection behind, so the next call tries again.
        """
        if self._conn is None:
            if str(self.path) != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=self.timeout)
            try:
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
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        """Close the connection, if any; the next call opens the file again."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                logger.debug("closing %s failed", self.path, exc_info=True)

    def _fault(self, exc: sqlite3.Error | OSError) -> StoreError:
        """The ``StoreError`` for ``exc``. Unless it was a lock, the connection is dropped, so that a
        file made writable again (or a disk with room again) works on the next call."""
        path = str(self.path)
        if _is_busy(exc):
            return StoreError(
                f"the conversation database {path} is locked by another process: gave up after "
                f"{self.timeout:g} s ({exc})",
                path=path,
                hint=_LOCKED_HINT,
            )
        self._drop()
        return StoreError(f"the conversation database {path} could not be read or written: {exc}", path=path)

    def _recovered(self, cause: sqlite3.Error | OSError) -> bool:
        """After an error that says the file is damaged: whether to run the work again.

        The file is checked on a new connection (ours may be to a file another process has already
        moved aside); if it is corrupt it is moved aside and ``notice`` set. Raises ``StoreError``
        when it cannot be checked or moved.
        """
        self._drop()
        path = str(self.path)
        if path == ":memory:":
            return False
        try:
            corrupt = self._file_is_corrupt()
        except (sqlite3.Error, OSError) as exc:
            raise self._fault(exc) from exc
        if not corrupt:
            return True
        try:
            moved = self._move_aside()
        except OSError as exc:
            raise StoreError(
                f"the conversation database {path} is corrupt ({cause}) and could not be moved aside: {exc}",
                path=path,
                hint=f"move or delete {path} (its conversations are lost), or set KEY4U_DB_PATH to another file",
            ) from exc
        logger.warning(
            "the conversation database %s was corrupt (%s); it was moved to %s and a new one was started",
            path,
            cause,
            moved,
        )
        self.notice = f"the conversation database {path} was corrupt; it was moved to {moved} and a new one was started"
        self._unreadable.clear()
        return True

    def _file_is_corrupt(self) -> bool:
        conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=self.timeout)
        try:
            rows: list[tuple[str]] = conn.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as exc:
            if _is_corrupt(exc):
                return True
            raise
        finally:
            conn.close()
        return rows != [("ok",)]

    def _move_aside(self) -> str:
        """Move the file and its side files to ``<name>.corrupt-<unix time>``; the new name."""
        path = Path(self.path)
        stamp = int(time.time())
        moved, n = path.with_name(f"{path.name}.corrupt-{stamp}"), 0
        while any(Path(f"{moved}{suffix}").exists() for suffix in ("", *_SIDE_FILES)):
            n += 1
            moved = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        os.replace(path, moved)
        for suffix in _SIDE_FILES:
            side = Path(f"{path}{suffix}")
            if side.exists():
                os.replace(side, Path(f"{moved}{suffix}"))
        return str(moved)

    def _parse(self, conversation_id: str, data: str) -> Conversation | None:
        """The stored conversation, or None (logged once) when its data no longer validates."""
        try:
            return Conversation.model_validate_json(data)
        except ValidationError as exc:
            if conversation_id not in self._unreadable:
                self._unreadable.add(conversation_id)
                first = exc.errors(include_url=False, include_input=False)[0]
                logger.warning(
                    "conversation %s in %s no longer reads as a conversation and is ignored "
                    "(%d errors; first at %s: %s)",
                    conversation_id,
                    self.path,
                    exc.error_count(),
                    ".".join(str(part) for part in first["loc"]) or "the top",
                    first["msg"],
                )
            return None

    async def get(self, conversation_id: str) -> Stored | None:
        def read(db: sqlite3.Connection) -> Stored | None:
            row: tuple[str, str | None, float | None] | None = db.execute(
                "SELECT data, owner, lease_until FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()
            if row is None:
                return None
            conv = self._parse(conversation_id, row[0])
            return Stored(conv, row[1], row[2]) if conv is not None else None

        return await self._run(read)

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
                try:
                    self._prune(db)
                except sqlite3.OperationalError as exc:  # saved all the same; the next prune catches up
                    logger.warning("could not prune the conversation database %s: %s", self.path, exc)

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
        def take(db: sqlite3.Connection) -> Conversation | None:
            db.execute("BEGIN IMMEDIATE")
            try:
                now = time.time()
                won = db.execute(
                    "UPDATE conversations SET owner = ?, lease_until = ? WHERE id = ? "
                    "AND (owner IS NULL OR owner = ? OR lease_until IS NULL OR lease_until <= ?)",
                    (owner, now + lease, conversation_id, owner, now),
                ).rowcount
                row: tuple[str] | None = (
                    db.execute("SELECT data FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
                    if won == 1
                    else None
                )
                conv = self._parse(conversation_id, row[0]) if row is not None else None
                # A row that no longer reads as a conversation is not claimed either.
                db.execute("COMMIT" if conv is not None else "ROLLBACK")
                return conv
            except BaseException:
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        logger.debug("rollback failed", exc_info=True)
                raise

        return await self._run(take)

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
        def read(db: sqlite3.Connection) -> list[ConversationInfo]:
            rows: list[tuple[str, str | None, float, str]] = db.execute(
                "SELECT id, status, updated_at, data FROM conversations ORDER BY updated_at DESC LIMIT ?", (limit,)
            ).fetchall()
            return [
                ConversationInfo.of(conv, _status(s, conv))
                for i, s, _, d in rows
                if (conv := self._parse(i, d)) is not None
            ]

        return await self._run(read)

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
        if self._conn is not None:
            await anyio.to_thread.run_sync(self._drop, limiter=self._limiter)


def _status(column: str | None, conv: Conversation) -> Status:
    """The status column, or (rows saved before it existed) the status inside the data."""
    if column in ("completed", "requires_action", "in_progress", "incomplete", "failed"):
        return column  # type: ignore[return-value]
    return conv.status


def _code(exc: sqlite3.Error | OSError) -> int | None:
    """SQLite's primary result code for ``exc`` (Python 3.11+ records it), or None."""
    code: object = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _is_busy(exc: sqlite3.Error | OSError) -> bool:
    """Whether ``exc`` is a lock another connection held past the timeout."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = _code(exc)
    return code in _BUSY_CODES if code is not None else "locked" in str(exc) or "busy" in str(exc)


def _is_corrupt(exc: sqlite3.Error | OSError) -> bool:
    """Whether ``exc`` says the file is not a database or its pages are damaged."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = _code(exc)
    if code is not None:
        return code in _CORRUPT_CODES
    return "file is not a database" in str(exc) or "malformed" in str(exc)
