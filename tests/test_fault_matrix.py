"""The fault matrix: each row a misbehaving upstream, model, tool or client, against the server
as MCP hosts run it (a spawned stdio process) with the stand-in as the gateway.

For every row: the expected result, the server still answering the next call, nothing left
running (no request in flight at the stand-in, no stray child process), and the API key in
no output. ``RELIABILITY.md`` is written from this file's results (``python -m benchmarks.reliability``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from server.cli.demo import KEY4U_PROMPT
from server.standin import Faults, StandIn, http_date
from tests.conftest import FAKE_KEY
from tests.helpers import INITIALIZE, raw_session, script, text_of

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Harness:
    client: Client
    upstream: StandIn
    errlog: Path
    pid: int
    database: Path
    children: set[int] = field(default_factory=set)


def _server_pid(parent: int) -> int:
    (child,) = [p for p in psutil.Process(parent).children() if "key4u-mcp" in " ".join(p.cmdline())]
    return child.pid


@pytest.fixture(scope="module")
async def harness(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    tmp = tmp_path_factory.mktemp("matrix")
    servers = tmp / "servers.json"
    servers.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "fx": {
                        "command": sys.executable,
                        "cwd": str(REPO),
                        "args": ["-m", "tests.fixtures.downstream_server"],
                    }
                }
            }
        )
    )
    with StandIn() as upstream:
        env = {
            "KEY4U_API_KEY": FAKE_KEY,
            "KEY4U_BASE_URL": upstream.base_url,
            "KEY4U_LOG_LEVEL": "DEBUG",
            "KEY4U_DB_PATH": str(tmp / "db.sqlite3"),
            "KEY4U_MCP_SERVERS": str(servers),
            "KEY4U_MAX_RETRIES": "1",
            "KEY4U_RETRY_MAX_WAIT": "5",
            "KEY4U_TOOL_TIMEOUT": "2",
            "KEY4U_DEADLINE": "40",
            "KEY4U_TIMEOUT": "4",
            "KEY4U_MAX_REPLY_BYTES": str(1024 * 1024),
        }
        errlog = tmp / "stderr.txt"
        with errlog.open("w") as err:
            params = StdioServerParameters(command=script(), env=env)
            async with Client(stdio_client(params, errlog=err), mode="legacy") as client:
                pid = _server_pid(os.getpid())
                await client.call_tool("key4u_respond", {"prompt": "warm up", "tools": []})
                children = {c.pid for c in psutil.Process(pid).children(recursive=True)}
                yield Harness(client, upstream, errlog, pid, tmp / "db.sqlite3", children)


async def call(h: Harness, **arguments: Any) -> tuple[dict[str, Any], str, bool]:
    result = await h.client.call_tool("key4u_respond", arguments)
    return result.structured_content or {}, text_of(result), bool(result.is_error)


async def check_recovered(h: Harness, outputs: str) -> None:
    """The server answers the next call, nothing is left running, and the key is nowhere."""
    h.upstream.faults = Faults()
    out, _, is_error = await call(h, prompt="Calculate 1 + 1", tools=["math_calculator"])
    assert not is_error and out["status"] == "completed", out
    with anyio.fail_after(10):
        while h.upstream.state.active:
            await anyio.sleep(0.02)
    assert {c.pid for c in psutil.Process(h.pid).children(recursive=True)} <= h.children | _downstream_pids(h)
    assert FAKE_KEY not in outputs + h.errlog.read_text()


def _downstream_pids(h: Harness) -> set[int]:
    # A downstream server restarted after a crash or hang has a new pid; it is still the one child.
    return {c.pid for c in psutil.Process(h.pid).children() if "downstream_server" in " ".join(c.cmdline())}


# (row id, faults, key4u_respond arguments, expected status, fragment of the text, upstream requests)
UPSTREAM_ROWS: list[tuple[str, Faults, dict[str, Any], str, str, int | None]] = [
    ("401", Faults(status=401), {}, "failed", "HTTP 401", 1),
    ("403", Faults(status=403), {}, "failed", "HTTP 403", 1),
    ("404 route", Faults(status=404), {}, "failed", "/v1/responses", 1),
    (
        "400 with message",
        Faults(status=400, error_message="Unsupported parameter: 'reasoning.effort'"),
        {},
        "failed",
        "Unsupported parameter: 'reasoning.effort'",
        1,
    ),
    ("429 Retry-After seconds", Faults(status=429, retry_after="0.2", fail_requests=set()), {}, "completed", "", 2),
    ("429 retry-after-ms", Faults(status=429, retry_after_ms="150", fail_requests=set()), {}, "completed", "", 2),
    ("429 Retry-After HTTP date", Faults(status=429, fail_requests=set()), {}, "completed", "", 2),
    ("429 Retry-After too long", Faults(status=429, retry_after="3600"), {}, "failed", "rate limited", 1),
    (
        "quota 429",
        Faults(status=429, error_code="insufficient_quota", error_message="You exceeded your current quota"),
        {},
        "failed",
        "quota",
        1,
    ),
    ("500", Faults(status=500), {}, "failed", "HTTP 500", 2),
    ("502", Faults(status=502), {}, "failed", "HTTP 502", 2),
    ("503", Faults(status=503), {}, "failed", "HTTP 503", 2),
    ("reset mid-stream", Faults(reset_stream_after=3), {}, "failed", "closed mid-reply", 1),
    ("stream without terminal event", Faults(cut_stream_after=3), {}, "failed", "without a terminal event", 1),
    (": PING and [DONE]", Faults(ping=True, done_marker=True, no_event_lines=True), {}, "completed", "", 1),
    ("malformed JSON", Faults(malformed_json=True), {}, "failed", "not JSON", 1),
    ("200 with an error object", Faults(ok_with_error=True), {}, "failed", "bad_response_body", 1),
    ("error event mid-stream", Faults(error_event_after=2), {}, "failed", "stream error", 1),
    (
        "incomplete with truncated arguments",
        Faults(response_status="incomplete"),
        {"prompt": "Calculate 2 + 3"},
        "incomplete",
        "not run",
        1,
    ),
    ("failed response", Faults(response_status="failed"), {}, "failed", "response failed", 1),
    ("renamed model", Faults(model_alias="gpt-4.1-2025-04-14"), {}, "completed", "model gpt-4.1-2025-04-14", 1),
]


@pytest.mark.parametrize(
    ("faults", "arguments", "status", "fragment", "requests"),
    [r[1:] for r in UPSTREAM_ROWS],
    ids=[r[0] for r in UPSTREAM_ROWS],
)
async def test_upstream_fault(
    harness: Harness, faults: Faults, arguments: dict[str, Any], status: str, fragment: str, requests: int | None
) -> None:
    h = harness
    before = h.upstream.state.count
    if faults.fail_requests is not None:
        faults.fail_requests = {before + 1}
        if faults.status == 429 and faults.retry_after is None and faults.retry_after_ms is None:
            faults.retry_after = http_date(1)
    h.upstream.faults = faults
    out, text, is_error = await call(h, **({"prompt": "hello", "tools": ["math_calculator"]} | arguments))
    assert out.get("status") == status, text
    assert is_error == (status == "failed")
    assert fragment in text
    if requests is not None:
        assert h.upstream.state.count - before == requests
    await check_recovered(h, text + json.dumps(out))


# Hostile replies and schemas: each is cleaned, bounded or refused; the key is nowhere, including the
# transcript resource and the database file.
CATASTROPHIC = {
    "name": "check",
    "description": "checks s",
    "inputSchema": {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}},
}
REMOTE_REF = {
    "name": "fetchy",
    "description": "its schema points elsewhere",
    "inputSchema": {"type": "object", "properties": {"n": {"$ref": "http://10.255.255.1/never.json"}}},
}
DEEP = '{"a": ' + "[" * 300 + "]" * 300 + "}"
HOSTILE_ROWS: list[tuple[str, Faults, dict[str, Any], str, str]] = [
    ("a lone surrogate in the answer", Faults(answer_text="bad \ud800 text"), {}, "completed", "bad \ufffd text"),
    (
        "a lone surrogate in call arguments",
        Faults(bad_arguments='{"operation": "add\\ud800", "a": 1, "b": 2}'),
        {"prompt": "Calculate 2 + 3", "tools": ["math_calculator"]},
        "completed",
        "unknown operation 'add\ufffd'",
    ),
    (
        "arguments nested 300 deep",
        Faults(bad_arguments=DEEP),
        {"prompt": "Calculate 2 + 3", "tools": ["math_calculator"]},
        "completed",
        "nest deeper than 64",
    ),
    (
        "the key echoed in answer and model",
        Faults(answer_text=f"key {FAKE_KEY}", model_alias=FAKE_KEY),
        {},
        "completed",
        "key ***",
    ),
    (
        "the key across the error preview cut",
        Faults(status=400, error_message="x" * 480 + FAKE_KEY),
        {},
        "failed",
        "HTTP 400",
    ),
    (
        "two calls sharing one id",
        Faults(same_call_ids=True),
        {"prompt": KEY4U_PROMPT, "tools": ["current_time", "system_info", "math_calculator", "random_generator"]},
        "failed",
        "share the id",
    ),
    ("fractional token counts", Faults(usage_tokens=12.5), {}, "completed", "in 12"),
    ("only keep-alive comments", Faults(stall_after=2), {}, "failed", "no event for 4 s"),
    ("a reply over the size limit", Faults(answer_text="x" * 2_000_000), {}, "failed", "larger than 1048576 bytes"),
    (
        "a caller schema with a catastrophic pattern",
        Faults(bad_arguments=json.dumps({"s": "a" * 40_000 + "b"})),
        {"prompt": "check it", "tools": [], "functions": [CATASTROPHIC]},
        "completed",
        "does not match",
    ),
    (
        "a caller schema with a remote $ref",
        Faults(),
        {"prompt": "fetchy please", "tools": [], "functions": [REMOTE_REF]},
        "requires_action",
        "fetchy",
    ),
]


@pytest.mark.parametrize(
    ("faults", "arguments", "status", "fragment"), [r[1:] for r in HOSTILE_ROWS], ids=[r[0] for r in HOSTILE_ROWS]
)
async def test_hostile_input(
    harness: Harness, faults: Faults, arguments: dict[str, Any], status: str, fragment: str
) -> None:
    h = harness
    h.upstream.faults = faults
    with anyio.fail_after(30):
        out, text, _ = await call(h, **({"prompt": "hello", "tools": ["math_calculator"]} | arguments))
    assert out.get("status") == status, text
    outputs = " ".join(c["output"] for c in out.get("tool_calls", [])) + " " + text
    assert fragment in outputs, outputs
    seen = text + json.dumps(out)
    if out.get("transcript"):
        resource = await h.client.read_resource(out["transcript"])
        seen += json.dumps(resource.model_dump(mode="json"))
    await check_recovered(h, seen)
    assert FAKE_KEY.encode() not in h.database.read_bytes()


# Model and tool misbehaviour: the call's output tells the model; the conversation goes on.
MODEL_ROWS: list[tuple[str, Faults, dict[str, Any], str, str]] = [
    (
        "invalid argument JSON",
        Faults(bad_arguments="{oops"),
        {"prompt": "Calculate 2 + 3", "tools": ["math_calculator"]},
        "completed",
        "not valid JSON",
    ),
    (
        "arguments that violate the schema",
        Faults(bad_arguments='{"operation": 5, "a": "x"}'),
        {"prompt": "Calculate 2 + 3", "tools": ["math_calculator"]},
        "completed",
        "invalid arguments",
    ),
    (
        "unknown tool",
        Faults(call_unknown_tool="rm_rf"),
        {"prompt": "hello", "tools": []},
        "completed",
        "no tool named 'rm_rf'",
    ),
    (
        "a tool that raises",
        Faults(),
        {"prompt": "explode it", "tools": ["fx__explode"]},
        "completed",
        "Error: Error executing tool explode",
    ),
    ("a tool that hangs", Faults(), {"prompt": "hang it", "tools": ["fx__hang"]}, "completed", "did not"),
    (
        "a runaway loop",
        Faults(tool_call_loop=True),
        {"prompt": "Calculate 2 + 3", "tools": ["math_calculator"], "max_turns": 3},
        "incomplete",
        "max_turns=3",
    ),
]


@pytest.mark.parametrize(
    ("faults", "arguments", "status", "fragment"), [r[1:] for r in MODEL_ROWS], ids=[r[0] for r in MODEL_ROWS]
)
async def test_model_or_tool_fault(
    harness: Harness, faults: Faults, arguments: dict[str, Any], status: str, fragment: str
) -> None:
    h = harness
    h.upstream.faults = faults
    with anyio.fail_after(30):
        out, text, _ = await call(h, **arguments)
    assert out["status"] == status, text
    outputs = " ".join(c["output"] for c in out["tool_calls"]) + " " + text
    assert fragment in outputs
    await check_recovered(h, text + json.dumps(out))


async def test_client_cancel_mid_turn(harness: Harness) -> None:
    h = harness
    h.upstream.faults = Faults(first_byte_delay=30)
    with anyio.move_on_after(1):
        await call(h, prompt="hello", tools=[])
    with anyio.fail_after(10):  # the bridge dropped the upstream request
        while h.upstream.state.active:
            await anyio.sleep(0.02)
    await check_recovered(h, "")


async def test_connection_refused(tmp_path: Path) -> None:
    with StandIn() as gone:
        url = gone.base_url
    env = {
        "KEY4U_API_KEY": FAKE_KEY,
        "KEY4U_BASE_URL": url,
        "KEY4U_DB_PATH": str(tmp_path / "db"),
        "KEY4U_MAX_RETRIES": "1",
    }
    with (tmp_path / "err").open("w") as err:
        async with Client(
            stdio_client(StdioServerParameters(command=script(), env=env), errlog=err), mode="legacy"
        ) as client:
            result = await client.call_tool("key4u_respond", {"prompt": "hello"})
            after = await client.call_tool("math_calculator", {"operation": "add", "a": 1, "b": 1})
    assert result.is_error and "could not reach the gateway" in text_of(result)
    assert not after.is_error
    assert FAKE_KEY not in text_of(result) + (tmp_path / "err").read_text()


async def _respond_with_database(tmp_path: Path, database: Path) -> tuple[str, str, bool, bool, str]:
    """key4u_respond twice and a local tool, against a server whose database is ``database``."""
    with StandIn() as upstream:
        env = {"KEY4U_API_KEY": FAKE_KEY, "KEY4U_BASE_URL": upstream.base_url, "KEY4U_DB_PATH": str(database)}
        with (tmp_path / "err").open("w") as err:
            params = StdioServerParameters(command=script(), env=env)
            async with Client(stdio_client(params, errlog=err), mode="legacy") as client:
                first = await client.call_tool("key4u_respond", {"prompt": "hello", "tools": []})
                second = await client.call_tool("key4u_respond", {"prompt": "again", "tools": []})
                local = await client.call_tool("math_calculator", {"operation": "add", "a": 1, "b": 1})
    stderr = (tmp_path / "err").read_text()
    assert FAKE_KEY not in text_of(first) + text_of(second) + stderr
    return text_of(first), text_of(second), bool(first.is_error), bool(local.is_error), stderr


async def test_an_unusable_database_is_a_clear_error_and_the_local_tools_still_work(tmp_path: Path) -> None:
    (tmp_path / "not-a-file").mkdir()
    first, second, is_error, local_error, _ = await _respond_with_database(tmp_path, tmp_path / "not-a-file")
    assert is_error and str(tmp_path / "not-a-file") in first and "KEY4U_DB_PATH" in first
    assert "KEY4U_DB_PATH" in second and not local_error  # the next call is answered, clearly, again


async def test_a_corrupt_database_is_moved_aside_with_the_users_knowledge(tmp_path: Path) -> None:
    database = tmp_path / "conversations.sqlite3"
    database.write_bytes(b"this is not a database" * 100)
    first, second, is_error, local_error, stderr = await _respond_with_database(tmp_path, database)
    assert not is_error and "was corrupt; it was moved to" in first and "corrupt" not in second
    moved = [p for p in os.listdir(tmp_path) if p.startswith("conversations.sqlite3.corrupt-")]
    assert len(moved) == 1 and (tmp_path / moved[0]).read_bytes().startswith(b"this is not a database")
    assert "corrupt" in stderr and not local_error


async def test_stdin_closed_mid_call(tmp_path: Path) -> None:
    with StandIn() as upstream:
        upstream.faults = Faults(first_byte_delay=30)
        env = {
            **os.environ,
            "KEY4U_API_KEY": FAKE_KEY,
            "KEY4U_BASE_URL": upstream.base_url,
            "KEY4U_DB_PATH": str(tmp_path / "db"),
        }
        async with await anyio.open_process(
            [script()], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        ) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            call_msg = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "key4u_respond", "arguments": {"prompt": "hello"}},
            }
            await proc.stdin.send(
                raw_session(INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"}, call_msg)
            )
            with anyio.fail_after(30):
                while not upstream.state.active:  # the call reached the gateway
                    await anyio.sleep(0.02)
            await proc.stdin.aclose()
            with anyio.fail_after(15):
                assert await proc.wait() == 0
        with anyio.fail_after(10):
            while upstream.state.active:  # and its upstream request ended with it
                await anyio.sleep(0.02)


async def test_a_64_mib_request_line(tmp_path: Path) -> None:
    env = {**os.environ, "KEY4U_DB_PATH": str(tmp_path / "db")}
    huge = (
        b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"math_calculator","arguments":'
        b'{"operation":"' + b"x" * (64 * 1024 * 1024) + b'"}}}\n'
    )
    after = raw_session(
        {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/call",
            "params": {"name": "math_calculator", "arguments": {"operation": "add", "a": 1, "b": 2}},
        }
    )
    async with await anyio.open_process(
        [script()], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        await proc.stdin.send(raw_session(INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"}))
        await proc.stdin.send(huge)
        await proc.stdin.send(after)
        received = b""
        with anyio.fail_after(60):
            while b'"id":3' not in received:
                received += await proc.stdout.receive()
            peak = psutil.Process(proc.pid).memory_info().rss
            await proc.stdin.aclose()
            assert await proc.wait() == 0
        stderr = b"".join([chunk async for chunk in proc.stderr])
    assert b"1 + 2 = 3" in received and b'"id":2' not in received
    assert b"discarded a message" in stderr
    assert peak < 400 * 1024 * 1024  # the 64 MiB line was never held whole, let alone parsed
