"""Replicas sharing one PostgreSQL (``KEY4U_DB_URL``), against a real server the suite starts: a
conversation started on one replica is polled, continued and resumed on another; a replica killed
mid-turn gives its conversation up by lease expiry; two never run one conversation at once; a
database that is down, refuses the password or was migrated by a newer version is a clear error
naming KEY4U_DB_URL with the password masked, and the local tools are served all the same."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from mcp import Client
from pydantic import SecretStr

from server.bridge.conversation import Conversation, Options
from server.cli.demo import KEY4U_PROMPT
from server.config import Settings
from server.standin import Faults, StandIn
from server.store.postgres import SCHEMA_VERSION, PostgresStore
from server.upstream.model import Message
from tests.conftest import FAKE_KEY
from tests.helpers import INITIALIZE, bridge_client, raw_session, script, settings_for, text_of
from tests.pg import PASSWORD, PostgresServer

pytestmark = pytest.mark.anyio


def replica(standin: StandIn, tmp_path: Path, url: str, **overrides: Any) -> Settings:
    """A replica's settings: its own directory (no shared SQLite file to fall back on), the shared database."""
    home = tmp_path / f"replica-{len(list(tmp_path.glob('replica-*')))}"
    home.mkdir()
    return settings_for(standin.base_url, home, db_url=url, **overrides)


