"""Downstream MCP servers whose tools the remote model may call.

The configuration is the ``mcpServers`` object users already have from Claude Desktop
(``command``/``args``/``env``/``cwd`` for stdio, ``url``/``headers`` for Streamable HTTP), with
optional ``allow``/``deny``/``modes`` per server and a top-level ``localTools`` policy.

Each server is kept connected by its own task: started, its tools listed (and listed again on
``notifications/tools/list_changed``), pinged, and after a failure restarted with backoff. A
server that fails never affects the others; its state is reported. Child processes are ended
when the bridge stops.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.lowlevel
import httpx2
from anyio.abc import TaskGroup
from mcp import Client, StdioServerParameters
from mcp.client import IncomingMessage, Transport
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, Tool, ToolListChangedNotification
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from server.config import default_servers_file
from server.toolsets.base import OfferedTool, PolicyToolset, PrefixedToolset, Toolset, error_result
from server.toolsets.policy import SEPARATOR, Mode, Policy

logger = logging.getLogger(__name__)

_SERVER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class ServerConfig(BaseModel):
    """One entry of ``mcpServers``: how to reach the server (a command or a URL, not both) and its policy."""

    model_config = ConfigDict(extra="ignore")
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    allow: list[str] = Field(default_factory=lambda: ["*"])
    deny: list[str] = Field(default_factory=list)
    modes: dict[str, Mode] = Field(default_factory=dict)
    disabled: bool = False
    startup_timeout: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _one_transport(self) -> ServerConfig:
        if bool(self.command) == bool(self.url):
            raise ValueError("give either command (stdio) or url (Streamable HTTP)")
        return self

    @property
    def policy(self) -> Policy:
        return Policy(allow=self.allow, deny=self.deny, modes=self.modes)


class HubConfig(BaseModel):
    """The MCP servers file: the downstream servers by name, and the policy for the local tools."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    servers: dict[str, ServerConfig] = Field(default_factory=dict, alias="mcpServers")
    local_tools: Policy = Field(default_factory=Policy, alias="localTools")

    @model_validator(mode="after")
    def _names(self) -> HubConfig:
        for name in self.servers:
            if not _SERVER_NAME.match(name) or SEPARATOR in name:
                raise ValueError(f"server name {name!r}: use letters, digits, - and single _ (up to 32)")
        return self


def load_hub_config(path: Path | None) -> tuple[HubConfig, Path | None]:
    """The configuration at ``path`` (or the default place, if a file is there)."""
    chosen = path or default_servers_file()
    if path is None and not chosen.exists():
        return HubConfig(), None
    try:
        data = json.loads(chosen.read_text(encoding="utf-8"))
        return HubConfig.model_validate(data), chosen
    except (OSError, ValueError, ValidationError) as exc:
        raise ValueError(f"cannot read the MCP servers file {chosen}: {exc}") from exc


def qualified(server: str, tool: str) -> str:
    return f"{server}{SEPARATOR}{tool}"


