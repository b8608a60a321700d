"""Jobs under a failing store: the run's result still reaches the caller, told what was not kept."""

from __future__ import annotations

import sqlite3
import time
from functools import partialmethod
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from server.bridge.conversation import Conversation, Options
from server.bridge.jobs import Jobs
from server.bridge.loop import Loop, Offer
from server.errors import StoreError
from server.standin import Faults, StandIn
from server.store.memory import MemoryStore
from server.store.sqlite import SQLiteStore
from server.upstream.model import Message, ModelRequest, ModelResponse, OnEvent
from tests.helpers import ScriptedModel, bridge_client, settings_for, text_of

pytestmark = pytest.mark.anyio


class Slow(ScriptedModel):
    async def respond(self, request: ModelRequest, on_event: OnEvent | None = None) -> ModelResponse:
        await anyio.sleep(0.5)  # long enough for a renewal (every lease/3) to fail
        return await super().respond(request, on_event)


class FullDisk(MemoryStore):
    """A store whose writes fail once the conversation exists, as a full disk or a read-only file would."""

    full = False

    async def put(self, conversation: Conversation, *, owner: str | None = None, release: bool = False) -> bool:
        if not self.full:
            return await super().put(conversation, owner=owner, release=release)
        raise StoreError("the conversation database /tmp/x could not be read or written: disk full", path="/tmp/x")

    async def renew(self, conversation_id: str, owner: str, lease: float) -> bool:
        raise StoreError("locked", path="/tmp/x")


async def test_a_failing_final_save_is_told_and_a_failing_renewal_does_not_stop_the_work() -> None:
    store = FullDisk()
    conv = Conversation(options=Options(model="m"))
    conv.items.append(Message(role="user", text="hi"))
    await store.create(conv, "me", 0.6)
    store.full = True
    async with anyio.create_task_group() as tg:
        jobs = Jobs(store, tg, "me", lease=0.6)
        assert conv.id not in jobs.running

        job = jobs.start(conv, lambda job: Loop(Slow("the answer"), Offer()))
        with anyio.fail_after(10):
            await job.done.wait()
        assert conv.id not in jobs.running
    assert conv.status == "completed" and conv.text == "the answer"
    assert any("could not be saved, so it cannot be continued" in n and "disk full" in n for n in conv.notes)


class LockedThenBroken(MemoryStore):
    """A store whose final save first meets a lock, then fails in a way no store error describes (a bug)."""

    saves = 0

    async def put(self, conversation: Conversation, *, owner: str | None = None, release: bool = False) -> bool:
        self.saves += 1
        if self.saves == 1:
            raise StoreError("locked", path="/tmp/x", busy=True)
        raise RuntimeError("a bug in the store")


async def test_a_background_save_that_crashes_gives_the_conversation_up_and_not_the_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = LockedThenBroken()
    conv = Conversation(options=Options(model="m"))
    conv.items.append(Message(role="user", text="hi"))
    async with anyio.create_task_group() as tg:  # the server's: it must not see the crash
        jobs = Jobs(store, tg, "me", lease=30)
        job = jobs.start(conv, lambda job: Loop(ScriptedModel("the answer"), Offer()))
        with anyio.fail_after(10):
            await job.done.wait()
            assert conv.id in jobs.running and any("database is busy" in n for n in conv.notes)
            while conv.id in jobs.running:  # tried again after a second, then given up
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert store.saves == 2 and conv.text == "the answer"
    assert "could not be saved, and is lost: a bug in the store" in caplog.text


async def test_a_final_save_another_process_locks_out_is_made_once_the_lock_is_gone(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds the database longer than a save waits: the caller gets the answer at once, and the
    conversation is saved in the background as soon as the lock is gone (not silently lost)."""
    monkeypatch.setattr(SQLiteStore, "__init__", partialmethod(SQLiteStore.__init__, timeout=0.3))
    db = tmp_path / "shared.sqlite3"
    standin.faults = Faults(latency=1.0)
    released = anyio.Event()

    def hold_the_lock() -> None:
        time.sleep(0.4)  # after the run's first write, before its last
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        time.sleep(2.0)
        other.execute("COMMIT")
        other.close()

    async with bridge_client(settings_for(standin.base_url, tmp_path, db_path=db, api_style="responses")) as client:
        result = None
        async with anyio.create_task_group() as tg:

            async def locker() -> None:
                await anyio.to_thread.run_sync(hold_the_lock)
                released.set()

            tg.start_soon(locker)
            result = await client.call_tool("key4u_respond", {"prompt": "hello", "tools": []})
        assert result is not None
        answer = result.structured_content or {}
        assert answer["status"] == "completed" and any("database is busy" in n for n in answer["notes"]), answer
        assert released.is_set()
        reader = SQLiteStore(db)
        with anyio.fail_after(15):  # written first as running (claimed), then, once the lock is gone, finished
            while (stored := await reader.get(answer["conversation_id"])) is None or stored.owner is not None:
                await anyio.sleep(0.2)
        assert stored.conversation.status == "completed" and stored.conversation.text == answer["text"]
        assert not any("busy" in n for n in stored.conversation.notes)
        await reader.aclose()
        more = await client.call_tool("key4u_respond", {"conversation_id": answer["conversation_id"], "prompt": "more"})
        assert (more.structured_content or {})["status"] == "completed", text_of(more)
