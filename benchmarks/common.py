"""What every benchmark shares: the stand-in as a separate process, spawned servers, statistics."""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
