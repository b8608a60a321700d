"""What the bridge adds to each model turn, and how that grows: against a floor bridge, over many turns,
over a long conversation, and with many tools offered.

Every figure is a paired difference against the direct POST of the same request body, captured from the
stand-in (``benchmarks.standin_server`` records every body it receives), measured in the same loop; the
order of the columns rotates from one repeat to the next, so that none always runs first.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
from mcp import Client

from benchmarks.common import (
    REPO,
    Plot,
    Row,
    Spread,
    StandInControl,
    bridge_env,
    controlled_standin,
    cpu_seconds,
    floor_bridge,
    replay_ms,
    spread,
    stdio_bridge,
)

Step = Callable[[], Awaitable[float]]


async def _rotated(rep: int, steps: Sequence[Step]) -> list[float]:
    """Run ``steps`` once each, starting at a different one each repeat; results in the order given."""
    results = [0.0] * len(steps)
    for j in range(len(steps)):
        i = (rep + j) % len(steps)
        results[i] = await steps[i]()
    return results


async def _call_ms(client: Client, tool: str, arguments: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    result = await client.call_tool(tool, arguments)
    ms = (time.perf_counter() - t0) * 1000
    assert not result.is_error, result.content
    return ms, result.structured_content or {}


async def _captured(standin: StandInControl, client: Client, arguments: dict[str, Any]) -> list[dict[str, Any]]:
    """The request bodies one ``key4u_respond`` call sends upstream."""
    since = await standin.count()
    await _call_ms(client, "key4u_respond", arguments)
    return await standin.bodies_since(since)


def _points(xs: Sequence[float], samples: Sequence[Sequence[float]]) -> list[tuple[float, float, float, float]]:
    out: list[tuple[float, float, float, float]] = []
    for x, values in zip(xs, samples, strict=True):
        s = spread(values)
        out.append((x, s.median, s.q1, s.q3))
    return out


# --- floor ---------------------------------------------------------------------------------------


async def floor(tmp: Path, pairs: int = 60) -> list[Row]:
    """One turn, three columns in one loop: the direct POST, the floor bridge, and key4u_respond."""
    rows: list[Row] = []
    for stream in (True, False):
        mode = "SSE" if stream else "JSON"
        async with controlled_standin() as standin:
            env = bridge_env(
                standin.base_url,
                tmp,
                KEY4U_STREAM=str(stream).lower(),
                KEY4U_API_STYLE="responses",
                KEY4U_DB_PATH=str(tmp / f"floor-{mode}.sqlite3"),
            )
            arguments = {"prompt": "hello", "tools": []}
            async with (
                stdio_bridge(env) as (ours, _),
                floor_bridge(standin.base_url, stream) as theirs,
                httpx.AsyncClient() as http,
            ):
                for _ in range(10):  # warm every path
                    await _call_ms(ours, "key4u_respond", arguments)
                    await _call_ms(theirs, "respond", arguments)
                bodies = await _captured(standin, ours, arguments)
                assert len(bodies) == 1
                await replay_ms(http, standin.base_url, bodies)

                async def key4u(ours: Client = ours, arguments: dict[str, Any] = arguments) -> float:
                    return (await _call_ms(ours, "key4u_respond", arguments))[0]

                async def floor_(theirs: Client = theirs, arguments: dict[str, Any] = arguments) -> float:
                    return (await _call_ms(theirs, "respond", arguments))[0]

                async def direct(standin: StandInControl = standin, bodies: list[dict[str, Any]] = bodies) -> float:
                    return await replay_ms(http, standin.base_url, bodies)

                ks, fs, ds = [], [], []
                for rep in range(pairs):
                    k, f, d = await _rotated(rep, [key4u, floor_, direct])
                    ks.append(k)
                    fs.append(f)
                    ds.append(d)
        added = spread([k - d for k, d in zip(ks, ds, strict=True)])
        floor_added = spread([f - d for f, d in zip(fs, ds, strict=True)])
        versus = spread([k - f for k, f in zip(ks, fs, strict=True)])
        rows.append(
            Row(
                f"Floor, one turn over responses ({mode}): key4u_respond − direct POST, against the floor bridge",
                f"{added.fmt()}; floor bridge {floor_added.median:.2f} ms",
                "≤ 2 ms at the median and below the floor bridge's",
                added.median <= 2.0 and versus.median < 0,
                f"key4u − floor, paired: {versus.fmt()}; key4u {spread(ks).fmt()}; floor bridge "
                f"(benchmarks/floor_bridge.py: the mcp SDK's MCPServer, one tool, httpx"
                f"{' + httpx-sse' if stream else ''}) {spread(fs).fmt()}; direct POST of the body key4u sent "
                f"{spread(ds).fmt()}; the three in one loop, their order rotating",
            )
        )
    return rows


# --- turns ---------------------------------------------------------------------------------------

TURN_COUNTS = (1, 2, 20)


async def turns(tmp: Path, repeats: int = 15) -> list[Row]:
    """Conversations of 1, 2 and 20 model turns: (bridge − direct POSTs of its bodies) ÷ turns.

    1 turn: the model answers at once; 2: one call of math_calculator, then the answer; 20: the stand-in's
    ``tool_call_loop`` fault (a call on every turn) stopped by ``max_turns=20``."""
    async with controlled_standin() as standin:
        env = bridge_env(standin.base_url, tmp, KEY4U_API_STYLE="responses", KEY4U_DB_PATH=str(tmp / "turns.sqlite3"))
        async with (
            stdio_bridge(env) as (ours, _),
            floor_bridge(standin.base_url) as theirs,
            httpx.AsyncClient() as http,
        ):
            samples: dict[int, tuple[list[float], list[float], list[float]]] = {n: ([], [], []) for n in TURN_COUNTS}
            captured: dict[int, list[dict[str, Any]]] = {}
            for rep in range(repeats + 2):  # the first two warm up (and capture the bodies to replay)
                for n in TURN_COUNTS if rep % 2 else TURN_COUNTS[::-1]:
                    await standin.set_faults(tool_call_loop=n > 2)
                    arguments = {"prompt": "hello" if n == 1 else "Calculate 2 + 3", "tools": ["math_calculator"]}
                    arguments["max_turns"] = n
                    if rep < 2:  # the bodies differ between runs only in their call ids
                        captured[n] = await _captured(standin, ours, arguments)
                        assert len(captured[n]) == n, len(captured[n])
                    bodies = captured[n]

                    async def key4u(arguments: dict[str, Any] = arguments, n: int = n) -> float:
                        ms, content = await _call_ms(ours, "key4u_respond", arguments)
                        assert content.get("turns") == n, content
                        return ms

                    async def floor_(arguments: dict[str, Any] = arguments) -> float:
                        return (await _call_ms(theirs, "respond", arguments))[0]

                    async def direct(bodies: list[dict[str, Any]] = bodies) -> float:
                        return await replay_ms(http, standin.base_url, bodies)

                    k, f, d = await _rotated(rep, [key4u, floor_, direct])
                    if rep >= 2:
                        for column, value in zip(samples[n], (k, f, d), strict=True):
                            column.append(value)
            await standin.set_faults()
    rows: list[Row] = []
    for n in TURN_COUNTS:
        ks, fs, ds = samples[n]
        added = spread([(k - d) / n for k, d in zip(ks, ds, strict=True)])
        floor_added = spread([(f - d) / n for f, d in zip(fs, ds, strict=True)])
        versus = spread([(k - f) / n for k, f in zip(ks, fs, strict=True)])
        shape = {1: "the answer at once", 2: "one tool call, then the answer"}.get(
            n, "a tool call every turn (stand-in fault tool_call_loop), stopped by max_turns"
        )
        rows.append(
            Row(
                f"Turns: a conversation of {n} model turn{'s' if n > 1 else ''}, added time per turn",
                f"{added.fmt()} per turn; floor bridge {floor_added.median:.2f} ms",
                "≤ 2 ms per turn and below the floor bridge's",
                added.median <= 2.0 and versus.median < 0,
                f"{shape}; (key4u_respond − direct POSTs of the {n} bod{'ies' if n > 1 else 'y'} it sent) ÷ {n}; "
                f"key4u − floor per "
                f"turn, paired: {versus.fmt()}; key4u {spread(ks).fmt()}, floor bridge {spread(fs).fmt()}, "
                f"direct {spread(ds).fmt()} per conversation (the floor runs its calls one by one, key4u in "
                "parallel; both run math_calculator in-process)",
            )
        )
    return rows


# --- continuation --------------------------------------------------------------------------------


async def continuation(tmp: Path, calls: int = 100, conversations: int = 6) -> list[Row]:
    """One conversation continued ``calls`` times (several, interleaved): added ms at call 1, 10 and 100.

    In replay mode each request carries the whole history, so the direct POST it is paired with is that
    same call's bodies, captured from the stand-in: the difference is the bridge's own cost (loading,
    claiming, saving the conversation, building the bigger body, parsing the reply), not the upstream's."""
    async with controlled_standin() as standin:
        env = bridge_env(standin.base_url, tmp, KEY4U_API_STYLE="responses", KEY4U_DB_PATH=str(tmp / "cont.sqlite3"))
        async with stdio_bridge(env) as (ours, server), httpx.AsyncClient() as http:
            for _ in range(5):  # warm up on a throwaway conversation
                await _call_ms(ours, "key4u_respond", {"prompt": "Remember note 0."})
            ids: list[str | None] = [None] * conversations
            walls = [[0.0] * calls for _ in range(conversations)]
            directs = [[0.0] * calls for _ in range(conversations)]
            cpu = [0.0] * calls
            last: dict[str, Any] = {}
            for k in range(calls):
                for c in range(conversations):
                    arguments: dict[str, Any] = {
                        "prompt": f"Remember note {k + 1}.{c + 1}: the review moved to room {k}."
                    }
                    if ids[c] is not None:
                        arguments["conversation_id"] = ids[c]
                    since = await standin.count()
                    c0 = cpu_seconds(server)
                    ms, content = await _call_ms(ours, "key4u_respond", arguments)
                    cpu[k] += (cpu_seconds(server) - c0) * 1000
                    assert content.get("status") == "completed", content
                    ids[c] = content["conversation_id"]
                    bodies = await standin.bodies_since(since)
                    assert len(bodies) == 1, len(bodies)  # the prompt asks for no tool: one turn
                    walls[c][k] = ms
                    directs[c][k] = await replay_ms(http, standin.base_url, bodies)
                    last = bodies[-1]
                if k % 10 == 9:
                    await standin.clear()
    added = [[w - d for w, d in zip(walls[c], directs[c], strict=True)] for c in range(conversations)]

    def window(first: int, last_call: int, table: list[list[float]]) -> Spread:
        return spread([table[c][k - 1] for c in range(conversations) for k in range(first, last_call + 1)])

    at1, at2, at10, at100 = (
        window(1, 1, added),
        window(2, 6, added),
        window(8, 12, added),
        window(calls - 4, calls, added),
    )
    ratio = at100.median / at1.median
    items = len(last.get("input", []))
    history_kb = len(json.dumps(last.get("input", []))) / 1024
    per_call = [[added[c][k] for c in range(conversations)] for k in range(calls)]
    per_direct = [[directs[c][k] for c in range(conversations)] for k in range(calls)]
    xs = [float(k + 1) for k in range(calls)]
    plot = Plot(
        f"One conversation continued {calls} times (one model turn per call)",
        "call number",
        "ms per call",
        {
            "key4u added (− direct POST of the same bodies)": _points(xs, per_call),
            "direct POST of the same bodies": _points(xs, per_direct),
        },
    )
    cpu_head = sum(cpu[:10]) / (10 * conversations)
    cpu_tail = sum(cpu[-10:]) / (10 * conversations)
    return [
        Row(
            f"Continuation: one conversation continued {calls} times, added time at call {calls} ÷ call 1",
            f"{ratio:.2f}× (call 1 {at1.median:.2f} ms, call 10 {at10.median:.2f} ms, call {calls} "
            f"{at100.median:.2f} ms added)",
            f"call {calls} within 1.2× of call 1",
            ratio <= 1.2,
            f"a new prompt each call, the four local tools offered, none called; added = key4u_respond − "
            f"direct POST of the body that same call sent (captured from the "
            f"stand-in; in replay mode they carry the whole history, so the upstream's growing cost cancels out); "
            f"{conversations} conversations interleaved; call 1 {at1.fmt()} (a new conversation); calls 2–6 "
            f"{at2.fmt()} (the first continuations; call {calls} ÷ these: {at100.median / at2.median:.2f}×); "
            f"calls 8–12 {at10.fmt()}; calls {calls - 4}–{calls} {at100.fmt()}; direct POST at call 1 "
            f"{window(1, 1, directs).fmt()}, at call {calls} {window(calls - 4, calls, directs).fmt()}; server CPU "
            f"per call: calls 1–10 {cpu_head:.1f} ms, calls {calls - 9}–{calls} {cpu_tail:.1f} ms; history at call "
            f"{calls}: {items} items, {history_kb:.0f} KiB of input JSON per request",
            plot,
        )
    ]


