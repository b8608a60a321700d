"""A conversation is stored as a head and append-only parts: a save writes what the history gained,
and a read by a process that has seen the conversation reads only what was added since."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from server.bridge.conversation import Conversation, Options, ToolCallTrace
from server.store.base import ConversationStore
from server.store.memory import MemoryStore
from server.store.parts import PartsCache
from server.store.postgres import PostgresStore
from server.store.sqlite import SQLiteStore
from server.upstream.model import FunctionCall, FunctionOutput, Message

pytestmark = pytest.mark.anyio


def grow(conv: Conversation, turns: int) -> None:
    """Add ``turns`` turns to the history: a prompt, a call, its output and an answer, with a trace."""
    for _ in range(turns):
        n = len(conv.items)
        conv.items += [
            Message(role="user", text=f"prompt {n}"),
            FunctionCall(call_id=f"c{n}", name="math_calculator", arguments='{"expression": "2+2"}'),
            FunctionOutput(call_id=f"c{n}", output="4"),
            Message(role="assistant", text=f"answer {n}"),
        ]
        conv.tool_calls.append(
            ToolCallTrace(
                turn=conv.turns, call_id=f"c{n}", name="math_calculator", arguments={}, ok=True, ms=1, started_ms=0
            )
        )
        conv.turns, conv.api = conv.turns + 1, "chat"


def same(a: Conversation, b: Conversation) -> bool:
    return a.model_dump(exclude={"updated_at"}) == b.model_dump(exclude={"updated_at"})


class Inserts:
    """Counts the rows written to ``conversation_parts``, by a trigger in the database file itself."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with sqlite3.connect(path) as db:
            db.executescript(
                "CREATE TABLE IF NOT EXISTS part_inserts (n INTEGER); INSERT INTO part_inserts VALUES (0);"
                "CREATE TRIGGER IF NOT EXISTS counted AFTER INSERT ON conversation_parts "
                "BEGIN UPDATE part_inserts SET n = n + 1; END;"
            )
        db.close()

    def count(self) -> int:
        with sqlite3.connect(self.path) as db:
            n = int(db.execute("SELECT n FROM part_inserts").fetchone()[0])
        db.close()
        return n


@pytest.fixture(params=["sqlite", "memory", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ConversationStore]:
    made: ConversationStore
    if request.param == "postgres":
        made = PostgresStore(request.getfixturevalue("pg_url"))
    else:
        made = SQLiteStore(tmp_path / "c.sqlite3") if request.param == "sqlite" else MemoryStore()
    yield made
    await made.aclose()


@pytest.fixture(params=["sqlite", "postgres"])
def two_processes(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], ConversationStore]:
    """Stores as two processes open one database: each call a new store on the same file or database."""
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        return lambda: PostgresStore(url)
    return lambda: SQLiteStore(tmp_path / "shared.sqlite3")


async def test_a_conversation_saved_and_continued_many_times_reads_back_whole(store: ConversationStore) -> None:
    conv = Conversation(options=Options(model="gpt-4.1"))
    await store.create(conv, "me", 30)
    for _ in range(12):
        claimed = await store.claim(conv.id, "me", 30)
        assert claimed is not None and same(claimed, conv)
        grow(claimed, 2)
        claimed.text = f"after {claimed.turns} turns"
        await store.put(claimed)
        conv = claimed
    stored = await store.get(conv.id)
    assert stored is not None and same(stored.conversation, conv)
    assert len(stored.conversation.items) == 96 and len(stored.conversation.tool_calls) == 24


