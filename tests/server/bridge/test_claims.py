"""Conversations shared by server processes on one database: claims and leases, through real stdio servers."""

from __future__ import annotations

import os
import signal
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from server.standin import Faults, StandIn
from server.store.sqlite import SQLiteStore
from server.upstream.model import Message
from tests.conftest import FAKE_KEY
from tests.helpers import script, spawned

pytestmark = pytest.mark.anyio


def server_env(standin: StandIn, db: Path, **extra: str) -> dict[str, str]:
    return {
        "KEY4U_API_KEY": FAKE_KEY,
        "KEY4U_BASE_URL": standin.base_url,
        "KEY4U_DB_PATH": str(db),
        "KEY4U_MAX_RETRIES": "0",
        "PATH": os.environ.get("PATH", ""),
        **extra,
    }


def server(env: dict[str, str], errlog: Path) -> AbstractAsyncContextManager[Client]:
    return spawned(StdioServerParameters(command=script(), env=env), errlog)


async def respond(client: Client, **arguments: Any) -> tuple[bool, dict[str, Any], str]:
    result = await client.call_tool("key4u_respond", arguments)
    text = "\n".join(getattr(block, "text", "") for block in result.content)
    return result.is_error, result.structured_content or {}, text


async def test_two_servers_racing_to_continue_one_conversation_run_it_once(standin: StandIn, tmp_path: Path) -> None:
    env = server_env(standin, tmp_path / "shared.sqlite3")
    async with server(env, tmp_path / "a.txt") as a, server(env, tmp_path / "b.txt") as b:
        is_error, first, _ = await respond(a, prompt="hello", tools=[])
        assert not is_error and first["status"] == "completed"
        conversation_id = first["conversation_id"]
        standin.faults = Faults(latency=1.0)  # both continuations reach the store while one runs
        requests_before = len(standin.requests)
        outcomes: list[tuple[bool, dict[str, Any], str]] = []

        async def go(client: Client) -> None:
            outcomes.append(await respond(client, conversation_id=conversation_id, prompt="and again"))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(go, a)
                tg.start_soon(go, b)
    ran = [o for o in outcomes if not o[0]]
    refused = [o for o in outcomes if o[0]]
    assert len(ran) == 1 and len(refused) == 1, outcomes
    assert ran[0][1]["status"] == "completed" and ran[0][1]["turns"] == 2
    assert "running in another server process" in refused[0][2]
    assert len(standin.requests) == requests_before + 1  # the gateway saw one continuation, not two
    store = SQLiteStore(tmp_path / "shared.sqlite3")
    stored = await store.get(conversation_id)
    await store.aclose()
    assert stored is not None and stored.owner is None and stored.conversation.turns == 2
    users = [i.text for i in stored.conversation.items if isinstance(i, Message) and i.role == "user"]
    assert users == ["hello", "and again"]


async def test_a_conversation_of_a_killed_server_is_continued_once_its_lease_expires(
    standin: StandIn, tmp_path: Path
) -> None:
    db = tmp_path / "shared.sqlite3"
    env = server_env(standin, db, KEY4U_CLAIM_LEASE="2", KEY4U_DEADLINE="0.5")
    standin.faults = Faults(latency=60.0)  # the first server is mid-turn when it dies
    async with server(env, tmp_path / "killed.txt") as doomed:
        is_error, started, _ = await respond(doomed, prompt="hello", tools=[])
        assert not is_error and started["status"] == "in_progress"
        conversation_id = started["conversation_id"]
        store = SQLiteStore(db)
        stored = await store.get(conversation_id)
        assert stored is not None and stored.owner is not None
        owner_pid = int(stored.owner.split(":")[1])
        os.kill(owner_pid, signal.SIGKILL)
    killed_at = time.time()
    stored = await store.get(conversation_id)
    assert stored is not None and stored.held_by_other("", time.time())  # the dead owner's lease still runs
    standin.faults = Faults()
    async with server(env, tmp_path / "restarted.txt") as restarted:
        with anyio.fail_after(10):
            while (stored := await store.get(conversation_id)) and stored.held_by_other("", time.time()):
                await anyio.sleep(0.1)
        assert time.time() - killed_at < 8  # seconds, not minutes
        # Asking for it resumes the interrupted turn: the work the dead server started is not lost.
        is_error, resumed, _ = await respond(restarted, conversation_id=conversation_id)
        with anyio.fail_after(20):
            while not is_error and resumed["status"] == "in_progress":
                is_error, resumed, _ = await respond(restarted, conversation_id=conversation_id)
        assert not is_error and resumed["status"] == "completed", resumed
        assert "You asked: hello" in resumed["text"]
        is_error, continued, _ = await respond(restarted, conversation_id=conversation_id, prompt="go on")
        assert not is_error and continued["status"] == "completed", continued
    await store.aclose()


async def test_waiting_for_a_conversation_another_server_runs_answers_when_it_is_done(
    standin: StandIn, tmp_path: Path
) -> None:
    db = tmp_path / "shared.sqlite3"
    standin.faults = Faults(latency=3.0)
    quick = server_env(standin, db, KEY4U_DEADLINE="1")
    async with server(quick, tmp_path / "a.txt") as a, server(server_env(standin, db), tmp_path / "b.txt") as b:
        is_error, started, _ = await respond(a, prompt="hello", tools=[])
        assert not is_error and started["status"] == "in_progress"
        began = time.monotonic()
        is_error, waited, _ = await respond(b, conversation_id=started["conversation_id"])
        took = time.monotonic() - began
    assert not is_error and waited["status"] == "completed", waited  # not sent back to poll at once
    assert "You asked: hello" in waited["text"] and 1.0 < took < 10
    assert len(standin.requests) == 1  # run once, by the server that started it
