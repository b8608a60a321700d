"""Downstream servers that misbehave, or a servers file that would: real spawned processes throughout.

No key reaches a downstream process, a server that never answers ``initialize`` is timed out,
children die with the bridge even when it is SIGKILLed and they ignore SIGTERM, a key4u-mcp in
its own servers list stops at depth 2, and waiting for the servers is bounded.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from mcp.client.stdio import get_default_environment

from server.toolsets import child
from server.toolsets.hub import DEPTH_VARIABLE, Downstream, Hub, HubConfig, child_environment
from tests.conftest import FAKE_KEY
from tests.helpers import script, text_of

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[3]
FIXTURE = ["-m", "tests.fixtures.downstream_server"]
SECRETS = {"KEY4U_API_KEY": FAKE_KEY, "OPENAI_API_KEY": FAKE_KEY, "KEY4U_MCP_TOKEN": "tok-" + FAKE_KEY}
linux_only = pytest.mark.skipif(not child.supported(), reason="the PR_SET_PDEATHSIG guard is Linux-only")


def stdio_entry(*flags: str, **extra: Any) -> dict[str, Any]:
    return {"command": sys.executable, "args": [*FIXTURE, *flags], "cwd": str(REPO), **extra}


@asynccontextmanager
async def running(servers: dict[str, Any]) -> AsyncIterator[Hub]:
    hub = Hub(HubConfig.model_validate({"mcpServers": servers}))
    async with anyio.create_task_group() as tg:
        hub.start(tg)
        try:
            yield hub
        finally:
            tg.cancel_scope.cancel()


async def until(condition: Any, timeout: float = 20.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.05)


async def environment_of(server: Downstream) -> dict[str, str]:
    await until(lambda: server.status == "ready")
    result = await server.call("environ", {}, 10)
    assert not result.is_error, text_of(result)
    return json.loads(text_of(result))


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- 1. no key leaks into a downstream process -----------------------------------------------------


async def test_a_downstream_server_gets_only_the_safe_environment_and_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SOME_UNRELATED_TOKEN", "not-for-children")
    own = {"MY_SETTING": "on", "KEY4U_BASE_URL": "http://explicit.test", "PYTHONCOERCECLOCALE": "0"}
    servers = {"plain": stdio_entry(), "own": stdio_entry(env=own)}
    async with running(servers) as hub:
        plain = await environment_of(hub.servers["plain"])
        with_env = await environment_of(hub.servers["own"])
    safe = set(get_default_environment())
    for env in (plain, with_env):
        assert not set(SECRETS) & set(env) and "SOME_UNRELATED_TOKEN" not in env
        assert FAKE_KEY not in json.dumps(env)
        assert env[DEPTH_VARIABLE] == "1"
        assert {k: env[k] for k in safe} == get_default_environment()
    # Without an env block: the safe set (and LC_CTYPE, which the fixture's own Python start-up adds).
    assert set(plain) - {"LC_CTYPE"} == safe | {DEPTH_VARIABLE}
    # With one: exactly the safe set and its own variables, a KEY4U_ one too since the entry set it;
    # PYTHONCOERCECLOCALE=0 keeps the fixture from adding LC_CTYPE, so none came from the guard either.
    assert set(with_env) == safe | set(own) | {DEPTH_VARIABLE}
    assert with_env["MY_SETTING"] == "on" and with_env["KEY4U_BASE_URL"] == "http://explicit.test"


def test_child_environment_keeps_the_entry_env_and_overrides_the_depth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEY4U_API_KEY", FAKE_KEY)
    env = child_environment({"OPENAI_BASE_URL": "x", DEPTH_VARIABLE: "0"}, 3)
    assert env[DEPTH_VARIABLE] == "4" and env["OPENAI_BASE_URL"] == "x" and "KEY4U_API_KEY" not in env


async def test_a_nested_bridge_passes_its_depth_plus_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEPTH_VARIABLE, "1")
    async with running({"notes": stdio_entry()}) as hub:
        assert hub.depth == 1
        env = await environment_of(hub.servers["notes"])
    assert env[DEPTH_VARIABLE] == "2"


# --- 2. a server that never answers initialize ---------------------------------------------------------


async def test_a_server_that_never_answers_initialize_is_timed_out_and_retried() -> None:
    async with running({"mute": stdio_entry("--mute", startup_timeout=1), "notes": stdio_entry()}) as hub:
        mute = hub.servers["mute"]
        started = time.monotonic()
        await hub.wait_ready(60)
        assert time.monotonic() - started < 3
        assert mute.status == "failed" and mute.error is not None
        assert "initialize" in mute.error and "within 1 s" in mute.error, mute.error
        result = await mute.call("echo", {"message": "x"}, 1.0)
        assert result.is_error and "unavailable" in text_of(result)
        await until(lambda: mute.failures >= 2)  # the normal backoff path: restarted, timed out again
        assert mute.next_retry is not None
        await until(lambda: hub.servers["notes"].status == "ready")  # the others are not held up


async def test_a_missing_command_is_reported_as_such() -> None:
    async with running({"ghost": {"command": "no-such-binary-key4u"}}) as hub:
        await hub.wait_ready(30)
        ghost = hub.servers["ghost"]
    assert ghost.status == "failed" and "FileNotFoundError" in (ghost.error or ""), ghost.error


# --- 3. children die with the bridge ---------------------------------------------------------------------


@linux_only
def test_a_child_that_ignores_sigterm_dies_when_the_bridge_is_sigkilled(tmp_path: Path) -> None:
    config = json.dumps({"mcpServers": {"stubborn": stdio_entry("--stubborn")}})
    errlog = tmp_path / "bridge.err"
    with (
        errlog.open("w") as err,
        subprocess.Popen(
            [sys.executable, "-m", "tests.fixtures.hub_bridge", config],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        ) as bridge,
    ):
        try:
            assert bridge.stdout is not None
            line = bridge.stdout.readline()
            assert line, errlog.read_text()
            report = json.loads(line)
            assert report["status"] == "ready", report
            pid = int(report["pid"])
            assert pid in {c.pid for c in psutil.Process(bridge.pid).children()}  # the guard exec'd: same pid
            assert os.getpgid(pid) == pid != os.getpgid(bridge.pid)  # its own process group
            assert "downstream_server" in " ".join(psutil.Process(pid).cmdline())
            bridge.send_signal(signal.SIGKILL)
            bridge.wait(timeout=10)
            deadline = time.monotonic() + 5
            while not gone(pid):
                assert time.monotonic() < deadline, "the downstream process outlived its SIGKILLed bridge"
                time.sleep(0.05)
        finally:
            if bridge.poll() is None:
                bridge.kill()
                bridge.wait()


async def test_a_child_that_ignores_sigterm_is_ended_when_the_hub_stops() -> None:
    async with running({"stubborn": stdio_entry("--stubborn")}) as hub:
        server = hub.servers["stubborn"]
        await until(lambda: server.status == "ready")
        result = await server.call("get.pid", {}, 10)
        pid = int((result.structured_content or {})["result"])
        assert not gone(pid)
    await until(lambda: gone(pid), timeout=15)


def test_the_guard_runs_the_command_itself_where_it_can() -> None:
    command, args = child.guarded("node", ["server.js"], {})
    if child.supported():
        assert command == sys.executable and args[-2:] == ["node", "server.js"] and str(os.getpid()) in args
    else:
        assert (command, args) == ("node", ["server.js"])


# --- 4. a key4u-mcp in its own servers list ------------------------------------------------------------


async def test_at_depth_two_no_server_is_started(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(DEPTH_VARIABLE, "2")
    servers = {"notes": stdio_entry(), "web": {"url": "http://127.0.0.1:9/mcp"}, "off": stdio_entry(disabled=True)}
    before = {c.pid for c in psutil.Process().children()}
    with caplog.at_level(logging.WARNING, logger="server.toolsets.hub"):
        async with running(servers) as hub:
            started = time.monotonic()
            await hub.wait_ready(30)
            assert time.monotonic() - started < 0.5
            await anyio.sleep(0.5)
            assert {c.pid for c in psutil.Process().children()} <= before  # nothing was spawned
            result = await hub.servers["notes"].call("echo", {"message": "x"}, 5.0)
    reason = "not started: nested 2 levels deep (a key4u-mcp inside its own servers list?)"
    report = {r["server"]: r for r in hub.report()}
    assert report["notes"]["status"] == report["web"]["status"] == "failed"
    assert report["notes"]["error"] == report["web"]["error"] == reason
    assert report["off"]["status"] == "disabled"
    assert result.is_error and reason in text_of(result)
    assert any(r.levelno == logging.WARNING and "nested 2 levels deep" in r.getMessage() for r in caplog.records)


async def test_a_key4u_mcp_listed_in_its_own_servers_file_stops_at_depth_two(tmp_path: Path) -> None:
    servers_file = tmp_path / "servers.json"
    env = {"KEY4U_MCP_SERVERS": str(servers_file), "KEY4U_DB_PATH": str(tmp_path / "db.sqlite3")}
    entry = {"command": script(), "cwd": str(tmp_path), "env": env, "startup_timeout": 60}
    servers_file.write_text(json.dumps({"mcpServers": {"self": entry}}))

    def depths() -> dict[int, tuple[int, list[int]]]:
        """The depth of each key4u-mcp below this test, and its children."""
        found: dict[int, tuple[int, list[int]]] = {}
        for proc in psutil.Process().children(recursive=True):
            try:
                depth = proc.environ().get(DEPTH_VARIABLE)
                if depth is not None and "key4u-mcp" in " ".join(proc.cmdline()):
                    found[proc.pid] = (int(depth), [c.pid for c in proc.children()])
            except psutil.Error:
                continue
        return found

    async with running({"self": entry}) as hub:
        await until(lambda: hub.servers["self"].status == "ready", timeout=60)
        await until(lambda: 2 in {d for d, _ in depths().values()}, timeout=60)
        await anyio.sleep(2)  # room for a third level to appear, were it going to
        seen = depths()
    assert sorted(d for d, _ in seen.values()) == [1, 2], seen
    assert [kids for d, kids in seen.values() if d == 2] == [[]]  # the innermost started nothing


# --- 5. waiting for the servers ----------------------------------------------------------------------------


async def test_waiting_is_bounded_and_only_for_the_servers_named() -> None:
    servers = {"mute": stdio_entry("--mute", startup_timeout=5), "notes": stdio_entry()}
    async with running(servers) as hub:
        mute, notes = hub.servers["mute"], hub.servers["notes"]
        started = time.monotonic()
        await hub.wait_ready_for(["current_time", "my_function", "nobody__echo"], 60)  # no server's tools
        await hub.wait_ready_for([], 60)
        assert time.monotonic() - started < 0.1
        await hub.wait_ready_for(["mute__echo"], 0.2)  # the timeout still holds
        assert 0.15 < time.monotonic() - started < 1
        await hub.wait_ready_for(["notes__echo", "current_time"], 60)
        assert notes.status == "ready" and mute.status == "starting"  # not held up by the mute one
        await hub.wait_ready(60)  # all: bounded by mute's startup deadline, not by 60 s
        assert time.monotonic() - started < 5 + 1.5
        assert mute.status == "failed" and mute.settled.is_set()
        again = time.monotonic()
        await hub.wait_ready_for(None, 60)  # all settled: at once, though mute is retrying
        await hub.wait_ready_for(["mute__echo"], 60)
        assert time.monotonic() - again < 0.1
