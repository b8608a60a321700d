"""HTTP throughput (stateless JSON mode) with 1 and 2 server worker processes behind one port.

``key4u-mcp --transport http`` has no workers option, and N processes cannot share its port: uvicorn binds
without SO_REUSEPORT. Until it has one, each worker here is the unmodified command line run through
``benchmarks.reuseport_server`` (SO_REUSEPORT switched on), all sharing one SQLite file as the README's
replicas do; the kernel spreads connections among them. If the command grows a ``--workers`` option, it
is used instead.

Both server sets run at once on two ports; the load alternates between them, so that each 2-worker
figure is paired with a 1-worker figure measured next to it. The load comes from separate processes
(``benchmarks.http_load``: raw HTTP/1.1, one request per example), one per core.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import ExitStack, suppress
from pathlib import Path

import anyio
import httpx
import psutil

from benchmarks.common import REPO, Row, bridge_env, controlled_standin, cpu_seconds, script, spread
from server.cli.demo import KEY4U_PROMPT

PORTS = {1: 18610, 2: 18620}


def _has_workers_option() -> bool:
    out = subprocess.run([script(), "--help"], capture_output=True, text=True, check=False).stdout
    return "--workers" in out


def _start(workers: int, env: dict[str, str], stack: ExitStack, native: bool) -> list[psutil.Process]:
    args = ["--transport", "http", "--stateless", "--json-response", "--port", str(PORTS[workers])]
    if native:
        commands = [[script(), *args, "--workers", str(workers)]]
    else:
        commands = [[sys.executable, "-m", "benchmarks.reuseport_server", *args] for _ in range(workers)]
    procs: list[psutil.Process] = []
    for command in commands:
        popen = stack.enter_context(subprocess.Popen(command, env=env, cwd=REPO, stderr=subprocess.DEVNULL))
        stack.callback(popen.wait, 10)
        stack.callback(popen.terminate)
        procs.append(psutil.Process(popen.pid))
    return procs


def _tree(procs: list[psutil.Process]) -> list[psutil.Process]:
    """The server processes and their children (a native ``--workers`` forks them)."""
    out = list(procs)
    for proc in procs:
        with suppress(psutil.NoSuchProcess):
            out += proc.children(recursive=True)
    return out


def _listening(proc: psutil.Process, port: int) -> bool:
    try:
        return any(c.laddr and c.laddr.port == port and c.status == "LISTEN" for c in proc.net_connections("tcp"))
    except psutil.Error:
        return False


async def _wait_ready(procs: list[psutil.Process], port: int, native: bool) -> None:
    async with httpx.AsyncClient() as http:
        with anyio.fail_after(60):
            while native and not any(_listening(p, port) for p in _tree(procs)):
                await anyio.sleep(0.1)
            while not native and not all(_listening(p, port) for p in procs):
                await anyio.sleep(0.1)
            while True:
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/healthz", timeout=1)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await anyio.sleep(0.1)


async def _burst(
    port: int, clients: int, per_client: int, loaders: int, watched: dict[str, list[psutil.Process]], arguments: Path
) -> dict[str, float]:
    """``clients`` clients (spread over ``loaders`` processes) each running the example ``per_client`` times:
    examples/s from the common start to the last answer, errors, latencies, and CPU in cores."""
    start_at = time.time() + 0.8  # the load processes start up first
    share = [clients // loaders + (i < clients % loaders) for i in range(loaders)]
    commands = [
        [
            sys.executable,
            "-m",
            "benchmarks.http_load",
            str(port),
            str(n),
            str(start_at),
            str(per_client),
            str(arguments),
        ]
        for n in share
    ]
    outputs: list[str] = []
    cpu_at_start: dict[str, float] = {}

    async def load(command: list[str]) -> None:
        result = await anyio.run_process(command, cwd=REPO, stderr=subprocess.DEVNULL)
        outputs.append(result.stdout.decode())

    async def sample_cpu() -> None:
        await anyio.sleep(max(0.0, start_at - time.time()))
        for name, procs in watched.items():
            cpu_at_start[name] = sum(cpu_seconds(p) for p in procs)

    async with anyio.create_task_group() as tg:
        for command in commands:
            tg.start_soon(load, command)
        tg.start_soon(sample_cpu)
    cpu_after = {name: sum(cpu_seconds(p) for p in procs) for name, procs in watched.items()}
    results = [json.loads(o) for o in outputs]
    elapsed = max(r["ended"] for r in results) - start_at
    latencies = sorted(x for r in results for x in r["latencies"])
    return {
        "rate": sum(r["completed"] for r in results) / elapsed,
        "errors": sum(r["errors"] for r in results),
        "p50": spread(latencies).median if latencies else float("nan"),
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan"),
        "load_cpu": sum(r["cpu"] for r in results) / elapsed,
        **{f"cpu_{name}": (cpu_after[name] - cpu_at_start[name]) / elapsed for name in watched},
    }


async def workers_postgres(tmp: Path) -> list[Row]:
    """The same, with both server sets on one PostgreSQL (``KEY4U_DB_URL``): replicas as on several hosts."""
    from benchmarks.store import postgres_server

    with postgres_server() as server:
        return await workers(tmp, databases={n: server.create_database(f"workers_{n}") for n in (1, 2)})


async def workers(
    tmp: Path, clients: int = 200, per_client: int = 1, repeats: int = 3, databases: dict[int, str] | None = None
) -> list[Row]:
    """Examples/s of the Key4U example at ``clients`` concurrent clients, 1 worker against 2 workers
    (sharing a SQLite file, or the PostgreSQL ``databases`` per server set)."""
    native = _has_workers_option()
    cores = psutil.cpu_count() or 1
    loaders = max(2, cores)
    bursts: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    arguments = tmp / "workers-arguments.json"
    arguments.write_text(json.dumps({"prompt": KEY4U_PROMPT}))  # the Key4U example
    async with controlled_standin() as standin:
        with ExitStack() as stack:
            servers: dict[int, list[psutil.Process]] = {}
            for n in (1, 2):
                if databases is None:
                    env = bridge_env(standin.base_url, tmp, KEY4U_DB_PATH=str(tmp / f"workers-{n}.sqlite3"))
                else:
                    env = bridge_env(standin.base_url, tmp, KEY4U_DB_URL=databases[n])
                servers[n] = _start(n, env, stack, native)
            for n in (1, 2):
                await _wait_ready(servers[n], PORTS[n], native)
            for n in (1, 2):  # warm each set: imports on first use, the database, connection pools
                watched = {"server": _tree(servers[n]), "standin": [standin.process]}
                await _burst(PORTS[n], 20, 1, loaders, watched, arguments)
            for rep in range(repeats):
                for n in (1, 2) if rep % 2 == 0 else (2, 1):
                    watched = {"server": _tree(servers[n]), "standin": [standin.process]}
                    bursts[n].append(await _burst(PORTS[n], clients, per_client, loaders, watched, arguments))
    ratio = spread([b["rate"] / a["rate"] for a, b in zip(bursts[1], bursts[2], strict=True)])
    how = (
        "key4u-mcp --workers"
        if native
        else "N unmodified key4u-mcp processes on one port via benchmarks/reuseport_server.py "
        "(SO_REUSEPORT; the command has no --workers option)"
    )
    rows: list[Row] = []
    for n in (1, 2):
        b = bursts[n]
        errors = int(sum(x["errors"] for x in b))
        rate = spread([x["rate"] for x in b])
        figure = f"{rate.median:.1f} examples/s, p50 {spread([x['p50'] for x in b]).median:.0f} ms, p99 " + (
            f"{spread([x['p99'] for x in b]).median:.0f} ms"
        )
        if n == 2:
            figure += f"; {ratio.median:.2f}× one worker"
        rows.append(
            Row(
                f"HTTP workers: {n} server process{'es' if n > 1 else ''} behind one port, {clients} clients, "
                f"stateless JSON, {'SQLite' if databases is None else 'PostgreSQL'}",
                figure,
                f"near-linear growth to {cores} cores (≥ {0.9 * min(2, cores):.1f}× one worker); 0 errors"
                if n == 2
                else "0 errors",
                errors == 0 and (n == 1 or ratio.median >= 0.9 * min(2, cores)),
                f"{errors} errors over {len(b)} bursts of {clients} clients × {per_client} example"
                f"{'s' if per_client > 1 else ''} (examples/s from their common start to the last answer); "
                f"{rate.fmt('examples/s', 1)}; CPU in cores: servers "
                f"{spread([x['cpu_server'] for x in b]).median:.2f}, stand-in "
                f"{spread([x['cpu_standin'] for x in b]).median:.2f}, load generator "
                f"{spread([x['load_cpu'] for x in b]).median:.2f} ({loaders} processes, raw HTTP/1.1 keep-alive, "
                f"one tools/call request per example); {how}; both sets up at once, bursts alternating"
                + (f"; 2 workers ÷ 1 worker, paired by burst: {ratio.fmt('×', 2)}" if n == 2 else ""),
            )
        )
    return rows