# --- many tools ----------------------------------------------------------------------------------

TOOL_COUNTS = (5, 100, 1000)


def caller_functions(count: int) -> list[dict[str, Any]]:
    """``count`` distinct caller functions of a realistic size (the model is never asked to call them)."""
    return [
        {
            "name": f"lookup_{i:04d}",
            "description": f"Look up the records of collection {i} by key; returns the matching rows.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "key": {"type": "string", "description": "the record key"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
                    "fields": {"type": "array", "items": {"type": "string"}, "description": "columns to return"},
                },
                "required": ["key"],
            },
        }
        for i in range(count)
    ]


async def tools(tmp: Path, repeats: int = 15) -> list[Row]:
    """One turn offering 5, 100 and 1,000 tools: caller functions (sent with every call, as a host sends
    them) and a downstream server's tools (listed once); added ms against the direct POST of the same
    body, and against 5 tools."""
    return [*await _many_tools(tmp, repeats, downstream=False), *await _many_tools(tmp, repeats, downstream=True)]


def _servers_file(tmp: Path) -> Path:
    """A servers file of one downstream server per count in ``TOOL_COUNTS`` (``m<N>``, with N tools)."""
    path = tmp / "many_tools_servers.json"
    servers = {
        f"m{n}": {
            "command": sys.executable,
            "cwd": str(REPO),
            "args": ["-m", "benchmarks.many_tools_server"],
            "env": {"BENCH_TOOLS": str(n)},
        }
        for n in TOOL_COUNTS
    }
    path.write_text(json.dumps({"mcpServers": servers}))
    return path