async def test_a_save_writes_only_the_parts_the_history_gained(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    store = SQLiteStore(path)
    conv = Conversation(options=Options(model="gpt-4.1"))
    grow(conv, 50)
    await store.create(conv, "me", 30)
    inserts = Inserts(path)
    for _ in range(3):
        grow(conv, 1)
        await store.put(conv)
    assert inserts.count() == 3 * 5  # four items and one trace per turn, not the 200 before them
    reader = SQLiteStore(path)  # another process sees every part
    stored = await reader.get(conv.id)
    assert stored is not None and same(stored.conversation, conv)
    await reader.aclose()
    await store.aclose()


async def test_a_process_that_has_seen_a_conversation_reads_only_what_another_added(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    first, second = SQLiteStore(path), SQLiteStore(path)
    conv = Conversation(options=Options(model="gpt-4.1"))
    grow(conv, 10)
    await first.create(conv, "a", 30)
    await first.release(conv.id, "a")
    theirs = await second.claim(conv.id, "b", 30)
    assert theirs is not None
    grow(theirs, 3)
    await second.put(theirs)
    await second.release(conv.id, "b")
    with sqlite3.connect(path) as db:  # the first 40 items now read wrong if read again: they must not be
        db.execute("UPDATE conversation_parts SET data = '{}' WHERE kind = 0 AND seq < 40")
    db.close()
    ours = await first.claim(conv.id, "a", 30)
    assert ours is not None and same(ours, theirs)
    await first.aclose()
    await second.aclose()


async def test_a_conversation_rewritten_elsewhere_is_read_whole_again(
    two_processes: Callable[[], ConversationStore],
) -> None:
    first, second = two_processes(), two_processes()
    conv = Conversation(options=Options(model="gpt-4.1"))
    grow(conv, 4)
    await first.put(conv)
    other = Conversation.model_validate(conv.model_dump())  # not read from a store: saved whole, anew
    other.items = other.items[:2]
    await second.put(other)
    stored = await first.get(conv.id)
    assert stored is not None and len(stored.conversation.items) == 2
    conv.items.append(Message(role="user", text="more"))  # a save from the old state is not appended
    await first.put(conv)
    again = await second.get(conv.id)
    assert again is not None and same(again.conversation, conv)
    await first.aclose()
    await second.aclose()


async def test_a_conversation_with_a_part_missing_is_ignored_not_half_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.sqlite3"
    store = SQLiteStore(path)
    conv = Conversation(options=Options(model="gpt-4.1"))
    grow(conv, 3)
    await store.put(conv)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM conversation_parts WHERE kind = 0 AND seq = 5")
    db.close()
    fresh = SQLiteStore(path)
    assert await fresh.get(conv.id) is None
    assert await fresh.claim(conv.id, "me", 30) is None
    assert any("parts missing" in r.getMessage() for r in caplog.records)
    await fresh.aclose()
    await store.aclose()


async def test_a_whole_document_row_of_an_older_version_is_saved_as_parts_next_time(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conv = Conversation(options=Options(model="gpt-4.1"), status="completed")
    grow(conv, 3)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE conversations (id TEXT PRIMARY KEY, updated_at REAL NOT NULL, data TEXT NOT NULL)")
        db.execute("INSERT INTO conversations VALUES (?, ?, ?)", (conv.id, conv.updated_at, conv.model_dump_json()))
    db.close()
    store = SQLiteStore(path)
    loaded = await store.claim(conv.id, "me", 30)
    assert loaded is not None and same(loaded, conv)
    assert [(i.id, i.title) for i in await store.list()] == [(conv.id, "prompt 0")]
    grow(loaded, 1)
    await store.put(loaded)
    with sqlite3.connect(path) as db:
        parts = db.execute("SELECT COUNT(*) FROM conversation_parts").fetchone()[0]
        head = db.execute("SELECT data FROM conversations").fetchone()[0]
    db.close()
    assert parts == 16 + 4 and '"items"' not in head
    again = SQLiteStore(path)
    stored = await again.get(conv.id)
    assert stored is not None and same(stored.conversation, loaded)
    await again.aclose()
    await store.aclose()


async def test_pruned_conversations_take_their_parts_with_them(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    store = SQLiteStore(path, max_conversations=2)
    for _ in range(5):
        conv = Conversation(options=Options(model="gpt-4.1"))
        grow(conv, 2)
        await store.put(conv)
    await store.prune()
    with sqlite3.connect(path) as db:
        owners = {r[0] for r in db.execute("SELECT DISTINCT conversation_id FROM conversation_parts")}
        ids = {r[0] for r in db.execute("SELECT id FROM conversations")}
    db.close()
    assert len(ids) == 2 and owners == ids
    await store.aclose()


def test_the_parts_cache_keeps_the_most_recently_used_conversations_only() -> None:
    cache = PartsCache(max_entries=3)
    convs = [Conversation(options=Options(model="m"), text=str(n)) for n in range(5)]
    for conv in convs[:3]:
        cache.put(conv, 1, 10)
    assert cache.get(convs[0].id, 1) is not None  # used again: now the most recent
    for conv in convs[3:]:
        cache.put(conv, 1, 10)
    kept = [c.text for c in convs if cache.get(c.id, 1) is not None]
    assert kept == ["0", "3", "4"]
    assert cache.size(convs[1].id) == 0 and cache.size(convs[4].id) == 10
