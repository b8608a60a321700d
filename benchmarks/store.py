"""What the conversation store adds to a call: the saves and claims of the Key4U example, in memory, in
SQLite and in a real PostgreSQL on loopback, measured side by side in one run.

A new example call makes, in the store: ``create`` (saved claimed, with the prompt) and the final
``put`` that frees the claim (two turns, four calls and outputs, the answer; a call shorter than a
third of the lease renews nothing); continuing it with a prompt makes ``claim``, a ``put`` of the new
prompt and the final ``put``. The memory store
(JSON in a dict, no I/O) is the floor: the figure is each database's median minus the memory store's,
paired by round.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.common import Row, Spread, spread
from server.bridge.conversation import Conversation, Options, ToolCallTrace, TurnUsage
from server.cli.demo import KEY4U_PROMPT
from server.store.base import ConversationStore
from server.store.memory import MemoryStore
from server.store.sqlite import SQLiteStore
from server.upstream.model import FunctionCall, FunctionOutput, Message
from tests.pg import PostgresServer, binaries, start_server

OWNER = "bench:1:0"


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the run, as the tests start one (it must be installed)."""
    if binaries() is None:
        raise RuntimeError("PostgreSQL's server is not installed: apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="key4u-bench-pg-"))
    server = start_server(root, durable=True)
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def example(n: int) -> Conversation:
    """The Key4U example's conversation after its two turns, as a call leaves it."""
    conv = Conversation(options=Options(model="gpt-4.1"))
    conv.items.append(Message(role="user", text=KEY4U_PROMPT))
    names = ["current_time", "system_info", "math_calculator", "random_generator"]
    for i, name in enumerate(names):
        conv.items.append(FunctionCall(call_id=f"call_{n}_{i}", name=name, arguments='{"a": 123.5, "b": 456.7}'))
    for i, name in enumerate(names):
        output = f"{name}: {'x' * 300}"
        conv.items.append(FunctionOutput(call_id=f"call_{n}_{i}", output=output))
        conv.tool_calls.append(
            ToolCallTrace(turn=1, call_id=f"call_{n}_{i}", name=name, arguments={}, ok=True, ms=1.0, started_ms=0.0)
        )
    conv.items.append(Message(role="assistant", text="Results of 4 tool call(s): " + "y" * 600))
    conv.status, conv.text, conv.turns = "completed", "done", 2
    conv.run_turns = [TurnUsage(turn=t, model="gpt-4.1", at=time.time(), input_tokens=800) for t in (1, 2)]
    return conv


async def _one_call(store: ConversationStore, n: int) -> tuple[float, float]:
    """Milliseconds the store takes for a new example call, and for a continuation of it, making the
    calls the bridge makes (``server.bridge.service`` and ``jobs``)."""
    conv = example(n)
    items, traces, turns = conv.items, conv.tool_calls, conv.run_turns
    conv.items, conv.tool_calls, conv.run_turns, conv.status = items[:1], [], [], "in_progress"
    started = time.perf_counter()
    await store.create(conv, OWNER, 15)  # saved claimed, with the prompt
    conv.items, conv.tool_calls, conv.run_turns, conv.status = items, traces, turns, "completed"  # the run's work
    assert await store.put(conv, owner=OWNER, release=True)  # the run's end, and the claim freed
    new = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    claimed = await store.claim(conv.id, OWNER, 15)  # a follow-up prompt: claimed at once
    assert claimed is not None
    claimed.items.append(Message(role="user", text="and then?"))
    assert await store.put(claimed, owner=OWNER)  # saved running, with the new prompt
    claimed.items.append(Message(role="assistant", text="z" * 400))
    claimed.turns += 1
    assert await store.put(claimed, owner=OWNER, release=True)
    return new, (time.perf_counter() - started) * 1000


async def store(tmp: Path, rounds: int = 300) -> list[Row]:
    """Added time per example call from each store, against the memory store, paired by round."""
    with postgres_server() as server:
        stores: dict[str, ConversationStore] = {
            "memory": MemoryStore(max_conversations=10_000),
            "SQLite": SQLiteStore(tmp / "store-bench.sqlite3", max_conversations=10_000),
            "PostgreSQL": _postgres(server.create_database("store_bench")),
        }
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in stores}
        commit = await _durable_commit_ms(server.create_database("commit_floor"))
        try:
            for n in range(rounds + 20):
                for name, kept in stores.items():  # interleaved: each round measures all three
                    took = await _one_call(kept, n)
                    if n >= 20:  # the first rounds warm connections and caches
                        times[name].append(took)
        finally:
            for kept in stores.values():
                await kept.aclose()
    rows: list[Row] = []
    floor = times["memory"]
    for name in ("SQLite", "PostgreSQL"):
        added_new = spread([a[0] - b[0] for a, b in zip(times[name], floor, strict=True)])
        added_more = spread([a[1] - b[1] for a, b in zip(times[name], floor, strict=True)])
        rows.append(
            Row(
                f"Store: time a {name} store adds to one Key4U example call",
                f"{added_new.median:.2f} ms new, {added_more.median:.2f} ms continued",
                "≤ 2 ms at the median",
                added_new.median <= 2 and added_more.median <= 2,
                f"new call (create, final put) {spread([t[0] for t in times[name]]).fmt()}; "
                f"continuation (claim, put, final put) {spread([t[1] for t in times[name]]).fmt()}; memory "
                f"store {spread([t[0] for t in floor]).fmt()} and {spread([t[1] for t in floor]).fmt()}"
                + (
                    "; PostgreSQL with its defaults (fsync, synchronous commit: every commit waits for the disk) "
                    f"on loopback; for scale, one durable one-row commit through psycopg alone takes {commit.fmt()}"
                    if name == "PostgreSQL"
                    else "; SQLite in WAL mode, synchronous=NORMAL"
                ),
            )
        )
    return rows


async def _durable_commit_ms(url: str, rounds: int = 200) -> Spread:
    """The floor of a durable write: BEGIN, one INSERT, COMMIT waiting for the disk, through psycopg."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE floor (n INTEGER)")
        times: list[float] = []
        for n in range(rounds):
            started = time.perf_counter()
            async with conn.transaction():
                await conn.execute("INSERT INTO floor VALUES (%s)", (n,))
            times.append((time.perf_counter() - started) * 1000)
    return spread(times[20:])


def _postgres(url: str) -> ConversationStore:
    from server.store.postgres import PostgresStore

    return PostgresStore(url, max_conversations=10_000)
