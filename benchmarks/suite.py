"""The benchmarks. Each measures side by side in one run and returns rows for BENCHMARKS.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import psutil
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from benchmarks import per_turn, store, workers
from benchmarks.common import (
    KEY,
    REPO,
    Row,
    Spread,
    bridge_env,
    controlled_standin,
    cpu_seconds,
    script,
    spread,
    standin_process,
    stdio_bridge,
)
from server.cli.demo import KEY4U_PROMPT
from tools.current_time import current_time
from tools.math_calculator import math_calculator
from tools.random_generator import random_generator
from tools.system_info import system_info

try:
    import agents  # pyright: ignore[reportMissingImports] -- the optional bench extra (openai-agents)
    import openai
except ImportError:  # without the bench extra, peer() reports "not run"
    agents = openai = None


# --- overhead --------------------------------------------------------------------------------------


async def overhead(tmp: Path, pairs: int = 60) -> list[Row]:
    """A key4u_respond turn minus a direct httpx POST of the same request, for each model API over stdio,
    and over Streamable HTTP (one server process, stateless, JSON replies)."""
    floor = await _bare_round_trip(pairs)
    rows: list[Row] = []
    for api, transport in (("responses", "stdio"), ("chat", "stdio"), ("responses", "http")):
        added, bridge, direct, hop = await _overhead(tmp, api, pairs, transport)
        scale_note = f"for scale, a math_calculator call to the same server over {transport} takes {hop.fmt()}" + (
            f", one trivial tool call to a bare mcp server over stdio {floor.fmt()}"
            if transport == "stdio"
            else "; the SDK's Streamable HTTP client, one keep-alive connection; key4u-mcp --transport http "
            "--stateless --json-response"
        )
        rows.append(
            Row(
                f"Overhead per turn over {api} (key4u_respond over {transport} − direct httpx POST)",
                added.fmt(),
                "≤ 2 ms at the median",
                added.median <= 2.0,
                f"bridge {bridge.fmt()}; direct POST {direct.fmt()}; {scale_note}",
            )
        )
    return rows


@asynccontextmanager
async def _http_bridge(env: dict[str, str], port: int) -> AsyncIterator[Client]:
    """``key4u-mcp`` over Streamable HTTP (stateless, JSON replies), and one MCP client on it."""
    args = [script(), "--transport", "http", "--stateless", "--json-response", "--port", str(port)]
    with subprocess.Popen(args, env=env, stderr=subprocess.DEVNULL) as proc:  # noqa: ASYNC220 - the benchmark's server
        try:
            url = f"http://127.0.0.1:{port}/mcp"
            await _wait_healthy(url)
            async with (
                httpx2.AsyncClient(timeout=120) as http,
                Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
            ):
                yield client
        finally:
            proc.terminate()
            proc.wait(timeout=10)


async def _overhead(tmp: Path, api: str, pairs: int, transport: str) -> tuple[Any, Any, Any, Any]:
    messages = [{"role": "user", "content": "hello"}]
    if api == "chat":
        path, body = "/chat/completions", {"model": "gpt-4.1", "messages": messages, "stream": False}
    else:
        path = "/responses"
        body = {
            "model": "gpt-4.1",
            "input": [{"type": "message", **messages[0]}],
            "parallel_tool_calls": True,
            "store": False,
            "stream": False,
        }
    with standin_process() as (base_url, _):
        env = bridge_env(base_url, tmp, KEY4U_STREAM="false", KEY4U_API_STYLE=api)
        headers = {"Authorization": f"Bearer {KEY}"}
        bridged = _http_bridge(env, 18590) if transport == "http" else _stdio_client(env)
        async with bridged as client, httpx.AsyncClient() as http:
            for _ in range(10):  # warm both paths
                await client.call_tool("key4u_respond", {"prompt": "hello", "tools": []})
                await http.post(f"{base_url}{path}", json=body, headers=headers)
            bridge: list[float] = []
            direct: list[float] = []
            diffs: list[float] = []
            hops: list[float] = []
            for _ in range(pairs):
                t0 = time.perf_counter()
                result = await client.call_tool("key4u_respond", {"prompt": "hello", "tools": []})
                t1 = time.perf_counter()
                reply = await http.post(f"{base_url}{path}", json=body, headers=headers)
                t2 = time.perf_counter()
                local = await client.call_tool("math_calculator", {"operation": "add", "a": 1, "b": 2})
                t3 = time.perf_counter()
                assert not result.is_error and reply.status_code == 200 and not local.is_error
                bridge.append((t1 - t0) * 1000)
                direct.append((t2 - t1) * 1000)
                hops.append((t3 - t2) * 1000)
                diffs.append(bridge[-1] - direct[-1])
    return spread(diffs), spread(bridge), spread(direct), spread(hops)


@asynccontextmanager
async def _stdio_client(env: dict[str, str]) -> AsyncIterator[Client]:
    async with stdio_bridge(env) as (client, _):
        yield client


async def _bare_round_trip(calls: int) -> Any:
    """The floor: one trivial tool call to a bare ``mcp`` server over stdio."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "benchmarks.bare_server"], cwd=str(REPO))
    with open(os.devnull, "w") as devnull:
        async with Client(stdio_client(params, errlog=devnull), mode="legacy") as client:
            for _ in range(10):
                await client.call_tool("add", {"a": 1, "b": 2})
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                await client.call_tool("add", {"a": 1, "b": 2})
                times.append((time.perf_counter() - t0) * 1000)
    return spread(times)