async def respond(client: Client, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool("key4u_respond", arguments)
    assert result.structured_content is not None, text_of(result)
    return result.structured_content


async def test_a_conversation_started_on_one_replica_is_polled_and_continued_on_another(
    standin: StandIn, tmp_path: Path, pg_url: str
) -> None:
    standin.faults = Faults(latency=0.6)
    a_settings = replica(standin, tmp_path, pg_url, deadline=0.2)
    b_settings = replica(standin, tmp_path, pg_url, deadline=0.2)
    async with bridge_client(a_settings) as a, bridge_client(b_settings) as b:
        started = await respond(a, prompt=KEY4U_PROMPT)
        conversation = started["conversation_id"]
        assert started["status"] == "in_progress"
        polled = await respond(b, conversation_id=conversation)  # A runs it: B waits its deadline, does not take it
        assert polled["status"] == "in_progress" and any("another server process" in n for n in polled["notes"])
        with anyio.fail_after(30):
            while (done := await respond(b, conversation_id=conversation))["status"] == "in_progress":
                await anyio.sleep(0.2)
        assert done["status"] == "completed" and "580.2" in done["text"]
        standin.faults = Faults()
        more = await respond(b, conversation_id=conversation, prompt="Calculate 6 * 7")  # B continues it
        assert more["status"] == "completed" and "42" in more["text"]
        seen = await respond(a, conversation_id=conversation)  # and A sees B's turn
    assert seen["text"] == more["text"] and seen["turns"] == 4
    replay = json.dumps(standin.requests[-1]["input"])
    assert "580.2" in replay and "Calculate 6 * 7" in replay  # B sent the whole history A wrote


async def test_a_replica_killed_mid_turn_gives_its_conversation_up_by_lease_expiry(
    standin: StandIn, tmp_path: Path, pg_url: str
) -> None:
    standin.faults = Faults(latency=60)  # the model never answers while A lives
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEY4U_", "OPENAI_"))}
    env |= {
        "KEY4U_API_KEY": FAKE_KEY,
        "KEY4U_BASE_URL": standin.base_url,
        "KEY4U_DB_URL": pg_url,
        "KEY4U_CLAIM_LEASE": "3",
        "KEY4U_DEADLINE": "0.5",
    }
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "key4u_respond", "arguments": {}}}
    call["params"]["arguments"] = {"prompt": "hello"}
    session = raw_session(INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"}, call)
    async with await anyio.open_process(
        [script()], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    ) as a:
        assert a.stdin is not None and a.stdout is not None
        await a.stdin.send(session)
        received = b""
        with anyio.fail_after(30):  # the answer at A's deadline: in_progress, with the conversation id
            while b'"id":2' not in received or not received.endswith(b"\n"):
                received += await a.stdout.receive()
        a.kill()  # mid-turn: no release, no final save
        await a.wait()
    started = next(m for m in map(json.loads, received.decode().splitlines()) if m.get("id") == 2)
    started = started["result"]["structuredContent"]
    assert started["status"] == "in_progress"
    standin.faults = Faults()
    async with bridge_client(replica(standin, tmp_path, pg_url, deadline=0.5)) as b:
        held = await respond(b, conversation_id=started["conversation_id"])
        assert held["status"] == "in_progress"  # A's lease still runs past B's deadline
    async with bridge_client(replica(standin, tmp_path, pg_url)) as b:
        # Waited for until A's lease lapses, then taken over and resumed, in the one call.
        resumed = await respond(b, conversation_id=started["conversation_id"])
    assert resumed["status"] == "completed", resumed
    assert resumed["text"].startswith("[offline stand-in, not a model]")


async def test_two_replicas_never_run_one_conversation_at_once(standin: StandIn, tmp_path: Path, pg_url: str) -> None:
    async with (
        bridge_client(replica(standin, tmp_path, pg_url)) as a,
        bridge_client(replica(standin, tmp_path, pg_url)) as b,
    ):
        first = await respond(a, prompt="hello")
        standin.faults = Faults(latency=0.5)
        before = len(standin.requests)
        outcomes: list[Any] = []

        async def go_on(client: Client) -> None:
            result = await client.call_tool(
                "key4u_respond", {"conversation_id": first["conversation_id"], "prompt": "and then?"}
            )
            outcomes.append(result)

        async with anyio.create_task_group() as tg:
            tg.start_soon(go_on, a)
            tg.start_soon(go_on, b)
    ran = [r for r in outcomes if not r.is_error]
    refused = [r for r in outcomes if r.is_error]
    assert len(ran) == 1 and len(refused) == 1, [text_of(r) for r in outcomes]
    assert "running in another server process" in text_of(refused[0])
    assert len(standin.requests) - before == 1  # one turn, by one replica


async def test_two_replicas_starting_at_once_create_the_schema_once(pg_url: str) -> None:
    stores = [PostgresStore(pg_url) for _ in range(4)]
    try:
        async with anyio.create_task_group() as tg:
            for store in stores:
                tg.start_soon(store.count)
        with psycopg.connect(pg_url) as conn:
            versions = conn.execute("SELECT version FROM key4u_schema").fetchall()
        assert versions == [(SCHEMA_VERSION,)]
    finally:
        for store in stores:
            await store.aclose()


async def test_a_database_that_is_down_is_a_clear_error_and_the_local_tools_still_work(
    standin: StandIn, tmp_path: Path, postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    closed = f"postgresql://key4u:{PASSWORD}@127.0.0.1:9/nothing"  # nothing listens on port 9
    async with bridge_client(replica(standin, tmp_path, closed)) as client:
        local = await client.call_tool("math_calculator", {"operation": "add", "a": 1, "b": 2})
        assert not local.is_error and "3" in text_of(local)
        failed = await client.call_tool("key4u_respond", {"prompt": "hello"})
        again = await client.call_tool("current_time", {})
    text = text_of(failed)
    assert failed.is_error and "KEY4U_DB_URL=postgresql://key4u:***@127.0.0.1:9/nothing" in text
    assert "could not connect" in text and not again.is_error
    assert PASSWORD not in text + caplog.text
    assert not standin.requests  # nothing was sent upstream for a conversation that could not be kept


async def test_wrong_credentials_are_named_with_the_password_masked(
    standin: StandIn, tmp_path: Path, postgres_server: PostgresServer, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = pg_url.replace(PASSWORD, "not-the-password")
    async with bridge_client(replica(standin, tmp_path, wrong)) as client:
        failed = await client.call_tool("key4u_respond", {"prompt": "hello"})
    assert failed.is_error and "password authentication failed" in text_of(failed)
    assert "not-the-password" not in text_of(failed) + caplog.text and "key4u:***@" in text_of(failed)


async def test_a_schema_from_a_newer_version_is_refused_untouched(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE key4u_schema (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO key4u_schema VALUES (%s)", (SCHEMA_VERSION + 1,))
    store = PostgresStore(pg_url)
    try:
        with pytest.raises(Exception, match=r"schema version \d+, written by a newer key4u-mcp") as raised:
            await store.get("conv_x")
        assert "upgrade key4u-mcp" in str(raised.value) and PASSWORD not in str(raised.value)
    finally:
        await store.aclose()
    with psycopg.connect(pg_url) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'key4u_%'").fetchone()
    assert tables == (1,)  # only the version table: nothing was created beside a newer schema


async def test_connections_cut_mid_run_are_replaced_and_a_closed_database_is_reported(pg_url: str) -> None:
    store = PostgresStore(pg_url, timeout=2.0)
    name = pg_url.rsplit("/", 1)[1]
    admin = pg_url.rsplit("/", 1)[0] + "/postgres"
    try:
        conv = Conversation(options=Options(model="gpt-4.1"), text="kept")
        await store.put(conv)
        with psycopg.connect(admin, autocommit=True) as conn:  # the server drops every connection to it
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        stored = await store.get(conv.id)  # the pool checks, and connects again
        assert stored is not None and stored.conversation.text == "kept"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')  # type: ignore[arg-type]
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        with pytest.raises(Exception, match="KEY4U_DB_URL=postgresql://key4u:\\*\\*\\*@") as raised:
            await store.get(conv.id)
        assert PASSWORD not in str(raised.value)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')  # type: ignore[arg-type]
        with anyio.fail_after(20):
            while True:  # back: the next call works (the pool connects again)
                try:
                    stored = await store.get(conv.id)
                    break
                except Exception:
                    await anyio.sleep(0.2)
        assert stored is not None and stored.conversation.text == "kept"
    finally:
        await store.aclose()


async def test_the_usage_ledger_and_pruning(standin: StandIn, tmp_path: Path, pg_url: str) -> None:
    async with bridge_client(replica(standin, tmp_path, pg_url)) as client:
        await respond(client, prompt=KEY4U_PROMPT)
        usage = await client.call_tool("key4u_usage", {"days": 1})
    assert "2 turns" in text_of(usage) and "gpt-4.1" in text_of(usage)
    store = PostgresStore(pg_url, max_conversations=2)
    try:
        for n in range(4):
            await store.put(Conversation(options=Options(model="gpt-4.1"), text=str(n)))
        await store.prune()
        assert await store.count() == 2
        running = Conversation(options=Options(model="gpt-4.1"), text="still running")
        await store.create(running, "me", 30)  # claimed: a run holds it, and it is the oldest once more come
        for n in range(2):
            await store.put(Conversation(options=Options(model="gpt-4.1"), text=f"later {n}"))
        await store.prune()
        assert await store.count() == 3 and await store.renew(running.id, "me", 30)
        rows = await store.usage(0)
        assert sum(r.turns for r in rows) == 2  # the ledger outlives the pruned conversation
    finally:
        await store.aclose()


def test_the_database_url_is_a_secret(tmp_path: Path) -> None:
    settings = Settings(db_url=SecretStr(f"postgresql://u:{PASSWORD}@db.example/x"))
    assert PASSWORD in settings.secrets()
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings.model_dump())
    done = subprocess.run(
        [sys.executable, "-m", "server", "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KEY4U_DB_URL": f"postgresql://u:{PASSWORD}@db.example/x"},
        cwd=tmp_path,
        check=False,
    )
    assert PASSWORD not in done.stdout + done.stderr


async def test_a_save_appends_only_what_the_history_gained(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    try:
        conv = Conversation(options=Options(model="gpt-4.1"))
        conv.items = [Message(role="user", text=f"prompt {n}") for n in range(50)]
        await store.create(conv, "me", 30)
        with psycopg.connect(pg_url) as conn:
            xmin_before = conn.execute("SELECT xmin::text::bigint FROM key4u_parts WHERE seq = 0").fetchone()
        for n in range(3):
            conv.items.append(Message(role="assistant", text=f"answer {n}"))
            await store.put(conv)
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute("SELECT seq FROM key4u_parts ORDER BY seq").fetchall()
            xmin_after = conn.execute("SELECT xmin::text::bigint FROM key4u_parts WHERE seq = 0").fetchone()
        assert [r[0] for r in rows] == list(range(53))
        assert xmin_after == xmin_before  # the first part was never written again
        reader = PostgresStore(pg_url)  # another replica reads it whole
        stored = await reader.get(conv.id)
        await reader.aclose()
        assert stored is not None and [i.model_dump() for i in stored.conversation.items] == [
            i.model_dump() for i in conv.items
        ]
    finally:
        await store.aclose()


def test_doctor_checks_the_store(tmp_path: Path, pg_url: str, standin: StandIn) -> None:
    def doctor(url: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KEY4U_", "OPENAI_"))}
        env |= {"KEY4U_API_KEY": FAKE_KEY, "KEY4U_BASE_URL": standin.base_url, "KEY4U_DB_URL": url}
        return subprocess.run([script(), "doctor"], capture_output=True, text=True, timeout=120, env=env, check=False)

    good = doctor(pg_url)
    assert "conversation store" in good.stdout and "0 conversation(s)" in good.stdout, good.stdout
    bad = doctor(f"postgresql://key4u:{PASSWORD}@127.0.0.1:9/nothing")
    assert bad.returncode != 0 and "KEY4U_DB_URL=postgresql://key4u:***@127.0.0.1:9/nothing" in bad.stdout
    assert PASSWORD not in bad.stdout + bad.stderr + good.stdout + good.stderr
