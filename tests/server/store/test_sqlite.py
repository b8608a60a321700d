"""What only the SQLite store does: a file that survives reopening, bounds, older files, other processes."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from server.bridge.conversation import Conversation, Options
from server.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


def conv(text: str = "") -> Conversation:
    return Conversation(options=Options(model="gpt-4.1"), text=text)


async def test_conversations_survive_reopening_and_no_file_is_made_until_needed(tmp_path: Path) -> None:
    path = tmp_path / "state" / "conversations.sqlite3"
    store = SQLiteStore(path)
    assert not path.exists()
    saved = conv("hello")
    await store.put(saved)
    await store.aclose()
    again = SQLiteStore(path)
    loaded = await again.get(saved.id)
    assert loaded is not None and loaded.conversation.text == "hello"
    assert loaded.conversation.options.model == "gpt-4.1"
    assert await again.get("conv_missing") is None
    await again.aclose()


async def test_the_store_is_bounded_in_count_and_age(tmp_path: Path) -> None:
    path = tmp_path / "db"
    store = SQLiteStore(path, max_conversations=5, max_age_days=1)
    old = conv("old")
    await store.put(old)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (time.time() - 3 * 86400, old.id))
    for i in range(8):
        await store.put(conv(str(i)))
    await store.prune()
    assert await store.get(old.id) is None
    assert await store.count() == 5
    await store.aclose()


async def test_a_running_conversation_outlives_the_count_bound(tmp_path: Path) -> None:
    path = tmp_path / "db"
    running, other = SQLiteStore(path, max_conversations=2), SQLiteStore(path, max_conversations=2)
    long_run = conv("still running")
    await running.create(long_run, "me", 30)  # claimed: a run in this process holds it
    for i in range(4):
        await other.put(conv(str(i)))  # newer ones, from another process
    await other.prune()
    assert await other.count() == 3  # the newest two, and the one still running
    assert await running.renew(long_run.id, "me", 30)
    await running.release(long_run.id, "me")
    await other.prune()  # no longer running: the bound applies to it
    assert await other.get(long_run.id) is None and await other.count() == 2
    await running.aclose()
    await other.aclose()


async def test_a_file_from_before_claims_is_upgraded_and_its_conversations_kept(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    saved = conv("from an older release")
    saved.status = "completed"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE conversations (id TEXT PRIMARY KEY, updated_at REAL NOT NULL, data TEXT NOT NULL)")
        db.execute("INSERT INTO conversations VALUES (?, ?, ?)", (saved.id, time.time(), saved.model_dump_json()))
    store = SQLiteStore(path)
    loaded = await store.get(saved.id)
    assert loaded is not None and loaded.conversation.text == "from an older release" and loaded.owner is None
    assert [(i.id, i.status) for i in await store.list()] == [(saved.id, "completed")]
    assert await store.claim(saved.id, "me", 5) is not None
    await store.aclose()


async def test_two_stores_on_one_file_race_for_a_claim_and_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    first, second = SQLiteStore(path), SQLiteStore(path)
    saved = conv()
    await first.put(saved)
    results = [await first.claim(saved.id, "a", 30), await second.claim(saved.id, "b", 30)]
    assert [r is not None for r in results] == [True, False]
    stored = await second.get(saved.id)
    assert stored is not None and stored.held_by_other("b", time.time())
    await first.aclose()
    await second.aclose()