# --- parallelism ---------------------------------------------------------------------------------


async def parallelism(tmp: Path, repeats: int = 5) -> list[Row]:
    """4 and 16 calls of 200 ms in one turn: wall time of the turn's tool phase against one call."""
    servers = tmp / "slow.json"
    servers.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "slow": {"command": sys.executable, "cwd": str(REPO), "args": ["-m", "benchmarks.slow_server"]}
                }
            }
        )
    )
    rows: list[Row] = []
    single: Spread | None = None
    with standin_process() as (base_url, _):
        env = bridge_env(base_url, tmp, KEY4U_MCP_SERVERS=str(servers))
        async with stdio_bridge(env) as (client, _):
            for count in (1, 4, 16):
                names = [f"slow__slow_{i}" for i in range(count)]
                prompt = "run " + " ".join(n.split("__")[1] for n in names)
                walls = []
                for _ in range(repeats + 1):
                    result = await client.call_tool("key4u_respond", {"prompt": prompt, "tools": names})
                    calls = (result.structured_content or {}).get("tool_calls", [])
                    assert len(calls) == count and all(c["ok"] for c in calls), result.content
                    start = min(c["started_ms"] for c in calls)
                    walls.append(max(c["started_ms"] + c["ms"] for c in calls) - start)
                walls = walls[1:]  # the first run warms the downstream connection
                if count == 1:
                    single = spread(walls)
                    continue
                assert single is not None  # the one-call run comes first
                ratio = spread([w / single.median for w in walls])
                rows.append(
                    Row(
                        f"Parallelism: {count} calls of 200 ms in one turn",
                        f"{ratio.median:.3f}× one call",
                        "≤ 1.15× one call",
                        ratio.median <= 1.15,
                        f"tool phase {spread(walls).fmt()} against one call {single.fmt()}; "
                        f"a sequential bridge would take {count}×",
                    )
                )
    return rows


# --- fan-out --------------------------------------------------------------------------------------

FANOUT_MODELS = ["gpt-4.1", "gpt-4.1-mini", "gpt-5", "claude-sonnet-4-5"]


