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
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from server.bridge.conversation import Conversation
from server.errors import StoreError
from server.logs import mask, masked_url, url_password
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
#: A save's parts and turns, from arrays (one round trip however many), for the conversation in the CTE
#: ``head`` (none when ``head`` is empty: an append that found the row changed writes nothing).
_ADD_PARTS_AND_USAGE = (
    ", parts AS (INSERT INTO key4u_parts (conversation_id, kind, seq, data) SELECT head.id, p.kind, p.seq, p.data "
    "FROM head, unnest(%(kinds)s::smallint[], %(seqs)s::integer[], %(datas)s::text[]) AS p (kind, seq, data)), "
    "usage AS (INSERT INTO key4u_usage (conversation_id, turn, at, model, api, input_tokens, output_tokens, "
    "cached_tokens, reasoning_tokens, cost_usd) SELECT head.id, u.* FROM head, unnest(%(turns)s::integer[], "
    "%(ats)s::double precision[], %(models)s::text[], %(apis)s::text[], %(ins)s::bigint[], %(outs)s::bigint[], "
    "%(cached)s::bigint[], %(reasoning)s::bigint[], %(costs)s::double precision[]) "
    "AS u (turn, at, model, api, i, o, c, r, cost) ON CONFLICT DO NOTHING) "
)
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
        self._unreadable = Unreadable(self.shown)
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

    async def _run(
        self,
        doing: str,
        work: Callable[[AsyncConnection[tuple[Any, ...]]], Awaitable[T]],
        *,
        transaction: bool = True,
    ) -> T:
        """``work`` on a pooled connection, in a transaction (``transaction``; else each statement commits on
        its own); any failure of the database becomes a ``StoreError``. A connection the server
        closed since it was pooled (a restart, an idle timeout) is replaced once, and the work redone: it
        never committed."""
        import psycopg

        pool = await self._open()
        for attempt in (1, 2):
            broken = False
            try:
                async with pool.connection() as conn:
                    try:
                        if not transaction:
                            return await work(conn)
                        async with conn.transaction():
                            return await work(conn)
                    except psycopg.OperationalError:
                        broken = conn.broken or conn.closed
                        raise
            except psycopg.OperationalError as exc:
                if attempt == 1 and broken:
                    continue
                raise self._fault(exc, doing) from None
            except StoreError:
                raise
            except Exception as exc:
                if not _is_database_error(exc):
                    raise
                raise self._fault(exc, doing) from None
        raise AssertionError("unreachable")  # pragma: no cover

    # -- reading ----------------------------------------------------------------------------------------

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
        return self._unreadable.assemble(self._cache, conversation_id, head.data, saved, known, items, traces)

    async def get(self, conversation_id: str) -> Stored | None:
        async def read(conn: AsyncConnection[tuple[Any, ...]]) -> Stored | None:
            # FOR SHARE: no save changes the row (nor rewrites its parts) until both are read.
            row = await (await conn.execute(_HEAD + " FOR SHARE", (conversation_id,))).fetchone()
            if row is None:
                return None
            conv = await self._load(conn, conversation_id, row)
            return Stored(conv, row[1], row[2]) if conv is not None else None

        return await self._run("read a conversation", read)

    # -- writing ----------------------------------------------------------------------------------------

    async def put(self, conversation: Conversation, *, owner: str | None = None, release: bool = False) -> bool:
        return await self._save(conversation, None, owner, release)

    async def create(self, conversation: Conversation, owner: str, lease: float) -> None:
        await self._save(conversation, (owner, lease))

    async def _save(
        self, conv: Conversation, claim: tuple[str, float] | None, owner: str | None = None, release: bool = False
    ) -> bool:
        """Write ``conv``; every commit waits for the disk (PostgreSQL's default). An append, and a new
        conversation, is one statement committed on its own; replacing a row whole is a transaction."""
        conv.updated_at = time.time()
        save = _Save(conv, plan_save(conv, saved_state(conv)), claim, owner, release)
        outcome = await self._run("save a conversation", save.one_statement, transaction=False)
        if isinstance(outcome, Saved) and outcome not in (NOT_OURS, _EXISTS):  # written since: write it whole
            save = _Save(conv, plan_save(conv, None if outcome.generation == 0 else outcome), claim, owner, release)
            outcome = await self._run("save a conversation", save.one_statement, transaction=False)
        if outcome is _EXISTS:  # a whole write onto a row that is there: replace it, in a transaction
            outcome = await self._run("save a conversation", save.replace)
        if outcome is NOT_OURS:
            return False
        cache_saved(self._cache, conv, save.plan)
        self._saves += 1
        if self._saves % _PRUNE_EVERY == 1:
            try:
                await self.prune()
            except StoreError as exc:  # saved all the same; the next prune catches up
                logger.warning("could not prune %s: %s", self.shown, exc)
        return True

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
            # Read after the claim committed: nobody else writes a conversation this owner holds.
            conv = await self._load(conn, conversation_id, row)
            if conv is None:  # a row that no longer reads as a conversation is not claimed either
                await conn.execute(
                    "UPDATE key4u_conversations SET owner = NULL, lease_until = NULL WHERE id = %s AND owner = %s",
                    (conversation_id, owner),
                )
            return conv

        # One statement, committed on its own (waiting for the disk): the claim is what keeps two
        # replicas from running one conversation, so it must outlive a crash of the database.
        return await self._run("claim a conversation", take, transaction=False)

    async def renew(self, conversation_id: str, owner: str, lease: float) -> bool:
        async def extend(conn: AsyncConnection[tuple[Any, ...]]) -> bool:
            cursor = await conn.execute(
                f"UPDATE key4u_conversations SET lease_until = {_NOW} + %s WHERE id = %s AND owner = %s",
                (lease, conversation_id, owner),
            )
            return cursor.rowcount == 1

        return await self._run("renew a claim", extend, transaction=False)

    async def release(self, conversation_id: str, owner: str) -> None:
        async def free(conn: AsyncConnection[tuple[Any, ...]]) -> None:
            await conn.execute(
                "UPDATE key4u_conversations SET owner = NULL, lease_until = NULL WHERE id = %s AND owner = %s",
                (conversation_id, owner),
            )

        await self._run("release a claim", free, transaction=False)

    # -- listings, pruning, the ledger ------------------------------------------------------------------

    async def list(self, limit: int = 50) -> list[ConversationInfo]:
        async def read(conn: AsyncConnection[tuple[Any, ...]]) -> list[ConversationInfo]:
            cursor = await conn.execute(
                "SELECT id, status, title, data FROM key4u_conversations ORDER BY updated_at DESC LIMIT %s", (limit,)
            )
            infos: list[ConversationInfo] = []
            for conversation_id, status, title, data in await cursor.fetchall():
                conv = self._unreadable.parse(conversation_id, lambda data=data: Conversation.model_validate_json(data))
                if conv is not None:
                    infos.append(ConversationInfo.of(conv, row_status(status, conv), title))
            return infos

        return await self._run("list conversations", read, transaction=False)

    async def prune(self) -> None:
        async def prune(conn: AsyncConnection[tuple[Any, ...]]) -> None:
            await conn.execute(
                "DELETE FROM key4u_conversations WHERE updated_at < %s "
                f"AND (lease_until IS NULL OR lease_until < {_NOW})",
                (time.time() - self.max_age,),
            )
            # Past the newest ``max_conversations``, except one still running (its claim is live): its run
            # would find its row gone, take that for another process's takeover, and stop.
            await conn.execute(
                "DELETE FROM key4u_conversations WHERE id IN (SELECT id FROM key4u_conversations "
                "ORDER BY updated_at DESC OFFSET %s) "
                f"AND (lease_until IS NULL OR lease_until < {_NOW})",
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

        return await self._run("read the usage ledger", read, transaction=False)

    async def count(self) -> int:
        async def read(conn: AsyncConnection[tuple[Any, ...]]) -> int:
            row = await (await conn.execute("SELECT count(*) FROM key4u_conversations")).fetchone()
            return int(row[0]) if row is not None else 0

        return await self._run("count conversations", read, transaction=False)

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


#: A whole write found the row there: it is replaced in a transaction instead.
_EXISTS = Saved(-2, -2, -2)


class _Save:
    """The statements of one save: its head (owner-checked when ``owner`` is given), parts and turns."""

    def __init__(
        self, conv: Conversation, plan: Save, claim: tuple[str, float] | None, owner: str | None, release: bool
    ) -> None:
        self.conv, self.plan, self.owner = conv, plan, owner
        # Whose write it may be: anyone's without an owner, else only the claim holder's.
        self.ours: LiteralString = (
            "TRUE" if owner is None else "key4u_conversations.owner IS NOT DISTINCT FROM %(owner)s"
        )
        self.freed: LiteralString = ", owner = NULL, lease_until = NULL" if release else ""
        after = plan.after
        parts = [
            *((ITEM_PART, plan.items_from + n, d) for n, d in enumerate(plan.items)),
            *((TRACE_PART, plan.traces_from + n, d) for n, d in enumerate(plan.traces)),
        ]
        turns = conv.run_turns
        holder, lease = claim if claim is not None else (None, None)
        self.values: dict[str, Any] = {
            "id": conv.id,
            "updated_at": conv.updated_at,
            "data": plan.head,
            "status": conv.status,
            "title": title_of(conv),
            "model": conv.model or conv.options.model,
            "generation": after.generation,
            "items": after.items,
            "traces": after.traces,
            "owner": owner,
            "holder": holder,
            "lease": lease,
            "items_from": plan.items_from,
            "traces_from": plan.traces_from,
            "kinds": [p[0] for p in parts],
            "seqs": [p[1] for p in parts],
            "datas": [p[2] for p in parts],
            "turns": [u.turn for u in turns],
            "ats": [u.at for u in turns],
            "models": [u.model for u in turns],
            "apis": [u.api for u in turns],
            "ins": [u.input_tokens for u in turns],
            "outs": [u.output_tokens for u in turns],
            "cached": [u.cached_tokens for u in turns],
            "reasoning": [u.reasoning_tokens for u in turns],
            "costs": [u.cost_usd for u in turns],
        }

    async def one_statement(self, conn: AsyncConnection[tuple[Any, ...]]) -> Saved | None:
        """An append onto the row as this object last saw it, or a new row: head, parts and turns in one
        statement (the parts and turns are written only if the head was). None when written; else what
        the row holds (``NOT_OURS``: another owner holds it; ``_EXISTS``: a whole write found a row)."""
        if self.plan.rewrite:
            head: LiteralString = (
                "INSERT INTO key4u_conversations (updated_at, data, status, title, model, generation, items, "
                "traces, id, owner, lease_until) VALUES (%(updated_at)s, %(data)s, %(status)s, %(title)s, "
                f"%(model)s, %(generation)s, %(items)s, %(traces)s, %(id)s, %(holder)s, {_NOW} + %(lease)s) "
                "ON CONFLICT (id) DO NOTHING RETURNING id"
            )
        else:
            head = (
                "UPDATE key4u_conversations SET updated_at = %(updated_at)s, data = %(data)s, status = %(status)s, "
                "title = %(title)s, model = %(model)s, generation = %(generation)s, items = %(items)s, "
                f"traces = %(traces)s{self.freed} WHERE id = %(id)s AND generation = %(generation)s "
                f"AND items = %(items_from)s AND traces = %(traces_from)s AND {self.ours} RETURNING id"
            )
        statement = "WITH head AS (" + head + ")" + _ADD_PARTS_AND_USAGE + "SELECT count(*) FROM head"
        row = await (await conn.execute(statement, self.values)).fetchone()
        if row is not None and row[0] == 1:
            return None
        found = await (
            await conn.execute(
                "SELECT generation, items, traces, owner FROM key4u_conversations WHERE id = %s", (self.conv.id,)
            )
        ).fetchone()
        if found is None:
            return Saved(0, 0, 0)
        if self.owner is not None and found[3] != self.owner:
            return NOT_OURS
        return _EXISTS if self.plan.rewrite else Saved(*found[:3])

    async def replace(self, conn: AsyncConnection[tuple[Any, ...]]) -> Saved | None:
        """The row and its parts replaced whole, in the caller's transaction (``NOT_OURS``: not this owner's)."""
        cursor = await conn.execute(
            "UPDATE key4u_conversations SET updated_at = %(updated_at)s, data = %(data)s, status = %(status)s, "
            "title = %(title)s, model = %(model)s, generation = %(generation)s, items = %(items)s, "
            f"traces = %(traces)s{self.freed} WHERE id = %(id)s AND {self.ours} RETURNING id",
            self.values,
        )
        if await cursor.fetchone() is None:
            return NOT_OURS
        await conn.execute("DELETE FROM key4u_parts WHERE conversation_id = %s", (self.conv.id,))
        await conn.execute("WITH head AS (SELECT %(id)s::text AS id)" + _ADD_PARTS_AND_USAGE + "SELECT 1", self.values)
        return None


def _is_database_error(exc: BaseException) -> bool:
    try:
        import psycopg
        from psycopg_pool import PoolTimeout
    except ImportError:
        return False
    return isinstance(exc, (psycopg.Error, PoolTimeout, OSError))


__all__ = ["SCHEMA_VERSION", "PostgresStore"]
