"""Downstream MCP servers through the bridge: a real downstream server over stdio and HTTP,
the stand-in as the remote model, and a real MCP client in front."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from server.standin import StandIn
from server.toolsets.hub import HubConfig, load_hub_config
from server.toolsets.policy import Policy
from tests.helpers import bridge_client, settings_for, text_of

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[3]
FIXTURE = ["-m", "tests.fixtures.downstream_server"]


def stdio_entry(**extra: Any) -> dict[str, Any]:
    return {"command": sys.executable, "args": FIXTURE, "cwd": str(REPO), **extra}


def write_servers(tmp_path: Path, servers: dict[str, Any], **top: Any) -> Path:
    path = tmp_path / "servers.json"
    path.write_text(json.dumps({"mcpServers": servers, **top}))
    return path


async def respond(client: Any, **arguments: Any) -> tuple[dict[str, Any], str]:
    result = await client.call_tool("key4u_respond", arguments)
    assert result.structured_content is not None, text_of(result)
    return result.structured_content, text_of(result)


async def test_the_remote_model_calls_a_downstream_tool_and_uses_its_result(standin: StandIn, tmp_path: Path) -> None:
    servers = write_servers(tmp_path, {"notes": stdio_entry()})
    async with bridge_client(settings_for(standin.base_url, tmp_path, mcp_servers=servers)) as client:
        out, text = await respond(client, prompt='Please echo "hello hub"')
    assert out["status"] == "completed", text
    assert [c["name"] for c in out["tool_calls"]] == ["notes__echo"]
    assert "echo: hello hub" in text
    offered = {t["name"] for t in standin.requests[0]["tools"]}
    assert {"notes__echo", "notes__write_note", "current_time"} <= offered
    assert any(name.startswith("notes__get_pid") for name in offered)  # "get.pid" made valid


async def test_tools_without_a_read_only_annotation_come_back_to_the_caller(standin: StandIn, tmp_path: Path) -> None:
    servers = write_servers(tmp_path, {"notes": stdio_entry()})
    async with bridge_client(settings_for(standin.base_url, tmp_path, mcp_servers=servers)) as client:
        out, _ = await respond(client, prompt='write a note "buy milk"', tools=["notes__write_note"])
        assert out["status"] == "requires_action"
        (pending,) = out["pending_calls"]
        assert pending["name"] == "notes__write_note" and pending["arguments"] == {"text": "buy milk"}
        done, text = await respond(
            client,
            conversation_id=out["conversation_id"],
            function_outputs=[{"call_id": pending["call_id"], "output": "saved by the user"}],
        )
    assert done["status"] == "completed" and "saved by the user" in text


async def test_allow_deny_and_modes(standin: StandIn, tmp_path: Path) -> None:
    servers = write_servers(
        tmp_path,
        {"notes": stdio_entry(deny=["crash", "hang"], modes={"write_note": "run", "echo": "hidden"})},
        localTools={"deny": ["system_info"], "modes": {"math_*": "return"}},
    )
    async with bridge_client(settings_for(standin.base_url, tmp_path, mcp_servers=servers)) as client:
        out, text = await respond(client, prompt='write a note "now" and calculate 1 + 1')
    offered = {t["name"] for t in standin.requests[0]["tools"]}
    assert "notes__crash" not in offered and "notes__hang" not in offered and "notes__echo" not in offered
    assert "system_info" not in offered and "current_time" in offered
    assert [c["name"] for c in out["tool_calls"]] == ["notes__write_note"]  # mode run: the bridge ran it
    assert [p["name"] for p in out["pending_calls"]] == ["math_calculator"]  # mode return


async def test_same_tool_names_on_two_servers_are_kept_apart(standin: StandIn, tmp_path: Path) -> None:
    servers = write_servers(tmp_path, {"one": stdio_entry(), "two": stdio_entry()})
    async with bridge_client(settings_for(standin.base_url, tmp_path, mcp_servers=servers)) as client:
        out, _ = await respond(client, prompt="get the pid", tools=["one__get.pid", "two__get.pid"])
    pids = {c["name"]: c["output"] for c in out["tool_calls"]}
    assert set(pids) == {"one__get.pid", "two__get.pid"}
    assert pids["one__get.pid"] != pids["two__get.pid"]  # two processes, each called by its own name


async def test_a_server_that_never_starts_is_reported_and_the_others_work(standin: StandIn, tmp_path: Path) -> None:
    servers = write_servers(tmp_path, {"ghost": {"command": str(tmp_path / "no-such-binary")}, "notes": stdio_entry()})
    async with bridge_client(settings_for(standin.base_url, tmp_path, mcp_servers=servers)) as client:
        out, text = await respond(client, prompt='echo "still fine"')
    assert "echo: still fine" in text
    assert any("'ghost' is failed" in note for note in out["notes"])


async def test_a_crash_mid_call_is_an_error_output_and_the_server_comes_back(standin: StandIn, tmp_path: Path) -> None:
    servers = write_servers(tmp_path, {"notes": stdio_entry()})
    async with bridge_client(settings_for(standin.base_url, tmp_path, mcp_servers=servers)) as client:
        out, _ = await respond(client, prompt="crash it", tools=["notes__crash"])
        (call,) = out["tool_calls"]
        assert not call["ok"] and "notes__crash" in call["output"]
        with anyio.fail_after(30):
            while True:  # restarted with backoff
                again = await client.call_tool("key4u_respond", {"prompt": 'echo "back"', "tools": ["notes__echo"]})
                if not again.is_error:
                    break
                assert "'notes' is" in text_of(again) and "retried" in text_of(again)
                await anyio.sleep(0.2)
    assert "echo: back" in text_of(again)


async def test_a_hung_tool_times_out_and_the_next_call_works(standin: StandIn, tmp_path: Path) -> None:
    servers = write_servers(tmp_path, {"notes": stdio_entry()})
    settings = settings_for(standin.base_url, tmp_path, mcp_servers=servers, tool_timeout=1.0)
    async with bridge_client(settings) as client:
        with anyio.fail_after(20):
            out, _ = await respond(
                client, prompt="hang please and tell the time", tools=["notes__hang", "current_time"]
            )
        calls = {c["name"]: c for c in out["tool_calls"]}
        assert not calls["notes__hang"]["ok"] and "within" in calls["notes__hang"]["output"]
        assert calls["current_time"]["ok"]


async def test_tool_list_changes_are_picked_up(standin: StandIn, tmp_path: Path) -> None:
    servers = write_servers(tmp_path, {"notes": stdio_entry()})
    async with bridge_client(settings_for(standin.base_url, tmp_path, mcp_servers=servers)) as client:
        await respond(client, prompt="enable the extra tool", tools=["notes__enable_extra"])
        with anyio.fail_after(10):
            while True:
                result = await client.call_tool("key4u_respond", {"prompt": "run extra", "tools": ["notes__extra"]})
                if not result.is_error:
                    break
                await anyio.sleep(0.05)
    assert "extra!" in text_of(result)


async def test_no_downstream_process_outlives_the_bridge(standin: StandIn, tmp_path: Path) -> None:
    servers = write_servers(tmp_path, {"one": stdio_entry(), "two": stdio_entry()})
    async with bridge_client(settings_for(standin.base_url, tmp_path, mcp_servers=servers)) as client:
        out, _ = await respond(client, prompt="get the pid", tools=["one__get.pid", "two__get.pid"])
        pids = [int(c["output"].splitlines()[-1]) for c in out["tool_calls"]]  # each tool says its pid
        assert all(psutil.pid_exists(p) for p in pids)
    with anyio.fail_after(10):
        while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
            await anyio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_downstream() -> Iterator[str]:
    port = free_port()
    with subprocess.Popen([sys.executable, *FIXTURE, "--http", str(port)], cwd=REPO, stderr=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "downstream HTTP server did not start"
                time.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


async def test_a_streamable_http_downstream_server(standin: StandIn, tmp_path: Path, http_downstream: str) -> None:
    servers = write_servers(tmp_path, {"remote": {"url": http_downstream, "headers": {"X-Test": "1"}}})
    async with bridge_client(settings_for(standin.base_url, tmp_path, mcp_servers=servers)) as client:
        out, text = await respond(client, prompt='echo "over http"', tools=["remote__echo"])
    assert "echo: over http" in text and out["tool_calls"][0]["ok"]


def test_config_is_the_claude_desktop_format(tmp_path: Path) -> None:
    path = write_servers(
        tmp_path,
        {
            "fs": {"command": "npx", "args": ["-y", "server-filesystem", "/tmp"]},
            "web": {"url": "https://example.test/mcp", "headers": {"Authorization": "Bearer x"}},
        },
    )
    config, where = load_hub_config(path)
    assert where == path and set(config.servers) == {"fs", "web"}
    with pytest.raises(ValueError, match="either command"):
        HubConfig.model_validate({"mcpServers": {"bad": {}}})
    with pytest.raises(ValueError, match="server name"):
        HubConfig.model_validate({"mcpServers": {"a__b": {"command": "x"}}})
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="cannot read"):
        load_hub_config(tmp_path / "broken.json")


def test_policy_rules() -> None:
    policy = Policy(allow=["read_*", "list"], deny=["read_secret*"], modes={"read_big": "return"})
    assert policy.mode_for("read_file", read_only=True) == "run"
    assert policy.mode_for("read_file", read_only=False) == "return"
    assert policy.mode_for("read_secret_key", read_only=True) == "hidden"
    assert policy.mode_for("write_file", read_only=True) == "hidden"
    assert policy.mode_for("read_big", read_only=True) == "return"


async def test_proxy_mode_offers_downstream_tools_to_the_client_itself(standin: StandIn, tmp_path: Path) -> None:
    servers = write_servers(tmp_path, {"notes": stdio_entry(deny=["crash", "hang"], modes={"write_note": "hidden"})})
    settings = settings_for(standin.base_url, tmp_path, mcp_servers=servers, proxy=True)
    async with bridge_client(settings) as client:
        with anyio.fail_after(20):
            while "notes__echo" not in {t.name for t in (await client.list_tools()).tools}:
                await anyio.sleep(0.05)
        names = {t.name for t in (await client.list_tools()).tools}
        echoed = await client.call_tool("notes__echo", {"message": "direct"})
        denied = await client.call_tool("notes__crash", {})
        local = await client.call_tool("math_calculator", {"operation": "add", "a": 1, "b": 2})
    assert {"notes__echo", "math_calculator", "key4u_respond"} <= names
    assert "notes__crash" not in names and "notes__write_note" not in names
    assert not echoed.is_error and "echo: direct" in text_of(echoed)
    assert denied.is_error and "Unknown tool" in text_of(denied)
    assert not local.is_error
