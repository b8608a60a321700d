"""Jobs under a failing store: the run's result still reaches the caller, told what was not kept."""

from __future__ import annotations

import anyio
import pytest

from server.bridge.conversation import Conversation, Options
from server.bridge.jobs import Jobs
from server.bridge.loop import Loop, Offer
from server.errors import StoreError
from server.store.memory import MemoryStore
from server.upstream.model import Message, ModelRequest, ModelResponse, OnEvent
from tests.helpers import ScriptedModel

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
