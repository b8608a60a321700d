"""Conversations in PostgreSQL, shared by server replicas on several machines (``KEY4U_DB_URL``).

The same protocol as ``SQLiteStore``: a head row and append-only parts per conversation (see
``server.store.parts``), claims with an owner and a lease, the usage ledger, pruning by count and age.
It needs the ``[postgres]`` extra (psycopg 3 with its connection pool).

* **Claims** are one atomic ``UPDATE ... WHERE owner IS NULL OR lease expired ... RETURNING``: of two
  replicas claiming at once, exactly one wins. Leases are measured on the database's clock, so replicas
  whose clocks disagree still agree on when a lease ends.
* **Saves** are one transaction that locks the head row (``SELECT ... FOR UPDATE``), writes it and the
  parts it gained and the turns it adds to the ledger: a reader never sees half a save.
* **Schema**: created and migrated on first use, in one transaction under an advisory lock, so two
  replicas starting at once do it once; a schema written by a newer version is refused, not altered.
* **Faults** are ``StoreError``s that name ``KEY4U_DB_URL`` with the password masked: a server that
  is down or unreachable, wrong credentials, a database that does not exist. Nothing is opened until a
  conversation needs it, so the local tools are served whatever the database does, and the next call
  tries again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from server.bridge.conversation import Conversation
from server.errors import StoreError
from server.logs import mask, masked_url, url_password
from server.store.base import USAGE_KEPT_DAYS, ConversationInfo, Stored, UsageRow, row_status, title_of
from server.store.parts import (
    ITEM_PART,
    TRACE_PART,
    Head,
    PartsCache,
    Save,
    Saved,
    assemble,
    cache_saved,
    is_stale,
    known_parts,
    plan_save,
    saved_state,
)

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool
    from typing_extensions import LiteralString

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The schema version this code writes; a database at a higher one was migrated by a newer release.
SCHEMA_VERSION = 1
_MIGRATIONS: dict[int, LiteralString] = {
    1: """
