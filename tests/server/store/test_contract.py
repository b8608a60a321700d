"""The ``ConversationStore`` contract, run against every implementation."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from server.bridge.conversation import Conversation, Options
from server.store.base import ConversationStore
from server.store.memory import MemoryStore
from server.store.postgres import PostgresStore
from server.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", "memory", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ConversationStore]:
    made: ConversationStore
    if request.param == "postgres":
        made = PostgresStore(request.getfixturevalue("pg_url"))
    else:
        made = SQLiteStore(tmp_path / "c.sqlite3") if request.param == "sqlite" else MemoryStore()
    yield made
    await made.aclose()


def conv(text: str = "") -> Conversation:
    return Conversation(options=Options(model="gpt-4.1"), text=text)


async def test_a_saved_conversation_reads_back_as_a_copy(store: ConversationStore) -> None:
    saved = conv("hello")
    await store.put(saved)
    saved.text = "changed after saving"
    stored = await store.get(saved.id)
    assert stored is not None and stored.conversation.text == "hello" and stored.owner is None
    assert await store.get("conv_missing") is None


async def test_a_claim_is_exclusive_until_released(store: ConversationStore) -> None:
    saved = conv()
    await store.create(saved, "a", 30)
    assert await store.claim(saved.id, "b", 30) is None
    assert await store.claim(saved.id, "a", 30) is not None  # the owner may claim again
    await store.release(saved.id, "b")  # not b's to release
    assert await store.claim(saved.id, "b", 30) is None
    await store.release(saved.id, "a")
    claimed = await store.claim(saved.id, "b", 30)
    assert claimed is not None and claimed.id == saved.id


async def test_a_lease_not_renewed_expires_and_then_anyone_may_claim(store: ConversationStore) -> None:
    saved = conv()
    await store.create(saved, "crashed", 0.2)
    assert await store.claim(saved.id, "b", 30) is None
    await anyio.sleep(0.3)
    assert await store.claim(saved.id, "b", 30) is not None
    assert not await store.renew(saved.id, "crashed", 30)  # the old owner has lost it


async def test_renewing_keeps_the_claim(store: ConversationStore) -> None:
    saved = conv()
    await store.create(saved, "a", 0.3)
    for _ in range(3):
        await anyio.sleep(0.15)
        assert await store.renew(saved.id, "a", 0.3)
    assert await store.claim(saved.id, "b", 30) is None


async def test_saving_keeps_the_claim_and_racing_claims_have_one_winner(store: ConversationStore) -> None:
    saved = conv()
    await store.put(saved)
    winners: list[str] = []

    async def race(owner: str) -> None:
        if await store.claim(saved.id, owner, 30) is not None:
            winners.append(owner)

    async with anyio.create_task_group() as tg:
        for owner in "abcdefgh":
            tg.start_soon(race, owner)
    assert len(winners) == 1
    saved.text = "progress"
    await store.put(saved)
    stored = await store.get(saved.id)
    assert stored is not None and stored.owner == winners[0] and stored.held_by_other("z", time.time())


async def test_list_is_newest_first_with_status(store: ConversationStore) -> None:
    first, second = conv("1"), conv("2")
    second.status = "completed"
    await store.put(first)
    await store.put(second)
    listed = await store.list()
    assert [(i.id, i.status) for i in listed] == [(second.id, "completed"), (first.id, "in_progress")]
    assert await store.count() == 2


async def test_a_save_by_an_owner_that_lost_its_claim_writes_nothing(store: ConversationStore) -> None:
    """A run whose lease ran out while another process took the conversation over must not overwrite it."""
    saved = conv("a's start")
    await store.create(saved, "a", 0.2)
    await anyio.sleep(0.3)
    taken = await store.claim(saved.id, "b", 30)
    assert taken is not None
    taken.text = "b's work"
    assert await store.put(taken, owner="b")
    saved.text = "a's late end"
    assert not await store.put(saved, owner="a", release=True)
    stored = await store.get(saved.id)
    assert stored is not None and stored.conversation.text == "b's work" and stored.owner == "b"
    assert await store.put(taken, owner="b", release=True)  # b's last save frees the claim with it
    stored = await store.get(saved.id)
    assert stored is not None and stored.owner is None
    assert not await store.put(saved, owner="a")  # released by b: still not a's to write
    assert await store.put(saved)  # a save that names no owner (an administrator's) is not checked
