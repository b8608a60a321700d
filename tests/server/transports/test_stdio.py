"""The installed console script as a real stdio process, as MCP hosts run it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import StdioServerParameters

from tests.conftest import FAKE_KEY
from tests.helpers import BIN, INITIALIZE, REPO, raw_session, script, spawned, stdio_exchange

pytestmark = pytest.mark.anyio


async def test_console_script_lists_and_calls_tools(tmp_path: Path) -> None:
    params = StdioServerParameters(command=script(), env={"KEY4U_API_KEY": FAKE_KEY, "KEY4U_LOG_LEVEL": "DEBUG"})
    async with spawned(params, tmp_path / "err.txt") as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"current_time", "system_info", "math_calculator", "random_generator"} <= names
        result = await client.call_tool("math_calculator", {"operation": "add", "a": 123.5, "b": 456.7})
        assert result.structured_content["result"] == 580.2  # type: ignore[index]
        bad = await client.call_tool("random_generator", {"count": 50})
        assert bad.is_error
    assert FAKE_KEY not in (tmp_path / "err.txt").read_text()


async def test_claude_config_entry_starts_the_server(tmp_path: Path) -> None:
    entry: dict[str, Any] = json.loads((REPO / "claude_config.json").read_text())["mcpServers"]["key4u"]
    command = shutil.which(entry["command"], path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert command, f"{entry['command']} is not on PATH"
    params = StdioServerParameters(command=command, args=entry["args"], env=entry["env"])
    async with spawned(params, tmp_path / "err.txt") as client:
        result = await client.call_tool("current_time", {"timezone": "UTC"})
        assert result.structured_content["utc_offset"] == "+00:00"  # type: ignore[index]
    assert entry["env"]["KEY4U_API_KEY"] not in (tmp_path / "err.txt").read_text()


async def test_stdout_carries_only_protocol_messages_and_stdin_eof_exits_cleanly(tmp_path: Path) -> None:
    session = raw_session(
        INITIALIZE,
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "system_info", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "math_calculator", "arguments": {}}},
    )
    env = {**os.environ, "KEY4U_LOG_LEVEL": "DEBUG", "KEY4U_API_KEY": FAKE_KEY}
    errlog = tmp_path / "err.txt"
    messages = await stdio_exchange(session, env, errlog, until=lambda got: len(got) >= 4)
    assert all(m.get("jsonrpc") == "2.0" for m in messages)
    by_id = {m["id"]: m for m in messages if "id" in m}
    assert set(by_id) == {1, 2, 3, 4}
    assert by_id[4]["result"]["isError"] is True
    stderr = errlog.read_bytes()
    assert b"stdin closed" in stderr
    assert FAKE_KEY.encode() not in json.dumps(messages).encode() + stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signals_stop_the_server_cleanly(signum: signal.Signals) -> None:
    async with await anyio.open_process([script()], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        await proc.stdin.send(raw_session(INITIALIZE))
        with anyio.fail_after(30):
            assert b'"id":1' in await proc.stdout.receive()  # serving
        proc.send_signal(signum)
        with anyio.fail_after(15):
            assert await proc.wait() == 0


def test_version_and_help() -> None:
    version = subprocess.run([script(), "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.startswith("key4u-mcp ")
    usage = subprocess.run([script(), "--help"], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 0 and "--log-level" in usage.stdout and "stdio" in usage.stdout


def test_invalid_setting_is_named_without_echoing_the_key() -> None:
    env = {**os.environ, "KEY4U_BASE_URL": "ftp://nowhere", "KEY4U_API_KEY": FAKE_KEY}
    done = subprocess.run([script()], capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert "KEY4U_BASE_URL" in done.stderr and "http(s) URL" in done.stderr
    assert done.stdout == ""
    assert FAKE_KEY not in done.stderr


async def test_key4u_respond_over_stdio_against_a_real_upstream(tmp_path: Path) -> None:
    from server.cli.demo import KEY4U_PROMPT
    from server.standin import StandIn

    with StandIn() as upstream:
        env = {
            "KEY4U_API_KEY": FAKE_KEY,
            "KEY4U_BASE_URL": upstream.base_url,
            "KEY4U_LOG_LEVEL": "DEBUG",
            "KEY4U_DB_PATH": str(tmp_path / "db.sqlite3"),
        }
        params = StdioServerParameters(command=script(), env=env)
        async with spawned(params, tmp_path / "err.txt") as client:
            result = await client.call_tool("key4u_respond", {"prompt": KEY4U_PROMPT})
            assert result.structured_content is not None
            assert result.structured_content["status"] == "completed"
            assert len(result.structured_content["tool_calls"]) == 4
            assert "580.2" in result.content[0].text  # type: ignore[union-attr]
    assert len(upstream.requests) == 2
    assert FAKE_KEY not in (tmp_path / "err.txt").read_text() + result.model_dump_json()


def test_a_broken_servers_file_stops_start_up_with_its_path(tmp_path: Path) -> None:
    broken = tmp_path / "servers.json"
    broken.write_text('{"mcpServers": {"x": {}}}')
    env = {**os.environ, "KEY4U_MCP_SERVERS": str(broken)}
    done = subprocess.run([script()], capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and str(broken) in done.stderr and "either command" in done.stderr


def _requests_then_eof(*extra: dict[str, Any]) -> bytes:
    return raw_session(
        INITIALIZE,
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "math_calculator", "arguments": {}}},
        *extra,
    )


@pytest.mark.parametrize("last", ["tools/call", "ping", "unterminated"])
def test_requests_written_just_before_the_input_ends_are_all_answered(last: str) -> None:
    """A script that writes its requests and closes its end at once (``printf '...' | key4u-mcp``)."""
    add = {"name": "math_calculator", "arguments": {"operation": "add", "a": 2, "b": 3}}
    final = (
        {"jsonrpc": "2.0", "id": 3, "method": "ping"}
        if last == "ping"
        else {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": add}
    )
    session = raw_session(
        INITIALIZE,
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": [1]}},  # a hostile id
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": add},
        final,
    )
    if last == "unterminated":
        session = session.rstrip(b"\n")
    for _ in range(3):  # the end of input races the replies: each run must win it
        done = subprocess.run([script()], input=session, capture_output=True, timeout=60)
        replies = [json.loads(line) for line in done.stdout.splitlines()]
        assert done.returncode == 0 and [r.get("id") for r in replies] == [1, 2, 3], done.stderr[-2000:]
        assert "error" not in replies[-1]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
def test_the_pipes_are_left_blocking_for_whoever_shares_them(tmp_path: Path) -> None:
    """A wrapper that runs more after the server, on the same stdin and stdout, finds them as it left them."""
    probe = f'{sys.executable} -c "import os; print(os.get_blocking(0), os.get_blocking(1))"'
    done = subprocess.run(
        ["sh", "-c", f'"{script()}"; {probe}'], input=_requests_then_eof(), capture_output=True, timeout=60
    )
    lines = done.stdout.decode().splitlines()
    assert done.returncode == 0 and lines[-1] == "True True", done.stdout[-2000:]
    assert {json.loads(line)["id"] for line in lines[:-1]} == {1, 2, 3}
