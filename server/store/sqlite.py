"""Conversations in an embedded SQLite database, so they survive a restart and can be shared by
processes on one machine.

A query runs on the event loop itself when it need not wait: no other query of this store is running,
and no other process holds the write lock (the loop never waits for a lock: ``busy_timeout`` is 0
there). That is nearly every query, and a short one, since WAL mode with ``synchronous=NORMAL`` does
not sync the disk on commit; it saves two thread hops per query, about 0.3 ms per call. A query that
would wait, a prune and a checkpoint (the saves that do them are known in advance) run on a worker
thread instead, one at a time, where a lock is waited for up to ``timeout``. A claim is one short
write transaction (``BEGIN IMMEDIATE``, one ``UPDATE ... WHERE``, the read of what it won), which
SQLite applies atomically across processes. A conversation is stored as a head row and append-only
parts (``server.store.parts``): a save writes the head and what the history gained, and a read of a
conversation this process has seen reads only what was added since. Bounded in count and age: saves
prune the oldest beyond ``max_conversations`` and any not touched for ``max_age_days``; the same saves
checkpoint the write-ahead log (never a commit on the event loop). Not for network filesystems.

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
from functools import partial
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

from server.bridge.conversation import Conversation
from server.errors import StoreError
from server.store.base import USAGE_KEPT_DAYS, ConversationInfo, Stored, UsageRow, row_status, title_of
from server.store.parts import (
    ITEM_PART,
    NOT_OURS,
    TRACE_PART,
    Head,
    PartsCache,
    Save,
    Saved,
    Unreadable,
    cache_saved,
    is_stale,
    known_parts,
    mark_saved,
    plan_save,
    saved_state,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    updated_at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_updated ON conversations (updated_at);
CREATE TABLE IF NOT EXISTS conversation_parts (
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    kind INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (conversation_id, kind, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage_log (
    conversation_id TEXT NOT NULL,
    turn INTEGER NOT NULL,
    at REAL NOT NULL,
    model TEXT NOT NULL,
    api TEXT,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    cost_usd REAL,
    PRIMARY KEY (conversation_id, turn)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_log_at ON usage_log (at);
"""
#: Columns added since the first release; added to older files on open. A row whose ``generation``
#: is NULL holds the whole conversation in ``data``, as the versions before parts wrote it.
_ADDED_COLUMNS = {
    "owner": "TEXT",
    "lease_until": "REAL",
    "status": "TEXT",
    "title": "TEXT",
    "model": "TEXT",
    "generation": "INTEGER",
    "items": "INTEGER",
    "traces": "INTEGER",
}
_HEAD = "SELECT data, owner, lease_until, generation, items, traces FROM conversations WHERE id = ?"
#: The saves that prune (and checkpoint the log): every ``_PRUNE_EVERY``-th, from the first.
_PRUNE_EVERY = 50
#: The files SQLite keeps beside the database; they move aside with it.
_SIDE_FILES = ("-wal", "-shm", "-journal")
#: SQLite's primary result codes for a lock held elsewhere and for a damaged file.
_BUSY_CODES = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_LOCKED_HINT = "another process is using the database: try again, or set KEY4U_DB_PATH to another file"


