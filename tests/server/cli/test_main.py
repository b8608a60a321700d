"""The commands people run at a terminal: demo, doctor, stand-in, config."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from server.standin import Faults, StandIn
from tests.conftest import FAKE_KEY
from tests.helpers import script


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    merged = {k: v for k, v in os.environ.items() if not k.startswith(("KEY4U_", "OPENAI_"))}
    merged.update(env or {})
    return subprocess.run(
        [script(), *args], capture_output=True, text=True, timeout=timeout, env=merged, stdin=subprocess.DEVNULL
    )


def test_demo_without_a_key_runs_the_example_against_the_stand_in() -> None:
    done = run("demo")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "offline stand-in" in out and "All steps succeeded." in out
    for name in ("current_time", "system_info", "math_calculator", "random_generator", "key4u_respond"):
        assert f"- {name}:" in out
    assert "123.5 + 456.7 = 580.2" in out
    assert "Turn 1: the model called 4 tool(s)" in out and "Turn 2: the model answered" in out
    assert re.search(r"All ran at the same time|Ran concurrently", out)
    assert "... turn 1: waiting for gpt-4.1" in out  # progress while waiting
    assert re.search(r"tokens in \d+ \(cached \d+\) / out \d+", out)
    assert re.search(r"gpt-4.1 · OpenAI · \$2/\$8 \(cached \$0.5\)", out)  # key4u_models, priced by the stand-in
    assert re.search(r"cost \$0\.0\d+", out)  # the example priced per turn from the gateway's list
    # Two models at once: each answered on its own, then the synthesis compared them.
    assert re.search(r"gpt-4.1: completed in [\d.]+ s, 2 turns", out)
    assert re.search(r"claude-sonnet-4-5: completed in [\d.]+ s, 2 turns", out)
    assert "As gpt-4.1-mini: Compared 2 answers" in out and "they ran at the same time" in out
    # key4u_usage: the two runs (2 turns each), the two models (2 each) and the synthesis (1).
    assert re.search(r"Total, last 1 day \(UTC\) · 9 turns · .* · \$0\.\d+", out)


def test_demo_exits_non_zero_when_the_gateway_fails() -> None:
    with StandIn() as upstream:
        upstream.faults = Faults(status=401)
        done = run("demo", env={"KEY4U_API_KEY": FAKE_KEY, "KEY4U_BASE_URL": upstream.base_url})
    assert done.returncode == 1
    assert "HTTP 401" in done.stdout and "FAILED" in done.stdout
    assert FAKE_KEY not in done.stdout + done.stderr


def test_doctor_passes_a_healthy_gateway() -> None:
    with StandIn(api_key=FAKE_KEY) as upstream:
        done = run("doctor", env={"KEY4U_API_KEY": FAKE_KEY, "KEY4U_BASE_URL": upstream.base_url})
    assert done.returncode == 0, done.stdout
    for route in ("/v1/responses", "/v1/chat/completions"):
        for check in (f"{route}, streaming", f"{route}, function calling"):
            assert re.search(rf"ok\s+gpt-4.1 {re.escape(check)}", done.stdout), done.stdout
    assert "store:false accepted" in done.stdout
    assert re.search(r"ok\s+gpt-4.1: the bridge uses\s+/v1/responses \(chat completions works too\)", done.stdout)
    assert "sk-t…cdef" in done.stdout and FAKE_KEY not in done.stdout + done.stderr


def test_doctor_tells_a_chat_only_gateway_from_a_wrong_base_url_and_a_rejected_key() -> None:
    with StandIn(api_key="the-right-key-0000") as upstream:
        env = {"KEY4U_API_KEY": "the-right-key-0000", "KEY4U_BASE_URL": upstream.base_url}
        upstream.faults = Faults(responses_route="missing")
        chat_only = run("doctor", "--model", "gpt-4.1", "--model", "claude-sonnet-4-5", env=env)
        upstream.faults = Faults(status=404)
        wrong = run("doctor", env=env)
        upstream.faults = Faults()
        key = run("doctor", env={"KEY4U_API_KEY": FAKE_KEY, "KEY4U_BASE_URL": upstream.base_url})
    assert chat_only.returncode == 0, chat_only.stdout
    for model in ("gpt-4.1", "claude-sonnet-4-5"):
        assert re.search(rf"ok\s+{model}: the bridge uses\s+/v1/chat/completions", chat_only.stdout), chat_only.stdout
    assert "this route does not serve it" in chat_only.stdout
    assert wrong.returncode == 1 and "KEY4U_BASE_URL is probably wrong" in wrong.stdout, wrong.stdout
    assert key.returncode == 1 and "the key was rejected" in key.stdout and "HTTP 401" in key.stdout
    assert "probably wrong" not in key.stdout
    assert FAKE_KEY not in key.stdout + key.stderr


def test_doctor_without_a_key_says_what_to_set() -> None:
    done = run("doctor")
    assert done.returncode == 1 and "KEY4U_API_KEY" in done.stdout


def test_config_claude_prints_an_entry_with_absolute_paths() -> None:
    done = run("config", "claude", env={"KEY4U_API_KEY": FAKE_KEY})
    entry = json.loads(done.stdout)["mcpServers"]["key4u"]
    assert Path(entry["command"]).is_absolute() and Path(entry["command"]).exists()
    assert entry["env"]["KEY4U_API_KEY"] != FAKE_KEY and FAKE_KEY not in done.stdout


def test_stand_in_command_serves_any_client(tmp_path: Path) -> None:
    with subprocess.Popen([script(), "stand-in", "--port", "0"], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            url = re.search(r"(http://\S+/v1)", line)
            assert url, line
            reply = httpx.get(f"{url.group(1)}/models", headers={"Authorization": "Bearer k"}, timeout=10)
            assert reply.status_code == 200 and reply.json()["data"]
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX")
def test_unknown_command_is_a_usage_error() -> None:
    done = run("frobnicate")
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_doctor_reports_downstream_servers(tmp_path: Path) -> None:
    servers = tmp_path / "servers.json"
    fixture = {
        "command": sys.executable,
        "args": ["-m", "tests.fixtures.downstream_server"],
        "cwd": str(Path(__file__).resolve().parents[3]),
    }
    servers.write_text(json.dumps({"mcpServers": {"good": fixture, "dead": {"command": str(tmp_path / "nope")}}}))
    with StandIn() as upstream:
        done = run(
            "doctor",
            env={"KEY4U_API_KEY": FAKE_KEY, "KEY4U_BASE_URL": upstream.base_url, "KEY4U_MCP_SERVERS": str(servers)},
        )
    assert done.returncode == 1
    assert re.search(r"ok\s+server good\s+\d+ tools", done.stdout), done.stdout
    assert re.search(r"FAIL\s+server dead", done.stdout) and "run the command by hand" in done.stdout


@pytest.mark.parametrize("host", ["claude-code", "codex", "gemini", "vscode", "cursor"])
def test_config_prints_each_hosts_snippet_with_this_installations_path(host: str) -> None:
    done = run("config", host, env={"KEY4U_API_KEY": FAKE_KEY, "KEY4U_MODEL": "claude-sonnet-4-5"})
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert FAKE_KEY not in out and "sk-your-key4u-key" in out and "claude-sonnet-4-5" in out
    if host == "codex":
        tomllib = pytest.importorskip("tomllib")  # Python 3.11+

        config = tomllib.loads(out)["mcp_servers"]["key4u"]
        assert Path(config["command"]).exists() and config["required"] is True
        assert config["tools"]["key4u_respond"]["approval_mode"] == "approve"
    elif host in ("vscode", "cursor"):
        entry = json.loads(out)
        server = (entry.get("servers") or entry["mcpServers"])["key4u"]
        assert Path(server["command"]).exists()
    else:
        words = out.split()
        assert words[:3] == ["claude", "mcp", "add"] if host == "claude-code" else words[:2] == ["gemini", "mcp"]
        assert any(Path(w).name == "key4u-mcp" and Path(w).exists() for w in words)


def test_serving_leaves_the_sdks_logging_setup_out_and_logs_through_ours() -> None:
    """The SDK's logging setup imports rich only to hand basicConfig a handler it ignores once ours is set:
    building the server skips it, and the server's log lines still go out through our handler."""
    code = (
        "import logging, sys\n"
        "from server.logs import configure_logging\n"
        "from server.config import Settings\n"
        "from server.surface.app import build_server\n"
        "configure_logging('INFO')\n"
        "build_server(Settings())\n"
        "import mcp.server.mcpserver.server as sdk\n"
        "logging.getLogger('server.check').info('still logging')\n"
        "print('rich' in sys.modules, sdk.configure_logging.__module__, len(logging.getLogger().handlers))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.split() == ["False", "mcp.server.mcpserver.utilities.logging", "1"]
    assert "server.check: still logging" in done.stderr


def test_listing_and_local_tools_leave_the_bridge_unimported_until_a_call_needs_it() -> None:
    """Hosts start every configured server at launch and list its tools: the bridge's modules (the loop,
    the planner, the upstream adapters) wait for the first call that needs them."""
    code = (
        "import anyio, sys\n"
        "from mcp import Client\n"
        "from server.config import Settings\n"
        "from server.surface.app import build_server\n"
        "async def main():\n"
        "    async with Client(build_server(Settings(api_key=None, db_path=sys.argv[1]))) as client:\n"
        "        await client.list_tools()\n"
        "        await client.list_resources()\n"
        "        await client.call_tool('math_calculator', {'operation': 'add', 'a': 1, 'b': 2})\n"
        "        before = 'server.bridge.service' in sys.modules\n"
        "        answer = await client.call_tool('key4u_respond', {'prompt': 'hello'})\n"
        "        print(before, 'server.bridge.service' in sys.modules, answer.is_error)\n"
        "anyio.run(main)\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, "-c", code, str(Path(tmp) / "c.db")],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith(("KEY4U_", "OPENAI_"))},
        )
    assert done.stdout.split() == ["False", "True", "True"]  # no key: a clear error, from the bridge