async def _until_listed(client: Client, arguments: dict[str, Any]) -> None:
    """Wait for the downstream servers to start and list their tools (the hub starts them in the background)."""
    with anyio.fail_after(120):
        while (await client.call_tool("key4u_respond", arguments)).is_error:
            await anyio.sleep(0.2)


async def _many_tools(tmp: Path, repeats: int, *, downstream: bool) -> list[Row]:
    kind = "downstream tools" if downstream else "caller functions"
    async with controlled_standin() as standin:
        extra = {"KEY4U_MCP_SERVERS": str(_servers_file(tmp))} if downstream else {}
        db = tmp / f"tools-{'downstream' if downstream else 'caller'}.sqlite3"
        env = bridge_env(standin.base_url, tmp, KEY4U_API_STYLE="responses", KEY4U_DB_PATH=str(db), **extra)
        async with (
            stdio_bridge(env) as (ours, _),
            floor_bridge(standin.base_url) as theirs,
            httpx.AsyncClient() as http,
        ):
            requests = {
                n: (
                    {"prompt": "hello", "tools": [f"m{n}__lookup_{i:04d}" for i in range(n)]}
                    if downstream
                    else {"prompt": "hello", "tools": [], "functions": caller_functions(n)}
                )
                for n in TOOL_COUNTS
            }
            floor_requests = {
                n: {"prompt": "hello", "tools": [], "functions": caller_functions(n)} for n in TOOL_COUNTS
            }
            if downstream:
                await _until_listed(ours, requests[TOOL_COUNTS[-1]])
            else:
                for n in TOOL_COUNTS:
                    await _call_ms(theirs, "respond", floor_requests[n])  # warm up
            bodies: dict[int, list[dict[str, Any]]] = {}
            for n in TOOL_COUNTS:
                for _ in range(3):  # warm up
                    await _call_ms(ours, "key4u_respond", requests[n])
                bodies[n] = await _captured(standin, ours, requests[n])
                assert len(bodies[n]) == 1 and len(bodies[n][0]["tools"]) == n
                await replay_ms(http, standin.base_url, bodies[n])
            walls: dict[int, list[float]] = {n: [] for n in TOOL_COUNTS}
            directs: dict[int, list[float]] = {n: [] for n in TOOL_COUNTS}
            floors: dict[int, list[float]] = {n: [] for n in TOOL_COUNTS}
            for rep in range(repeats):
                for n in TOOL_COUNTS if rep % 2 else TOOL_COUNTS[::-1]:

                    async def key4u(n: int = n) -> float:
                        return (await _call_ms(ours, "key4u_respond", requests[n]))[0]

                    async def direct(n: int = n) -> float:
                        return await replay_ms(http, standin.base_url, bodies[n])

                    async def floor_(n: int = n) -> float:  # the same functions, through the floor bridge
                        return (await _call_ms(theirs, "respond", floor_requests[n]))[0]

                    steps = [key4u, direct] if downstream else [key4u, direct, floor_]
                    k, d, *f = await _rotated(rep, steps)
                    walls[n].append(k)
                    directs[n].append(d)
                    floors[n] += f
                if rep % 5 == 4:
                    await standin.clear()
    added = {n: [k - d for k, d in zip(walls[n], directs[n], strict=True)] for n in TOOL_COUNTS}
    base = TOOL_COUNTS[0]
    rows: list[Row] = []
    xs = [float(n) for n in TOOL_COUNTS]
    plot = Plot(
        f"One turn offering N {kind}",
        f"{kind} offered",
        "ms per turn",
        {
            "key4u added (− direct POST of the same body)": _points(xs, [added[n] for n in TOOL_COUNTS]),
            "key4u wall − key4u wall with 5": _points(
                xs, [[w - w5 for w, w5 in zip(walls[n], walls[base], strict=True)] for n in TOOL_COUNTS]
            ),
            "direct POST of the same body": _points(xs, [directs[n] for n in TOOL_COUNTS]),
        },
    )
    floor_added = {n: [f - d for f, d in zip(floors[n], directs[n], strict=True)] for n in TOOL_COUNTS if floors[n]}
    if floor_added:
        plot.series["floor bridge added (− direct POST)"] = _points(xs, [floor_added[n] for n in TOOL_COUNTS])
    how = (
        "a downstream server's tools, listed once and named in each call's tools argument"
        if downstream
        else "the functions sent with every call, as a host sends them"
    )
    for n in TOOL_COUNTS:
        a = spread(added[n])
        versus_base = spread([x - y for x, y in zip(added[n], added[base], strict=True)])
        wall_versus_base = spread([x - y for x, y in zip(walls[n], walls[base], strict=True)])
        body_kib = len(json.dumps(bodies[n][0])) / 1024
        request_kib = len(json.dumps(requests[n])) / 1024
        top = n == TOOL_COUNTS[-1]
        rows.append(
            Row(
                f"Tools: one turn offering {n:,} {kind}, key4u_respond − direct POST of the same body",
                f"{a.fmt()} added per turn"
                + (f"; floor bridge {spread(floor_added[n]).median:.2f} ms" if n in floor_added else ""),
                "≤ 10 ms added per turn" if top else "n/a (the curve to 1,000)",
                a.median <= 10.0 if top else None,
                (
                    f"against {base}, paired: added {versus_base.fmt()}, wall {wall_versus_base.fmt()}; "
                    if n != base
                    else ""
                )
                + (
                    f"key4u − floor bridge (the same functions through benchmarks/floor_bridge.py), paired: "
                    f"{spread([k - f for k, f in zip(walls[n], floors[n], strict=True)]).fmt()}; "
                    if floors[n]
                    else ""
                )
                + f"key4u {spread(walls[n]).fmt()}; direct POST {spread(directs[n]).fmt()}; "
                f"upstream body {body_kib:.0f} KiB, key4u_respond arguments {request_kib:.0f} KiB; {how}; "
                "a new conversation each call",
                plot if top else None,
            )
        )
    return rows
