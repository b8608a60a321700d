"""The HTTP transport served as ``serve_http`` serves it (guarded protocol, keep-alive setting), on a thread."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from server.config import Settings
from server.transports.asgi_thread import ThreadedServer
from server.transports.http import Health, build_http_app, guarded_protocol


@contextmanager
def served(settings: Settings, *, stateless: bool = False, host: str = "127.0.0.1") -> Iterator[ThreadedServer]:
    """``build_http_app`` on a free loopback port, with the connection limits of ``settings``."""
    app = build_http_app(settings, host, stateless=stateless)
    server = ThreadedServer(
        app,
        lifespan="on",
        http=guarded_protocol(settings),
        timeout_keep_alive=settings.mcp_keep_alive_timeout,
    )
    with server:
        yield server


def health_of(server: ThreadedServer) -> Health:
    app = server._server.config.app
    assert isinstance(app, Health)
    return app


@asynccontextmanager
async def http_client(url: str, token: str | None = None) -> AsyncIterator[Client]:
    """A real MCP client (the SDK's Streamable HTTP client) on ``url``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
    ):
        yield client