@dataclass
class Downstream:
    """One downstream MCP server: its connection, status, and the tools it last listed; a toolset for them.

    A failure is kept in ``status`` and ``error``, and a failed call comes back as an error result;
    one server's failure never affects the others.
    """

    name: str
    config: ServerConfig
    status: Literal["starting", "ready", "failed", "disabled"] = "starting"
    error: str | None = None
    listed: list[Tool] = field(default_factory=list[Tool])
    failures: int = 0
    next_retry: float | None = None
    client: Client | None = None  # while connected
    _changed: anyio.Event = field(default_factory=anyio.Event)
    _broken: anyio.Event = field(default_factory=anyio.Event)
    _ready: anyio.Event = field(default_factory=anyio.Event)
    #: Set once the first attempt to start has ended, ready or failed.
    settled: anyio.Event = field(default_factory=anyio.Event)

    async def _transport(self, stack: AsyncExitStack[bool | None]) -> StdioServerParameters | Transport:
        cfg = self.config
        if cfg.command:
            env = {**os.environ, **cfg.env} if cfg.env else None
            return StdioServerParameters(command=cfg.command, args=cfg.args, env=env, cwd=cfg.cwd)
        http = httpx2.AsyncClient(headers=cfg.headers, timeout=httpx2.Timeout(30.0, read=300.0))
        stack.push_async_callback(http.aclose)
        return streamable_http_client(cfg.url or "", http_client=http)

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, ToolListChangedNotification):
            self._changed.set()
        elif isinstance(message, Exception):
            self._broken.set()

    async def run(self, ping_interval: float) -> None:
        """Keep this server connected until cancelled."""
        if self.config.disabled:
            self.status = "disabled"
            self.settled.set()
            return
        while True:
            started = time.monotonic()
            try:
                await self._session(ping_interval)
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:
                self.error = _describe(exc)
                logger.warning("downstream server %s failed: %s", self.name, self.error)
            self.status, self.client, self.listed = "failed", None, []
            self.settled.set()
            self._ready = anyio.Event()
            self.failures = 1 if time.monotonic() - started > 120 else self.failures + 1
            delay = min(60.0, 0.5 * 2 ** (self.failures - 1))
            self.next_retry = time.time() + delay
            await anyio.sleep(delay)

    async def _session(self, ping_interval: float) -> None:
        self.status = "starting"
        self._broken = anyio.Event()
        async with AsyncExitStack() as stack:
            transport = await self._transport(stack)
            client = await stack.enter_async_context(
                Client(transport, mode="legacy", message_handler=self._on_message, cache=None)
            )
            with anyio.fail_after(self.config.startup_timeout):
                await self._list(client)
            self.client, self.status, self.error, self.next_retry = client, "ready", None, None
            self._ready.set()
            self.settled.set()
            logger.info("downstream server %s ready with %d tools", self.name, len(self.listed))
            while True:
                with anyio.move_on_after(ping_interval):
                    async with anyio.create_task_group() as tg:

                        async def wait_broken(scope: anyio.CancelScope = tg.cancel_scope) -> None:
                            await self._broken.wait()
                            scope.cancel()

                        tg.start_soon(wait_broken)
                        await self._changed.wait()
                        tg.cancel_scope.cancel()
                if self._broken.is_set():
                    raise ConnectionError("the connection broke")
                if self._changed.is_set():
                    self._changed = anyio.Event()
                    await self._list(client)
                    continue
                with anyio.fail_after(10):
                    # The connection is made in mode="legacy" (the handshake protocol), where ping exists;
                    # mcp 2.3 marks it deprecated for the 2026-07-28 protocol, which this client does not speak.
                    await client.send_ping()  # pyright: ignore[reportDeprecated]

    async def _list(self, client: Client) -> None:
        tools: list[Tool] = []
        cursor = None
        while True:
            page = await client.list_tools(cursor=cursor) if cursor else await client.list_tools()
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        self.listed = tools

    # --- the Toolset protocol -------------------------------------------------------------

    def tools(self) -> list[OfferedTool]:
        return [OfferedTool.from_listing(t, self) for t in self.listed]

    def problem(self) -> str | None:
        if self.status in ("failed", "starting"):
            return f"MCP server {self.name!r} is {self.status}: {self.error or 'still starting'}"
        return None

    def might_offer(self, name: str) -> bool:
        return self.status != "disabled"

    async def call(self, name: str, arguments: dict[str, Any], timeout: float) -> CallToolResult:
        if self.status != "ready" or self._broken.is_set():
            # Restarting after a crash or hang: give it a moment before reporting it down.
            with anyio.move_on_after(min(timeout / 2, 10.0)):
                while self.status != "ready" or self._broken.is_set():
                    await self._ready.wait()
                    await anyio.lowlevel.checkpoint()
        client = self.client
        if client is None or self.status != "ready":
            return error_result(
                f"the MCP server {self.name!r} is unavailable ({self.status}): {self.error or 'starting'}"
            )
        try:
            with anyio.fail_after(timeout):
                return await client.call_tool(name, arguments)
        except TimeoutError:
            self._broken.set()  # a hung server is restarted
            return error_result(f"{self.name}{SEPARATOR}{name} did not answer within {timeout:g} s")
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            self._broken.set()
            return error_result(f"{self.name}{SEPARATOR}{name} failed: {_describe(exc)}")

    def report(self) -> dict[str, Any]:
        return {
            "server": self.name,
            "status": self.status,
            "tools": len(self.listed),
            "error": self.error,
            "transport": "stdio" if self.config.command else "http",
        }


def _describe(exc: BaseException) -> str:
    """A short account of what went wrong: the first failure inside a task group's exception group."""
    inner: object = getattr(exc, "exceptions", None)  # an ExceptionGroup's members
    if isinstance(inner, tuple) and inner and isinstance(inner[0], BaseException):
        return _describe(inner[0])
    return f"{type(exc).__name__}: {exc}"[:300]


class Hub:
    """The downstream servers: keeps each connected, and offers each as a toolset.

    Each server's tools pass its policy under their own names, then take the ``<server>__``
    prefix; a call goes back to the server that listed the tool.
    """

    def __init__(self, config: HubConfig, *, ping_interval: float = 15.0) -> None:
        self.config = config
        self.servers = {name: Downstream(name, cfg) for name, cfg in config.servers.items()}
        self.ping_interval = ping_interval
        self.toolsets: list[Toolset] = [
            PrefixedToolset(PolicyToolset(server, server.config.policy), qualified(server.name, ""))
            for server in self.servers.values()
        ]

    def start(self, tg: TaskGroup) -> None:
        for server in self.servers.values():
            tg.start_soon(server.run, self.ping_interval, name=f"downstream:{server.name}")

    async def wait_ready(self, timeout: float) -> None:
        """Wait until every server has finished its first attempt (ready or failed), at most ``timeout``."""
        with anyio.move_on_after(timeout):
            for server in self.servers.values():
                await server.settled.wait()

    def report(self) -> list[dict[str, Any]]:
        return [s.report() for s in self.servers.values()]