async def fanout(tmp: Path, repeats: int = 7) -> list[Row]:
    """The Key4U example asked of 4 models at once, each answering after 200 ms per request, against one."""
    async with controlled_standin() as standin:
        await standin.set_faults(model_latency=dict.fromkeys(FANOUT_MODELS, 0.2))
        async with stdio_bridge(bridge_env(standin.base_url, tmp)) as (client, _):
            one: list[float] = []
            four: list[float] = []
            peak = 0
            for n in range(repeats + 1):
                for models in ([FANOUT_MODELS[n % 4]], FANOUT_MODELS):  # interleaved, pair by pair
                    arguments: dict[str, Any] = {"prompt": KEY4U_PROMPT}
                    arguments |= {"model": models[0]} if len(models) == 1 else {"models": models}
                    since = await standin.count()
                    started = time.perf_counter()
                    result = await client.call_tool("key4u_respond", arguments)
                    wall = (time.perf_counter() - started) * 1000
                    out = result.structured_content or {}
                    assert out.get("status") == "completed", result.content
                    if n == 0:
                        continue  # the first pair warms the connections
                    (one if len(models) == 1 else four).append(wall)
                    if len(models) > 1:
                        peak = max(peak, len(await standin.bodies_since(since)))
    ratio = spread([f / o for f, o in zip(four, one, strict=True)])
    return [
        Row(
            "Fan-out: the Key4U example asked of 4 models at once (200 ms per request each)",
            f"{ratio.median:.3f}× one model",
            "≤ 1.15× one model",
            ratio.median <= 1.15,
            f"4 models {spread(four).fmt()}, one model {spread(one).fmt()} (pairs interleaved); "
            f"{peak} upstream requests per group call (2 turns × 4 models); one after another would take 4×",
        )
    ]


# --- start-up ------------------------------------------------------------------------------------


async def _time_to_initialize(command: list[str], env: dict[str, str]) -> float:
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "b", "version": "0"}},
    }
    t0 = time.perf_counter()
    async with await anyio.open_process(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=REPO
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        await proc.stdin.send(json.dumps(init).encode() + b"\n")
        received = b""
        while b'"id":1' not in received:
            received += await proc.stdout.receive()
        elapsed = (time.perf_counter() - t0) * 1000
        await proc.stdin.aclose()
        await proc.wait()
    return elapsed


async def startup(tmp: Path, repeats: int = 20) -> list[Row]:
    """Spawn to ``initialize`` answered: this server against a bare ``mcp`` server with one tool.

    The target is against the bare server as anyone would start it. Our start-up also pauses the
    cyclic collector (``server.startup``); the detail gives the bare server with that same pause too,
    which leaves what our own modules and set-up cost."""
    env = bridge_env("http://127.0.0.1:9/v1", tmp)
    bare_command = [sys.executable, "-m", "benchmarks.bare_server"]
    ours, bare, paused = [], [], []
    for i in range(repeats + 2):
        a = await _time_to_initialize([script()], env)
        b = await _time_to_initialize(bare_command, env)
        c = await _time_to_initialize([*bare_command, "--paused"], env)
        if i >= 2:  # the first runs warm the file cache
            ours.append(a)
            bare.append(b)
            paused.append(c)
    ratio = spread([a / b for a, b in zip(ours, bare, strict=True)])
    same_pause = spread([a / c for a, c in zip(ours, paused, strict=True)])
    return [
        Row(
            "Start-up: spawn to initialize answered, against a bare mcp server",
            f"{ratio.median:.3f}× the bare server",
            "≤ 1.05× the bare server",
            ratio.median <= 1.05,
            f"key4u-mcp {spread(ours).fmt()}; bare {spread(bare).fmt()}; the bare server with the collector "
            f"paused as ours is {spread(paused).fmt()}, against which ours takes {same_pause.median:.3f}× "
            f"(IQR {same_pause.q1:.3f}–{same_pause.q3:.3f})",
        )
    ]


# --- a peer: openai-agents -----------------------------------------------------------------------


def _agents_tools() -> list[Any]:
    assert agents is not None  # peer() checks first
    return [agents.function_tool(f) for f in (current_time, system_info, math_calculator, random_generator)]


async def peer(tmp: Path, repeats: int = 20) -> list[Row]:
    """The Key4U example by this bridge and by openai-agents' Runner, against the same stand-in."""
    if agents is None or openai is None:
        return [
            Row(
                "Peer: openai-agents Runner",
                "not run",
                "≥ 2× faster",
                None,
                "install the bench extra: pip install -e '.[bench]'",
            )
        ]
    agents.set_tracing_disabled(True)
    me = psutil.Process()
    with standin_process() as (base_url, _):
        openai_client = openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0)
        agent = agents.Agent(
            name="key4u",
            instructions="Use the tools.",
            tools=_agents_tools(),
            model=agents.OpenAIResponsesModel(model="gpt-4.1", openai_client=openai_client),
        )
        async with stdio_bridge(bridge_env(base_url, tmp)) as (client, server):
            ours_wall, ours_cpu, peer_wall, peer_cpu = [], [], [], []
            for i in range(repeats + 3):
                c0, t0 = cpu_seconds(server), time.perf_counter()
                result = await client.call_tool("key4u_respond", {"prompt": KEY4U_PROMPT})
                t1, c1 = time.perf_counter(), cpu_seconds(server)
                assert (result.structured_content or {}).get("status") == "completed"
                p0, t2 = cpu_seconds(me), time.perf_counter()
                run = await agents.Runner.run(agent, KEY4U_PROMPT)
                t3, p1 = time.perf_counter(), cpu_seconds(me)
                assert "580.2" in str(run.final_output)
                if i >= 3:
                    ours_wall.append((t1 - t0) * 1000)
                    ours_cpu.append((c1 - c0) * 1000)
                    peer_wall.append((t3 - t2) * 1000)
                    peer_cpu.append((p1 - p0) * 1000)
        await openai_client.close()
    wall = spread([p / o for p, o in zip(peer_wall, ours_wall, strict=True)])
    # CPU times tick in 10 ms steps: compare the totals over all runs, not per-run medians.
    ours_cpu_mean, peer_cpu_mean = sum(ours_cpu) / len(ours_cpu), sum(peer_cpu) / len(peer_cpu)
    cpu = peer_cpu_mean / max(ours_cpu_mean, 1e-9)
    return [
        Row(
            "Peer, wall time: openai-agents Runner ÷ this bridge (Key4U example)",
            f"{wall.median:.2f}× faster",
            "≥ 2× faster",
            wall.median >= 2.0,
            f"bridge {spread(ours_wall).fmt()}; Runner {spread(peer_wall).fmt()}",
        ),
        Row(
            "Peer, CPU time: openai-agents Runner ÷ this bridge (Key4U example)",
            f"{cpu:.2f}× less CPU",
            "≥ 2× less CPU",
            cpu >= 2.0,
            f"mean CPU per example: bridge server process {ours_cpu_mean:.1f} ms, Runner's process "
            f"{peer_cpu_mean:.1f} ms, over {len(ours_cpu)} runs each",
        ),
    ]


