"""Hostile HTTP clients: stalled request heads and bodies, idle keep-alive connections, connection floods.

Raw sockets play the attackers against a real server on loopback; the SDK's MCP client plays the
real client that must still get through.
"""

from __future__ import annotations

import selectors
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from server.config import load_settings
from server.transports.asgi_thread import ThreadedServer
from server.transports.http import _check_file_limit, guarded_protocol
from tests.helpers import settings_for
from tests.server.transports.serving import http_client, served

pytestmark = pytest.mark.anyio

HALF_A_REQUEST_LINE = b"POST /mcp HT"
#: A complete request head whose body never comes (the app then waits for it).
STALLED_BODY = (
    b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    b"accept: application/json, text/event-stream\r\ncontent-length: 1000\r\n\r\n"
    b'{"jsonrpc": "2.0", '
)


@contextmanager
def raw_sockets(server: ThreadedServer, count: int, send: bytes) -> Iterator[dict[socket.socket, float]]:
    """``count`` connections that each send ``send`` and then nothing: socket -> when it was opened."""
    opened: dict[socket.socket, float] = {}
    try:
        for _ in range(count):
            sock = socket.create_connection((server.host, server.port), timeout=5)
            opened[sock] = time.monotonic()
            if send:
                sock.sendall(send)
        yield opened
    finally:
        for sock in opened:
            sock.close()


def closed_by_server(socks: list[socket.socket], wait: float) -> dict[socket.socket, float]:
    """Which of ``socks`` the server closes within ``wait`` seconds (EOF or reset), and when each was seen closed."""
    closed: dict[socket.socket, float] = {}
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + wait
        while len(closed) < len(socks):
            remaining = deadline - time.monotonic()
            if remaining < 0:
                break
            for key, _ in selector.select(min(remaining, 0.05)):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65536)
                except (ConnectionResetError, TimeoutError):
                    data = b""
                if not data:
                    closed[sock] = time.monotonic()
                    selector.unregister(sock)
    return closed


def read_response(sock: socket.socket) -> bytes:
    """Everything the server sends on ``sock`` until it closes or 5 s pass."""
    sock.settimeout(5)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return received


async def call_a_tool(url: str) -> float:
    async with http_client(url) as client:
        result = await client.call_tool("math_calculator", {"operation": "add", "a": 2, "b": 3})
    assert result.structured_content is not None and result.structured_content["result"] == 5
    return time.monotonic()


async def test_stalled_request_heads_are_closed_after_the_header_timeout_while_a_real_client_gets_through(
    tmp_path: Path,
) -> None:
    timeout = 3.0
    settings = settings_for("http://127.0.0.1:9/v1", tmp_path, mcp_header_timeout=timeout)
    with served(settings) as server, raw_sockets(server, 100, HALF_A_REQUEST_LINE) as stalled:
        served_at = await call_a_tool(f"{server.url}/mcp")
        assert served_at < min(stalled.values()) + timeout  # served while all of them were stalled
        socks = list(stalled)
        assert closed_by_server(socks, 0) == {}, "a stalled socket was closed before its header timeout"
        closed = closed_by_server(socks, timeout + 5)
    assert set(closed) == set(socks), f"{len(socks) - len(closed)} stalled sockets were left open"
    for sock, when in closed.items():
        assert timeout - 0.1 <= when - stalled[sock] <= timeout + 2.5


async def test_beyond_the_connection_cap_the_longest_idle_connections_make_room_for_a_real_client(
    tmp_path: Path,
) -> None:
    timeout, cap = 4.0, 16
    settings = settings_for("http://127.0.0.1:9/v1", tmp_path, mcp_header_timeout=timeout, mcp_max_connections=cap)
    with served(settings) as server, raw_sockets(server, 3 * cap, HALF_A_REQUEST_LINE) as stalled:
        socks = list(stalled)  # oldest first
        evicted = closed_by_server(socks, 1.0)
        assert set(evicted) == set(socks[: 2 * cap]), "the oldest stalled connections should make room"
        served_at = await call_a_tool(f"{server.url}/mcp")
        closed = closed_by_server(socks, timeout + 5)
    assert served_at < min(stalled.values()) + timeout
    assert set(evicted) | set(closed) == set(socks)


async def test_with_every_connection_busy_a_new_one_gets_503_at_once_and_stalled_bodies_time_out(
    tmp_path: Path,
) -> None:
    timeout, cap = 2.0, 4
    settings = settings_for("http://127.0.0.1:9/v1", tmp_path, mcp_header_timeout=timeout, mcp_max_connections=cap)
    with served(settings) as server, raw_sockets(server, cap, STALLED_BODY) as busy:
        with anyio.fail_after(5):  # until the server has read the heads: each connection has a request in flight
            while len(server._server.server_state.tasks) < cap:
                await anyio.sleep(0.02)
        started = time.monotonic()
        with socket.create_connection((server.host, server.port), timeout=5) as extra:
            refused = read_response(extra)
        assert refused.startswith(b"HTTP/1.1 503 "), refused
        assert time.monotonic() - started < 1.0
        closed = closed_by_server(list(busy), timeout + 5)
        assert set(closed) == set(busy), "a request body that stalled was never timed out"
        for sock, when in closed.items():
            assert timeout - 0.1 <= when - busy[sock] <= timeout + 2.5
        await call_a_tool(f"{server.url}/mcp")  # room again


def test_idle_keep_alive_connections_are_closed(tmp_path: Path) -> None:
    settings = settings_for("http://127.0.0.1:9/v1", tmp_path, mcp_keep_alive_timeout=1, mcp_header_timeout=2.0)
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with served(settings) as server, raw_sockets(server, 2, request) as opened:
        silent, trickling = list(opened)
        for sock in opened:
            sock.settimeout(5)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        answered = time.monotonic()
        trickling.sendall(b"G")  # the first byte of a next request head, then nothing
        closed = closed_by_server([silent, trickling], 6)
    assert set(closed) == {silent, trickling}
    assert 0.8 <= closed[silent] - answered <= 3.0  # the keep-alive timeout
    assert 1.8 <= closed[trickling] - answered <= 4.5  # the header timeout, from that first byte


def test_the_limits_are_settings_with_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = load_settings()
    assert (defaults.mcp_header_timeout, defaults.mcp_keep_alive_timeout, defaults.mcp_max_connections) == (
        10.0,
        10,
        512,
    )
    monkeypatch.setenv("KEY4U_MCP_HEADER_TIMEOUT", "2.5")
    monkeypatch.setenv("KEY4U_MCP_KEEP_ALIVE_TIMEOUT", "7")
    monkeypatch.setenv("KEY4U_MCP_MAX_CONNECTIONS", "64")
    chosen = load_settings()
    protocol = guarded_protocol(chosen)
    assert (protocol.header_timeout, protocol.max_connections, chosen.mcp_keep_alive_timeout) == (2.5, 64, 7)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file limits")
def test_a_file_limit_below_the_connection_cap_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _: (256, 4096))
    _check_file_limit(512)
    assert "ulimit -n" in caplog.text and "KEY4U_MCP_MAX_CONNECTIONS is 512" in caplog.text
    caplog.clear()
    _check_file_limit(64)
    assert caplog.text == ""
