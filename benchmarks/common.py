"""What every benchmark shares: the stand-in as a separate process, spawned servers, statistics."""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import psutil
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

REPO = Path(__file__).resolve().parents[1]
KEY = "bench-key"


def script() -> str:
    return str(Path(sys.executable).parent / "key4u-mcp")


@dataclass(frozen=True)
class Spread:
    median: float
    q1: float
    q3: float
    n: int

    def fmt(self, unit: str = "ms", digits: int = 2) -> str:
        return f"{self.median:.{digits}f} {unit} (IQR {self.q1:.{digits}f}–{self.q3:.{digits}f}, n={self.n})"


@dataclass
class Plot:
    """A curve for ``benchmarks/growth.png``: per series, points of (x, median, q1, q3)."""

    title: str
    xlabel: str
    ylabel: str
    series: dict[str, list[tuple[float, float, float, float]]]
    logx: bool = False


@dataclass
class Row:
    name: str
    figure: str
    target: str
    met: bool | None
    detail: str = ""
    plot: Plot | None = None
    """A growth curve behind the figure, drawn into ``benchmarks/growth.png`` by the full run."""


def spread(values: Sequence[float]) -> Spread:
    ordered = sorted(values)
    if len(ordered) < 4:
        return Spread(statistics.median(ordered), ordered[0], ordered[-1], len(ordered))
    q = statistics.quantiles(ordered, n=4)
    return Spread(statistics.median(ordered), q[0], q[2], len(ordered))


@contextmanager
def standin_process() -> Iterator[tuple[str, psutil.Process]]:
    """The offline stand-in in its own process, so that its CPU is not counted against a client."""
    with subprocess.Popen(
        [script(), "stand-in", "--port", "0"], stdout=subprocess.PIPE, text=True, stderr=subprocess.DEVNULL
    ) as proc:
        try:
            assert proc.stdout is not None
            match = re.search(r"(http://\S+/v1)", proc.stdout.readline())
            assert match, "the stand-in did not start"
            yield match.group(1), psutil.Process(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


class StandInControl:
    """The benchmark stand-in (``benchmarks.standin_server``) in its own process: its URL, its process, and
    its control route (faults, the request bodies it received)."""

    def __init__(self, base_url: str, process: psutil.Process, http: httpx.AsyncClient) -> None:
        self.base_url = base_url
        self.process = process
        self.root = base_url.removesuffix("/v1")
        self._http = http

    async def set_faults(self, **faults: Any) -> None:
        (await self._http.post(f"{self.root}/bench/faults", json=faults)).raise_for_status()

    async def count(self) -> int:
        """How many request bodies the stand-in has received so far."""
        return (await self._requests(1 << 62))["count"]

    async def bodies_since(self, since: int) -> list[dict[str, Any]]:
        """The request bodies received from the ``since``-th on (``count()`` before the calls of interest)."""
        return (await self._requests(since))["bodies"]

    async def clear(self) -> None:
        """Forget the bodies received so far (``count()`` goes on counting)."""
        (await self._http.post(f"{self.root}/bench/clear")).raise_for_status()

    async def _requests(self, since: int) -> dict[str, Any]:
        reply = await self._http.get(f"{self.root}/bench/requests", params={"since": since})
        reply.raise_for_status()
        return reply.json()


@asynccontextmanager
async def controlled_standin() -> AsyncIterator[StandInControl]:
    """The offline stand-in in its own process, with the benchmarks' control route (see ``standin_server``)."""
    async with await anyio.open_process(
        [sys.executable, "-m", "benchmarks.standin_server"], stderr=subprocess.DEVNULL, cwd=REPO
    ) as proc:
        try:
            assert proc.stdout is not None
            line = b""
            with anyio.fail_after(30):
                while b"\n" not in line:
                    line += await proc.stdout.receive()
            match = re.search(r"(http://\S+/v1)", line.decode())
            assert match, "the stand-in did not start"
            async with httpx.AsyncClient(timeout=60) as http:
                yield StandInControl(match.group(1), psutil.Process(proc.pid), http)
        finally:
            proc.terminate()
            with anyio.move_on_after(10):
                await proc.wait()


def upstream_path(body: dict[str, Any]) -> str:
    """The endpoint a captured request body was sent to, from its shape."""
    return "/chat/completions" if "messages" in body else "/responses"


async def direct_post(http: httpx.AsyncClient, base_url: str, body: dict[str, Any]) -> None:
    """POST ``body`` as a plain client would (the body serialised here, the whole reply read), checked."""
    headers = {"Authorization": f"Bearer {KEY}"}
    url = base_url + upstream_path(body)
    if body.get("stream"):
        async with http.stream("POST", url, json=body, headers=headers) as reply:
            await reply.aread()
    else:
        reply = await http.post(url, json=body, headers=headers)
    assert reply.status_code == 200, reply.text[:300]


async def replay_ms(http: httpx.AsyncClient, base_url: str, bodies: Sequence[dict[str, Any]]) -> float:
    """Milliseconds to POST ``bodies`` one after the other, directly: what a bridge's requests cost at the wire."""
    t0 = time.perf_counter()
    for body in bodies:
        await direct_post(http, base_url, body)
    return (time.perf_counter() - t0) * 1000


def bridge_env(base_url: str, tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEY4U_", "OPENAI_"))}
    env.update(
        KEY4U_API_KEY=KEY, KEY4U_BASE_URL=base_url, KEY4U_DB_PATH=str(tmp / "bench.sqlite3"), KEY4U_LOG_LEVEL="WARNING"
    )
    env.update(extra)
    return env


def _child_pid(marker: str) -> int:
    children = psutil.Process().children()
    matches = [c for c in children if marker in " ".join(c.cmdline())]
    return matches[-1].pid


@asynccontextmanager
async def stdio_bridge(env: dict[str, str]) -> AsyncIterator[tuple[Client, psutil.Process]]:
    """A spawned ``key4u-mcp`` over stdio and its process."""
    with open(os.devnull, "w") as devnull:
        async with Client(
            stdio_client(StdioServerParameters(command=script(), env=env), errlog=devnull), mode="legacy"
        ) as client:
            yield client, psutil.Process(_child_pid("key4u-mcp"))


@asynccontextmanager
async def floor_bridge(base_url: str, stream: bool = True) -> AsyncIterator[Client]:
    """The floor bridge (``benchmarks.floor_bridge``) spawned over stdio, as a host would run it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEY4U_", "OPENAI_"))}
    env.update(FLOOR_BASE_URL=base_url, FLOOR_API_KEY=KEY, FLOOR_STREAM="1" if stream else "0")
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "benchmarks.floor_bridge"], cwd=str(REPO), env=env
    )
    with open(os.devnull, "w") as devnull:
        async with Client(stdio_client(params, errlog=devnull), mode="legacy") as client:
            yield client


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system