# --- scale over HTTP -----------------------------------------------------------------------------


async def _http_example(url: str) -> tuple[float, bool]:
    t0 = time.perf_counter()
    try:
        async with (
            httpx2.AsyncClient(timeout=120) as http,
            Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
        ):
            result = await client.call_tool("key4u_respond", {"prompt": KEY4U_PROMPT})
        ok = not result.is_error and (result.structured_content or {}).get("status") == "completed"
    except Exception:
        ok = False
    return (time.perf_counter() - t0) * 1000, ok


async def _load(url: str, server: psutil.Process, clients: int) -> tuple[list[tuple[float, bool]], float, int, float]:
    """``clients`` concurrent clients each running the example once: results, seconds, peak RSS, CPU share."""
    results: list[tuple[float, bool]] = []
    peak = server.memory_info().rss
    cpu_before = cpu_seconds(server)

    async def one() -> None:
        results.append(await _http_example(url))

    t0 = time.perf_counter()
    async with anyio.create_task_group() as watcher:

        async def watch_memory() -> None:
            nonlocal peak
            while True:
                peak = max(peak, server.memory_info().rss)
                await anyio.sleep(0.05)

        watcher.start_soon(watch_memory)
        async with anyio.create_task_group() as load:
            for _ in range(clients):
                load.start_soon(one)
        watcher.cancel_scope.cancel()
    elapsed = time.perf_counter() - t0
    return results, elapsed, peak, (cpu_seconds(server) - cpu_before) / elapsed