class SQLiteStore:
    """A ``ConversationStore`` in one SQLite file, shared by the processes of one machine.

    Opens the file on first use and runs one query at a time: on the event loop where it need not
    wait, else on a worker thread. Waits up to ``timeout`` seconds for a lock another process holds.
    Raises ``StoreError`` for every failure of the database; ``notice`` is set (and stays set) once a
    corrupt file has been moved aside.
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
        self._waits = True  # whether the connection's busy handler waits (``timeout``) or fails at once
        self._file: tuple[int, int] | None = None  # the file the connection opened (``_identity``)
        self._limiter = anyio.CapacityLimiter(1)
        self._unreadable = Unreadable(str(path))
        self._cache = PartsCache()

    async def _run(self, work: Callable[[sqlite3.Connection], T], *, inline: bool = True) -> T:
        """Run ``work`` on the event loop if ``inline`` and it need not wait, else on the worker thread.

        ``work`` is tried on the loop only when no other query of this store is running (so the
        connection is free), and gives up at once if another process holds a lock it needs; it
        must then have left no trace (every transaction here rolls back when it fails), and it runs
        again on the worker thread, which waits for the lock.
        """
        if inline and self._limiter.borrowed_tokens == 0:
            try:
                return self._guarded(work, wait=False)
            except _WouldWait:
                logger.debug("%s is locked by another process: waiting on a worker thread", self.path)
        return await anyio.to_thread.run_sync(lambda: self._guarded(work), limiter=self._limiter)

    def _guarded(self, work: Callable[[sqlite3.Connection], T], *, wait: bool = True) -> T:
        """Run ``work`` on the connection, raising every failure of the database as ``StoreError``,
        or ``_WouldWait`` for a lock held elsewhere when not to ``wait``.

        After a corrupt file is moved aside, ``work`` runs once more, on the new database.
        """
        try:
            return work(self._db(wait))
        except (sqlite3.Error, OSError) as exc:
            if not (_is_corrupt(exc) and self._recovered(exc)):
                raise self._failed(exc, wait) from exc
        try:
            return work(self._db(wait))
        except (sqlite3.Error, OSError) as exc:
            raise self._failed(exc, wait) from exc

    def _failed(self, exc: sqlite3.Error | OSError, wait: bool) -> Exception:
        """What to raise for ``exc``: ``_WouldWait`` for a lock held elsewhere when not to ``wait``, else its
        ``StoreError``."""
        return _WouldWait() if not wait and _is_busy(exc) else self._fault(exc)

    def _db(self, wait: bool = True) -> sqlite3.Connection:
        """The connection, opened on first use: a server that never runs a conversation never makes the file.

        A failed open leaves no connection behind, so the next call tries again. Its busy handler
        waits up to ``timeout`` for a lock if ``wait``, else gives up at once.
        """
        if self._conn is not None and self._replaced():
            self._drop()
        if self._conn is None:
            if str(self.path) != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=self.timeout)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run with the prunes, off the loop
                conn.execute("PRAGMA foreign_keys=ON")  # a deleted conversation takes its parts with it
                conn.executescript(_SCHEMA)
                have = {row[1] for row in conn.execute("PRAGMA table_info(conversations)")}
                for column, kind in _ADDED_COLUMNS.items():
                    if column not in have:
                        try:
                            conn.execute(f"ALTER TABLE conversations ADD COLUMN {column} {kind}")
                        except sqlite3.OperationalError:  # another process added it first
                            logger.debug("column %s already added", column)
            except BaseException:
                conn.close()
                raise
            self._conn, self._waits, self._file = conn, True, _identity(self.path)
        if wait != self._waits:
            self._conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000) if wait else 0}")
            self._waits = wait
        return self._conn

    def _replaced(self) -> bool:
        """Whether the file at ``path`` is no longer the one the connection has open: another process
        moved a corrupt file aside and started a new one. Then this process moves on to the new file too,
        rather than keep writing into the one set aside, where nobody else would find its conversations.
        One ``stat`` per query."""
        if self._file is None or self._file == _identity(self.path):
            return False
        logger.warning(
            "the conversation database %s was replaced while this server had it open (another server process "
            "found it corrupt and moved it aside): using the new file",
            self.path,
        )
        self.notice = (
            f"the conversation database {self.path} was found corrupt by another server process and replaced "
            "by a new one: conversations from before are in the file it was moved to"
        )
        self._unreadable.clear()
        self._cache.clear()
        return True

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
                busy=True,
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
        self._cache.clear()
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

    def _load(self, db: sqlite3.Connection, conversation_id: str, row: _HeadRow) -> Conversation | None:
        """The conversation of a head row: its head and parts, reading only the parts not cached."""
        head = Head(row[0], row[3], row[4], row[5])
        saved = head.saved
        if saved is None:  # a whole document, from an older version
            whole = self._unreadable.parse(conversation_id, lambda: Conversation.model_validate_json(head.data))
            if whole is not None:
                mark_saved(whole, None)  # the next save writes it as parts
            return whole
        known = known_parts(self._cache, conversation_id, saved)
        items = self._parts(db, conversation_id, ITEM_PART, known.items_from)
        traces = self._parts(db, conversation_id, TRACE_PART, known.traces_from)
        return self._unreadable.assemble(self._cache, conversation_id, head.data, saved, known, items, traces)

    @staticmethod
    def _parts(db: sqlite3.Connection, conversation_id: str, kind: int, start: int) -> list[str]:
        rows: list[tuple[str]] = db.execute(
            "SELECT data FROM conversation_parts WHERE conversation_id = ? AND kind = ? AND seq >= ? ORDER BY seq",
            (conversation_id, kind, start),
        ).fetchall()
        return [r[0] for r in rows]

    async def get(self, conversation_id: str) -> Stored | None:
        def read(db: sqlite3.Connection) -> Stored | None:
            row: _HeadRow | None = db.execute(_HEAD, (conversation_id,)).fetchone()
            if row is None:
                return None
            conv = self._load(db, conversation_id, row)
            return Stored(conv, row[1], row[2]) if conv is not None else None

        return await self._run(read)

    async def put(self, conversation: Conversation, *, owner: str | None = None, release: bool = False) -> bool:
        return await self._save(conversation, None, owner, release)

    async def create(self, conversation: Conversation, owner: str, lease: float) -> None:
        # One transaction: no other process ever sees it saved as running without its claim.
        await self._save(conversation, (owner, lease))

    async def _save(
        self, conv: Conversation, claim: tuple[str, float] | None, owner: str | None = None, release: bool = False
    ) -> bool:
        """Write ``conv``'s head and the parts it gained; a new conversation (``claim`` given) is
        inserted claimed. The JSON is made here, on the event loop, where the conversation changes."""
        conv.updated_at = time.time()
        plan = plan_save(conv, saved_state(conv))
        title, model = title_of(conv), conv.model or conv.options.model

        def write(db: sqlite3.Connection, plan: Save) -> Saved | None:
            db.execute("BEGIN IMMEDIATE")
            try:
                row: tuple[int | None, int | None, int | None, str | None] | None = db.execute(
                    "SELECT generation, items, traces, owner FROM conversations WHERE id = ?", (conv.id,)
                ).fetchone()
                if owner is not None and row is not None and row[3] != owner:
                    db.execute("ROLLBACK")
                    return NOT_OURS
                stored = Head("", *row[:3]).saved if row is not None else None
                if not plan.rewrite and is_stale(plan, stored):
                    db.execute("ROLLBACK")
                    return stored if stored is not None else Saved(0, 0, 0)
                after = plan.after
                values = (
                    conv.updated_at,
                    plan.head,
                    conv.status,
                    title,
                    model,
                    after.generation,
                    after.items,
                    after.traces,
                )
                if claim is not None:
                    db.execute(
                        "INSERT INTO conversations (updated_at, data, status, title, model, generation, items, traces, "
                        "id, owner, lease_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (*values, conv.id, claim[0], conv.updated_at + claim[1]),
                    )
                elif row is None:
                    db.execute(
                        "INSERT INTO conversations (updated_at, data, status, title, model, generation, items, traces, "
                        "id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (*values, conv.id),
                    )
                else:
                    db.execute(
                        "UPDATE conversations SET updated_at = ?, data = ?, status = ?, title = ?, model = ?, "
                        "generation = ?, items = ?, traces = ? WHERE id = ?",
                        (*values, conv.id),
                    )
                if release:
                    db.execute("UPDATE conversations SET owner = NULL, lease_until = NULL WHERE id = ?", (conv.id,))
                if plan.rewrite:
                    db.execute("DELETE FROM conversation_parts WHERE conversation_id = ?", (conv.id,))
                db.executemany(
                    "INSERT INTO conversation_parts (conversation_id, kind, seq, data) VALUES (?, ?, ?, ?)",
                    [
                        *((conv.id, ITEM_PART, plan.items_from + n, d) for n, d in enumerate(plan.items)),
                        *((conv.id, TRACE_PART, plan.traces_from + n, d) for n, d in enumerate(plan.traces)),
                    ],
                )
                # The ledger (no foreign key: it outlives pruned conversations); each turn once.
                db.executemany(
                    "INSERT OR IGNORE INTO usage_log (conversation_id, turn, at, model, api, input_tokens, "
                    "output_tokens, cached_tokens, reasoning_tokens, cost_usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            conv.id,
                            u.turn,
                            u.at,
                            u.model,
                            u.api,
                            u.input_tokens,
                            u.output_tokens,
                            u.cached_tokens,
                            u.reasoning_tokens,
                            u.cost_usd,
                        )  # fmt: skip
                        for u in conv.run_turns
                    ],
                )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        logger.debug("rollback failed", exc_info=True)
                raise
            prunes = self._save_prunes()
            self._saves += 1
            if prunes:
                try:
                    self._prune(db)
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.OperationalError as exc:  # saved all the same; the next prune catches up
                    logger.warning("could not prune the conversation database %s: %s", self.path, exc)
            return None

        # The save that prunes (and checkpoints) may take long: it runs off the loop. A stale write
        # counts no save, so the rewrite after it prunes if it would have.
        stale = await self._run(lambda db: write(db, plan), inline=not self._save_prunes())
        if stale is NOT_OURS:
            return False
        if stale is not None:  # the row is not as this object last saw it: write it whole
            plan = plan_save(conv, None if stale.generation == 0 else stale)
            if await self._run(lambda db: write(db, plan), inline=not self._save_prunes()) is NOT_OURS:
                return False
        cache_saved(self._cache, conv, plan)
        return True

    def _save_prunes(self) -> bool:
        """Whether the next save that goes through prunes (and checkpoints the log)."""
        return self._saves % _PRUNE_EVERY == 0

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
                row: _HeadRow | None = db.execute(_HEAD, (conversation_id,)).fetchone() if won == 1 else None
                conv = self._load(db, conversation_id, row) if row is not None else None
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
            rows: list[tuple[str, str | None, str | None, str, int | None]] = db.execute(
                "SELECT id, status, title, data, generation FROM conversations ORDER BY updated_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
            infos: list[ConversationInfo] = []
            for i, status, title, data, generation in rows:
                # Only the head is read: a row of parts (generation set) keeps its title in a column.
                conv = self._unreadable.parse(i, partial(Conversation.model_validate_json, data))
                if conv is not None:
                    infos.append(ConversationInfo.of(conv, row_status(status, conv), title if generation else None))
            return infos

        return await self._run(read, inline=False)  # up to ``limit`` heads parsed: off the loop

    def _prune(self, db: sqlite3.Connection) -> None:
        db.execute(
            "DELETE FROM conversations WHERE updated_at < ? AND (lease_until IS NULL OR lease_until < ?)",
            (time.time() - self.max_age, time.time()),
        )
        # Older than the newest ``max_conversations``: found on the index alone (a NOT IN of the newest ids
        # read every row, 1.5 ms at a thousand conversations, against 0.01). Except one still running (its
        # claim is live): its run would find its row gone, take that for another process's takeover, and stop.
        db.execute(
            "DELETE FROM conversations WHERE updated_at < "
            "(SELECT updated_at FROM conversations ORDER BY updated_at DESC LIMIT 1 OFFSET ?) "
            "AND (lease_until IS NULL OR lease_until < ?)",
            (self.max_conversations - 1, time.time()),
        )
        db.execute("DELETE FROM usage_log WHERE at < ?", (time.time() - USAGE_KEPT_DAYS * 86400,))

    async def usage(self, since: float) -> list[UsageRow]:
        def read(db: sqlite3.Connection) -> list[UsageRow]:
            rows: list[tuple[str, str, int, int, int, int, int, float | None, int]] = db.execute(
                "SELECT date(at, 'unixepoch') AS day, model, count(*), sum(input_tokens), sum(output_tokens), "
                "sum(cached_tokens), sum(reasoning_tokens), sum(cost_usd), sum(cost_usd IS NULL) "
                "FROM usage_log WHERE at >= ? GROUP BY day, model ORDER BY day DESC, model",
                (since,),
            ).fetchall()
            return [UsageRow(*row) for row in rows]

        return await self._run(read)

    async def prune(self) -> None:
        await self._run(self._prune, inline=False)

    async def count(self) -> int:
        return await self._run(lambda db: int(db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0]))

    async def aclose(self) -> None:
        if self._conn is not None:
            await anyio.to_thread.run_sync(self._drop, limiter=self._limiter)


_HeadRow = tuple[str, str | None, float | None, int | None, int | None, int | None]


def _identity(path: Path | str) -> tuple[int, int] | None:
    """Which file is at ``path`` (device and inode), or None for ``:memory:`` or a path with no file."""
    if str(path) == ":memory:":
        return None
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _code(exc: sqlite3.Error | OSError) -> int | None:
    """SQLite's primary result code for ``exc`` (Python 3.11+ records it), or None."""
    code: object = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


class _WouldWait(Exception):
    """A query on the event loop met a lock another process holds: it runs again on the worker thread."""


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
