"""``key4u-mcp --transport http --workers N``: N processes serve one port; the parent supervises them."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import psutil
import pytest

from tests.conftest import FAKE_KEY
from tests.helpers import script, text_of
from tests.server.transports.serving import http_client

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(sys.platform == "win32", reason="--workers forks (POSIX)"),
]


@contextmanager
def workers(tmp_path: Path, count: int) -> Iterator[tuple[subprocess.Popen[str], str, list[str]]]:
    """The service with ``count`` workers on a free port: its process, its URL and the lines it logged."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEY4U_", "OPENAI_"))}
    env.update(KEY4U_API_KEY=FAKE_KEY, KEY4U_BASE_URL="http://127.0.0.1:9/v1", KEY4U_DB_PATH=str(tmp_path / "c.db"))
    command = [script(), "--transport", "http", "--stateless", "--json-response", "--port", "0"]
    proc = subprocess.Popen(
        [*command, "--workers", str(count)], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    logged: list[str] = []
    assert proc.stderr is not None
    stderr = proc.stderr
    reader = threading.Thread(target=lambda: logged.extend(stderr), daemon=True)  # never let the pipe fill
    reader.start()
    try:
        deadline = time.monotonic() + 30
        url = None
        while url is None and time.monotonic() < deadline:
            found = [m for line in list(logged) if (m := re.search(r"workers serving (http://\S+/mcp)", line))]
            url = found[0].group(1) if found else None
            time.sleep(0.05)
        assert url, logged
        yield proc, url, logged
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reader.join(10)  # the workers are gone too: the pipe is at its end
        stderr.close()


def worker_pids(proc: subprocess.Popen[str]) -> set[int]:
    """The supervisor's live children; one reaped between listing and looking is not among them."""
    pids: set[int] = set()
    for child in psutil.Process(proc.pid).children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.status() != psutil.STATUS_ZOMBIE:
                pids.add(child.pid)
    return pids


def replaced(proc: subprocess.Popen[str], dead: int) -> bool:
    """Two workers again, and ``dead`` not among them (one look: the dead one may still be exiting)."""
    pids = worker_pids(proc)
    return len(pids) == 2 and dead not in pids


async def until(condition: object, seconds: float = 20) -> None:
    assert callable(condition)
    with anyio.fail_after(seconds):
        while not condition():
            await anyio.sleep(0.05)


async def test_workers_share_the_port_and_a_dead_one_is_replaced(tmp_path: Path) -> None:
    with workers(tmp_path, 2) as (proc, url, logged):
        await until(lambda: len(worker_pids(proc)) == 2)
        first = worker_pids(proc)
        for _ in range(6):  # each request may reach either worker
            async with http_client(url) as client:
                result = await client.call_tool("math_calculator", {"operation": "add", "a": 2, "b": 3})
            assert not result.is_error and "5" in text_of(result)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        await until(lambda: replaced(proc, victim))
        async with http_client(url) as client:
            result = await client.call_tool("current_time", {})
        assert not result.is_error
        # It died soon after it started: the next start waits, and the pause doubles while that goes on.
        assert any(f"worker {victim} exited" in line and "in its place in 1 s" in line for line in logged)
        again = min(worker_pids(proc) - first)
        os.kill(again, signal.SIGKILL)
        await until(lambda: replaced(proc, again))
        assert any(f"worker {again} exited" in line and "in its place in 2 s" in line for line in logged)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in first)
    assert FAKE_KEY not in "".join(logged)


def test_workers_out_of_range_are_a_usage_error() -> None:
    done = subprocess.run([script(), "--transport", "http", "--workers", "0"], capture_output=True, text=True)
    assert done.returncode == 2 and "--workers must be from 1 to 64" in done.stderr


def test_workers_without_stateless_are_refused_with_the_reason() -> None:
    done = subprocess.run(
        [script(), "--transport", "http", "--workers", "2", "--port", "0"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "--workers needs --stateless" in done.stderr