async def _wait_healthy(url: str) -> None:
    async with httpx.AsyncClient() as http:
        with anyio.fail_after(30):
            while True:
                try:
                    await http.get(url.replace("/mcp", "/healthz"), timeout=1)
                    return
                except httpx.HTTPError:
                    await anyio.sleep(0.1)


async def scale(tmp: Path) -> list[Row]:
    """The HTTP transport under 50 and 200 concurrent clients, stateful and stateless."""
    rows = []
    with standin_process() as (base_url, _):
        for stateless in (False, True):
            port = 18500 + int(stateless)
            args = [script(), "--transport", "http", "--port", str(port)] + (["--stateless"] if stateless else [])
            env = bridge_env(base_url, tmp, KEY4U_DB_PATH=str(tmp / f"scale-{stateless}.sqlite3"))
            with subprocess.Popen(args, env=env, stderr=subprocess.DEVNULL) as proc:  # noqa: ASYNC220 - a benchmark's own server
                url = f"http://127.0.0.1:{port}/mcp"
                await _wait_healthy(url)
                for clients in (50, 200):
                    results, elapsed, peak, cpu_share = await _load(url, psutil.Process(proc.pid), clients)
                    latencies = sorted(r[0] for r in results)
                    errors = sum(not r[1] for r in results)
                    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
                    mode = "stateless" if stateless else "stateful"
                    rows.append(
                        Row(
                            f"Scale: {clients} concurrent clients, {mode} HTTP",
                            f"{len(results) / elapsed:.1f} examples/s, p50 {spread(latencies).median:.0f} ms, "
                            f"p99 {p99:.0f} ms",
                            "no errors",
                            errors == 0,
                            f"{errors} errors; server peak RSS {peak / 2**20:.0f} MiB; server CPU "
                            f"{cpu_share:.0%} of one core (the load generator, the stand-in and the server "
                            "share the machine's cores)",
                        )
                    )
                proc.terminate()
                proc.wait(timeout=10)
    return rows


# --- memory --------------------------------------------------------------------------------------


async def memory(tmp: Path, conversations: int = 1000) -> list[Row]:
    """Resident size idle and after 1,000 conversations."""
    with standin_process() as (base_url, _):
        async with stdio_bridge(bridge_env(base_url, tmp)) as (client, server):
            await client.list_tools()
            idle = server.memory_info().rss / 2**20
            samples: list[tuple[int, float]] = []
            for i in range(1, conversations + 1):
                result = await client.call_tool(
                    "key4u_respond", {"prompt": "Calculate 2 + 3", "tools": ["math_calculator"]}
                )
                assert not result.is_error
                if i % 100 == 0:
                    samples.append((i, server.memory_info().rss / 2**20))
    after = samples[-1][1]
    tail = samples[2:]  # after warm-up
    n = len(tail)
    mean_x = sum(x for x, _ in tail) / n
    mean_y = sum(y for _, y in tail) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in tail) / sum((x - mean_x) ** 2 for x, _ in tail)
    per_thousand = slope * 1000
    return [
        Row("Memory: resident size idle", f"{idle:.0f} MiB", "< 100 MiB", idle < 100),
        Row(
            f"Memory: after {conversations} conversations",
            f"{after:.0f} MiB; trend {per_thousand:+.1f} MiB per 1,000",
            "no growth trend",
            per_thousand < 5.0,
            "RSS every 100 conversations: " + ", ".join(f"{y:.0f}" for _, y in samples),
        ),
    ]


ALL = {
    "overhead": overhead,
    "floor": per_turn.floor,
    "turns": per_turn.turns,
    "continuation": per_turn.continuation,
    "tools": per_turn.tools,
    "parallelism": parallelism,
    "fanout": fanout,
    "startup": startup,
    "peer": peer,
    "scale": scale,
    "workers": workers.workers,
    "workers_postgres": workers.workers_postgres,
    "store": store.store,
    "memory": memory,
}


async def run(names: list[str]) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="key4u-bench-") as tmp:
        for name in names:
            print(f"running {name}...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            rows += await ALL[name](Path(tmp))
            print(f"  {name} took {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return rows