CREATE TABLE IF NOT EXISTS key4u_conversations (
    id TEXT PRIMARY KEY,
    updated_at DOUBLE PRECISION NOT NULL,
    data TEXT NOT NULL,
    owner TEXT,
    lease_until DOUBLE PRECISION,
    status TEXT,
    title TEXT,
    model TEXT,
    generation INTEGER NOT NULL,
    items INTEGER NOT NULL,
    traces INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS key4u_conversations_updated ON key4u_conversations (updated_at);
CREATE TABLE IF NOT EXISTS key4u_parts (
    conversation_id TEXT NOT NULL REFERENCES key4u_conversations (id) ON DELETE CASCADE,
    kind SMALLINT NOT NULL,
    seq INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (conversation_id, kind, seq)
);
CREATE TABLE IF NOT EXISTS key4u_usage (
    conversation_id TEXT NOT NULL,
    turn INTEGER NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    model TEXT NOT NULL,
    api TEXT,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    cost_usd DOUBLE PRECISION,
    PRIMARY KEY (conversation_id, turn)
);
CREATE INDEX IF NOT EXISTS key4u_usage_at ON key4u_usage (at);
""",
}
#: Taken for the length of the migration transaction: replicas starting at once migrate one at a time.
_MIGRATION_LOCK = 0x6B657934_75  # "key4u"
_NOW = "extract(epoch from clock_timestamp())"
_HEAD = "SELECT data, owner, lease_until, generation, items, traces FROM key4u_conversations WHERE id = %s"
_PRUNE_EVERY = 50
_CONNECT_TIMEOUT = 10.0


class PostgresStore:
    """A ``ConversationStore`` in PostgreSQL, for replicas on several machines.

    Connects on first use through a small pool; every failure of the database is a ``StoreError``.
    """

    def __init__(
        self,
        url: str,
        *,
        max_conversations: int = 1000,
        max_age_days: float = 30,
        pool_size: int = 4,
        timeout: float = _CONNECT_TIMEOUT,
    ) -> None:
        self.url = url
        self.shown = masked_url(url)
        self.max_conversations = max_conversations
        self.max_age = max_age_days * 86400
        self.pool_size = pool_size
        self.timeout = timeout
        self.notice: str | None = None
        self._secrets = [p for p in (url_password(url),) if p]
        self._pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]] | None = None
        self._saves = 0
        self._unreadable: set[str] = set()
        self._cache = PartsCache()

    # -- connections and faults -----------------------------------------------------------------------

    def _fault(self, exc: BaseException, doing: str) -> StoreError:
        message = mask(str(exc).strip() or type(exc).__name__, self._secrets)
        return StoreError(
            f"the PostgreSQL conversation store (KEY4U_DB_URL={self.shown}) could not {doing}: {message}",
            path=self.shown,
            hint="check that the server is up and reachable, and the user, password and database in KEY4U_DB_URL",
        )

    async def _open(self) -> AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]]:
        if self._pool is not None:
            return self._pool
        try:
            import psycopg
            from psycopg_pool import AsyncConnectionPool
        except ImportError as exc:
            raise StoreError(
                "KEY4U_DB_URL names a PostgreSQL database, but psycopg is not installed",
                path=self.shown,
                hint="pip install 'key4u-mcp[postgres]'",
            ) from exc
        options: dict[str, Any] = {"autocommit": True, "connect_timeout": max(1, int(self.timeout))}
        # One connection first, on its own: its failure says what is wrong (refused, password, no such
        # database), where a pool would only say it timed out. It migrates the schema, then the pool opens.
        try:
            first = await psycopg.AsyncConnection.connect(self.url, **options)
        except (psycopg.Error, OSError) as exc:
            raise self._fault(exc, "connect") from None
        try:
            async with first:
                await self._migrate(first)
        except psycopg.Error as exc:
            raise self._fault(exc, "create its tables") from None
        pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]] = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self.pool_size,
            open=False,
            timeout=self.timeout,
            kwargs=options,
            check=AsyncConnectionPool.check_connection,  # a server restarted since: a fresh connection
            name="key4u-store",
        )
        try:
            await pool.open(wait=True, timeout=self.timeout)
        except Exception as exc:
            await pool.close()
            raise self._fault(exc, "connect") from None
        self._pool = pool
        return pool

    async def _migrate(self, conn: AsyncConnection[tuple[Any, ...]]) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute("CREATE TABLE IF NOT EXISTS key4u_schema (version INTEGER NOT NULL)")
            row = await (await conn.execute("SELECT max(version) FROM key4u_schema")).fetchone()
            version = int(row[0]) if row is not None and row[0] is not None else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the PostgreSQL conversation store (KEY4U_DB_URL={self.shown}) has schema version "
                    f"{version}, written by a newer key4u-mcp; this one writes version {SCHEMA_VERSION}",
                    path=self.shown,
                    hint="upgrade key4u-mcp on this machine, or point KEY4U_DB_URL at another database",
                )
            for number in range(version + 1, SCHEMA_VERSION + 1):
                await conn.execute(_MIGRATIONS[number])
                await conn.execute("INSERT INTO key4u_schema (version) VALUES (%s)", (number,))
                logger.info("PostgreSQL conversation store %s: schema version %d", self.shown, number)

    @asynccontextmanager
    async def _transaction(self, doing: str) -> AsyncGenerator[AsyncConnection[tuple[Any, ...]]]:
        """A connection in a transaction; any failure of the database becomes a ``StoreError``."""
        pool = await self._open()
        try:
            async with pool.connection() as conn, conn.transaction():
                yield conn
        except StoreError:
            raise
        except Exception as exc:
            if not _is_database_error(exc):
                raise
            raise self._fault(exc, doing) from None

    async def _run(self, doing: str, work: Callable[[AsyncConnection[tuple[Any, ...]]], Awaitable[T]]) -> T:
        async with self._transaction(doing) as conn:
            return await work(conn)

    # -- reading ----------------------------------------------------------------------------------------

    def _parse(self, conversation_id: str, parse: Callable[[], T]) -> T | None:
        try:
            return parse()
        except ValidationError as exc:
            if conversation_id not in self._unreadable:
                self._unreadable.add(conversation_id)
                logger.warning(
                    "conversation %s in %s no longer reads as a conversation and is ignored (%d errors)",
                    conversation_id,
                    self.shown,
                    exc.error_count(),
                )
            return None

    async def _load(
        self, conn: AsyncConnection[tuple[Any, ...]], conversation_id: str, row: tuple[Any, ...]
    ) -> Conversation | None:
        head = Head(row[0], row[3], row[4], row[5])
        saved = head.saved
        assert saved is not None  # the columns are NOT NULL here
        known = known_parts(self._cache, conversation_id, saved)
        cursor = await conn.execute(
            "SELECT kind, data FROM key4u_parts WHERE conversation_id = %s "
            "AND ((kind = %s AND seq >= %s) OR (kind = %s AND seq >= %s)) ORDER BY kind, seq",
            (conversation_id, ITEM_PART, known.items_from, TRACE_PART, known.traces_from),
        )
        items: list[str] = []
        traces: list[str] = []
        for kind, data in await cursor.fetchall():
            (items if kind == ITEM_PART else traces).append(data)
        conv = self._parse(
            conversation_id, lambda: assemble(self._cache, conversation_id, head.data, saved, known, items, traces)
        )
        if conv is None and conversation_id not in self._unreadable:
            self._unreadable.add(conversation_id)
            logger.warning("conversation %s in %s has parts missing and is ignored", conversation_id, self.shown)
        return conv

    async def get(self, conversation_id: str) -> Stored | None:
        async def read(conn: AsyncConnection[tuple[Any, ...]]) -> Stored | None:
            row = await (await conn.execute(_HEAD, (conversation_id,))).fetchone()
            if row is None:
                return None
            conv = await self._load(conn, conversation_id, row)
            return Stored(conv, row[1], row[2]) if conv is not None else None

        return await self._run("read a conversation", read)

    # -- writing ----------------------------------------------------------------------------------------

    async def put(self, conversation: Conversation) -> None:
        await self._save(conversation, None)

    async def create(self, conversation: Conversation, owner: str, lease: float) -> None:
        await self._save(conversation, (owner, lease))

    async def _save(self, conv: Conversation, claim: tuple[str, float] | None) -> None:
        conv.updated_at = time.time()
        plan = plan_save(conv, saved_state(conv))
        stale = await self._run("save a conversation", lambda conn: self._write(conn, conv, plan, claim))
        if stale is not None:  # the row is not as this object last saw it: write it whole
            plan = plan_save(conv, None if stale.generation == 0 else stale)
            await self._run("save a conversation", lambda conn: self._write(conn, conv, plan, claim))
        cache_saved(self._cache, conv, plan)
        self._saves += 1
        if self._saves % _PRUNE_EVERY == 1:
            try:
                await self.prune()
            except StoreError as exc:  # saved all the same; the next prune catches up
                logger.warning("could not prune %s: %s", self.shown, exc)

    async def _write(
        self, conn: AsyncConnection[tuple[Any, ...]], conv: Conversation, plan: Save, claim: tuple[str, float] | None
    ) -> Saved | None:
        row = await (
            await conn.execute(
                "SELECT generation, items, traces FROM key4u_conversations WHERE id = %s FOR UPDATE", (conv.id,)
            )
        ).fetchone()
        stored = Saved(*row) if row is not None else None
        if not plan.rewrite and is_stale(plan, stored):
            return stored if stored is not None else Saved(0, 0, 0)
        after = plan.after
        values = (
            conv.updated_at,
            plan.head,
            conv.status,
            title_of(conv),
            conv.model or conv.options.model,
            after.generation,
            after.items,
            after.traces,
        )
        if row is None:
            owner, lease = claim if claim is not None else (None, None)
            await conn.execute(
                "INSERT INTO key4u_conversations (updated_at, data, status, title, model, generation, items, traces, "
                f"id, owner, lease_until) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, {_NOW} + %s)",
                (*values, conv.id, owner, lease),
            )
        else:
            await conn.execute(
                "UPDATE key4u_conversations SET updated_at = %s, data = %s, status = %s, title = %s, model = %s, "
                "generation = %s, items = %s, traces = %s WHERE id = %s",
                (*values, conv.id),
            )
        if plan.rewrite:
            await conn.execute("DELETE FROM key4u_parts WHERE conversation_id = %s", (conv.id,))
        parts = [
            *((conv.id, ITEM_PART, plan.items_from + n, d) for n, d in enumerate(plan.items)),
            *((conv.id, TRACE_PART, plan.traces_from + n, d) for n, d in enumerate(plan.traces)),
        ]
        if parts:
            async with conn.cursor() as cursor:
                await cursor.executemany(
                    "INSERT INTO key4u_parts (conversation_id, kind, seq, data) VALUES (%s, %s, %s, %s)", parts
                )
        if conv.run_turns:
            async with conn.cursor() as cursor:
                await cursor.executemany(
                    "INSERT INTO key4u_usage (conversation_id, turn, at, model, api, input_tokens, output_tokens, "
                    "cached_tokens, reasoning_tokens, cost_usd) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT DO NOTHING",
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
        return None

    # -- claims -----------------------------------------------------------------------------------------

    async def claim(self, conversation_id: str, owner: str, lease: float) -> Conversation | None:
        async def take(conn: AsyncConnection[tuple[Any, ...]]) -> Conversation | None:
            row = await (
                await conn.execute(
                    f"UPDATE key4u_conversations SET owner = %s, lease_until = {_NOW} + %s WHERE id = %s "
                    f"AND (owner IS NULL OR owner = %s OR lease_until IS NULL OR lease_until <= {_NOW}) "
                    "RETURNING data, owner, lease_until, generation, items, traces",
                    (owner, lease, conversation_id, owner),
                )
            ).fetchone()
            if row is None:
                return None
            conv = await self._load(conn, conversation_id, row)
            if conv is None:  # a row that no longer reads as a conversation is not claimed either
                raise _Unclaimable
            return conv

        try:
            return await self._run("claim a conversation", take)
        except _Unclaimable:
            return None

    async def renew(self, conversation_id: str, owner: str, lease: float) -> bool:
        async def extend(conn: AsyncConnection[tuple[Any, ...]]) -> bool:
            cursor = await conn.execute(
                f"UPDATE key4u_conversations SET lease_until = {_NOW} + %s WHERE id = %s AND owner = %s",
                (lease, conversation_id, owner),
            )
            return cursor.rowcount == 1

        return await self._run("renew a claim", extend)

    async def release(self, conversation_id: str, owner: str) -> None:
        async def free(conn: AsyncConnection[tuple[Any, ...]]) -> None:
            await conn.execute(
                "UPDATE key4u_conversations SET owner = NULL, lease_until = NULL WHERE id = %s AND owner = %s",
                (conversation_id, owner),
            )

        await self._run("release a claim", free)

    # -- listings, pruning, the ledger ------------------------------------------------------------------

    async def list(self, limit: int = 50) -> list[ConversationInfo]:
        async def read(conn: AsyncConnection[tuple[Any, ...]]) -> list[ConversationInfo]:
            cursor = await conn.execute(
                "SELECT id, status, title, data FROM key4u_conversations ORDER BY updated_at DESC LIMIT %s", (limit,)
            )
            infos: list[ConversationInfo] = []
            for conversation_id, status, title, data in await cursor.fetchall():
                conv = self._parse(conversation_id, lambda data=data: Conversation.model_validate_json(data))
                if conv is not None:
                    infos.append(ConversationInfo.of(conv, row_status(status, conv), title))
            return infos

        return await self._run("list conversations", read)

    async def prune(self) -> None:
        async def prune(conn: AsyncConnection[tuple[Any, ...]]) -> None:
            await conn.execute(
                "DELETE FROM key4u_conversations WHERE updated_at < %s "
                f"AND (lease_until IS NULL OR lease_until < {_NOW})",
                (time.time() - self.max_age,),
            )
            await conn.execute(
                "DELETE FROM key4u_conversations WHERE id IN (SELECT id FROM key4u_conversations "
                "ORDER BY updated_at DESC OFFSET %s)",
                (self.max_conversations,),
            )
            await conn.execute("DELETE FROM key4u_usage WHERE at < %s", (time.time() - USAGE_KEPT_DAYS * 86400,))

        await self._run("prune old conversations", prune)

    async def usage(self, since: float) -> list[UsageRow]:
        async def read(conn: AsyncConnection[tuple[Any, ...]]) -> list[UsageRow]:
            cursor = await conn.execute(
                "SELECT to_char(to_timestamp(at) AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, model, count(*), "
                "sum(input_tokens), sum(output_tokens), sum(cached_tokens), sum(reasoning_tokens), sum(cost_usd), "
                "count(*) FILTER (WHERE cost_usd IS NULL) FROM key4u_usage WHERE at >= %s "
                "GROUP BY day, model ORDER BY day DESC, model",
                (since,),
            )
            return [
                UsageRow(day, model, int(n), int(i), int(o), int(c), int(r), cost, int(unpriced))
                for day, model, n, i, o, c, r, cost, unpriced in await cursor.fetchall()
            ]

        return await self._run("read the usage ledger", read)

    async def count(self) -> int:
        async def read(conn: AsyncConnection[tuple[Any, ...]]) -> int:
            row = await (await conn.execute("SELECT count(*) FROM key4u_conversations")).fetchone()
            return int(row[0]) if row is not None else 0

        return await self._run("count conversations", read)

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


class _Unclaimable(Exception):
    """A won claim on a row that does not read: rolled back."""


def _is_database_error(exc: BaseException) -> bool:
    try:
        import psycopg
        from psycopg_pool import PoolTimeout
    except ImportError:
        return False
    return isinstance(exc, (psycopg.Error, PoolTimeout, OSError))


__all__ = ["SCHEMA_VERSION", "PostgresStore"]
