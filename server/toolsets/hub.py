"""Downstream MCP servers whose tools the remote model may call.

The configuration is the ``mcpServers`` object users already have from Claude Desktop
(``command``/``args``/``env``/``cwd`` for stdio, ``url``/``headers`` for Streamable HTTP), with
optional ``allow``/``deny``/``modes`` per server and a top-level ``localTools`` policy.

Each server is kept connected by its own task: started, its tools listed (and listed again on
``notifications/tools/list_changed``), pinged, and after a failure restarted with backoff. A
server that fails never affects the others; its state is reported. Child processes are ended
when the bridge stops.

A downstream process is given only the SDK's safe environment (``PATH``, ``HOME``, ...) and its
entry's own ``env``, never this process's keys; on Linux it is started through the guard in
``server.toolsets.child``, so that it dies with the bridge even when the bridge is killed. The
whole start (process, ``initialize``, first ``tools/list``) is bounded by ``startup_timeout``.
Each child learns its nesting depth (``KEY4U_MCP_DEPTH``); at depth ``MAX_DEPTH`` no downstream
server is started, so a key4u-mcp listed in its own servers file cannot multiply.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
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
from mcp.client.stdio import get_default_environment
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, ReadResourceResult, Tool, ToolListChangedNotification
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from server.config import default_servers_file
from server.toolsets import child
from server.toolsets.base import Memo, OfferedTool, PolicyToolset, PrefixedToolset, RunMode, Toolset, error_result
from server.toolsets.policy import SEPARATOR, Mode, Policy

logger = logging.getLogger(__name__)

_SERVER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")

#: The environment variable that tells a process how deeply it is nested in key4u-mcp bridges.
DEPTH_VARIABLE = "KEY4U_MCP_DEPTH"
#: At this depth a hub starts no downstream servers.
MAX_DEPTH = 2
#: Prefixes of this process's secrets: never passed to a downstream server unless its entry sets them.
PRIVATE_PREFIXES = ("KEY4U_", "OPENAI_")
#: How long after a server's startup deadline ``wait_ready`` still waits for it to report.
_SETTLE_GRACE = 0.5


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


def current_depth() -> int:
    """How deeply this process is nested in key4u-mcp bridges (``KEY4U_MCP_DEPTH``; 0 at the top)."""
    try:
        return max(0, int(os.environ.get(DEPTH_VARIABLE, "0")))
    except ValueError:
        return 0


def child_environment(own: dict[str, str], depth: int) -> dict[str, str]:
    """The environment of a downstream process: the SDK's safe variables, its entry's ``env``, its depth.

    Nothing else of this process's environment passes, and no ``KEY4U_``/``OPENAI_`` variable
    unless the entry's own ``env`` sets it. ``depth`` is this process's depth.
    """
    env = {k: v for k, v in get_default_environment().items() if not k.upper().startswith(PRIVATE_PREFIXES)}
    env.update(own)
    env[DEPTH_VARIABLE] = str(depth + 1)
    return env


def _check_command(command: str, env: dict[str, str], cwd: str | None) -> None:
    """Raise FileNotFoundError if ``command`` cannot be found as ``exec`` would look for it.

    Through the guard, a missing command would only show as a closed connection.
    """
    base = cwd or os.getcwd()
    if os.sep in command or (os.altsep and os.altsep in command):
        found = os.path.exists(os.path.join(base, command))
    else:
        dirs = env.get("PATH", os.defpath).split(os.pathsep)
        path = os.pathsep.join(os.path.join(base, d) if not os.path.isabs(d) else d for d in dirs)
        found = shutil.which(command, path=path) is not None
    if not found:
        raise FileNotFoundError(2, "no such command", command)


class ResourceReadError(Exception):
    """A downstream server's resource could not be read: the server is down, refused, or has no such one."""


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
    #: This process's nesting depth; the child gets ``depth + 1``.
    depth: int = field(default_factory=current_depth)
    #: Why this server is not started at all (set by the hub), or None.
    blocked: str | None = None
    #: When the current attempt to start must have succeeded (``anyio.current_time()``), once begun.
    startup_deadline: float | None = None
    _changed: anyio.Event = field(default_factory=anyio.Event)
    _broken: anyio.Event = field(default_factory=anyio.Event)
    _ready: anyio.Event = field(default_factory=anyio.Event)
    #: Set once the first attempt to start has ended, ready or failed.
    settled: anyio.Event = field(default_factory=anyio.Event)
    _offered: Memo[list[Tool], list[OfferedTool]] = field(
        default_factory=Memo[list[Tool], list[OfferedTool]], repr=False
    )

    async def _transport(self, stack: AsyncExitStack[bool | None]) -> StdioServerParameters | Transport:
        cfg = self.config
        if cfg.command:
            env = child_environment(cfg.env, self.depth)
            if child.supported():
                _check_command(cfg.command, env, cfg.cwd)
            command, args = child.guarded(cfg.command, cfg.args, env)
            return StdioServerParameters(command=command, args=args, env=env, cwd=cfg.cwd)
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
        if self.blocked is not None:
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

    def block(self, reason: str) -> None:
        """Never start this server: it reports ``failed`` with ``reason``."""
        self.blocked, self.status, self.error = reason, "failed", reason
        self.settled.set()

    def settle_by(self) -> float:
        """When (``anyio.current_time()``) the current attempt to start will have ended, at the latest."""
        if self.startup_deadline is not None:
            return self.startup_deadline + _SETTLE_GRACE
        return anyio.current_time() + self.config.startup_timeout + _SETTLE_GRACE

    async def _session(self, ping_interval: float) -> None:
        """One connection, from the start to its failure; the start is bounded by ``startup_timeout``.

        At the deadline the server is reported failed at once, while its process is still being ended.
        """
        self.status = "starting"
        self._broken = anyio.Event()
        limit = self.config.startup_timeout
        self.startup_deadline = anyio.current_time() + limit
        started = anyio.Event()
        stage = ["did not start"]
        timed_out: list[str] = []

        async def watchdog(session: anyio.CancelScope) -> None:
            with anyio.move_on_after(limit):
                await started.wait()
                return
            timed_out.append(f"{stage[0]} within {limit:g} s")
            self.status, self.error = "failed", f"TimeoutError: {timed_out[0]}"
            self.settled.set()
            session.cancel()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(watchdog, tg.cancel_scope)
                await self._connected(ping_interval, started, stage)
        except Exception as exc:
            if timed_out:
                raise TimeoutError(timed_out[0]) from exc
            raise
        if timed_out:
            raise TimeoutError(timed_out[0])

    async def _connected(self, ping_interval: float, started: anyio.Event, stage: list[str]) -> None:
        async with AsyncExitStack() as stack:
            transport = await self._transport(stack)
            stage[0] = "did not answer initialize"
            client = await stack.enter_async_context(
                Client(transport, mode="legacy", message_handler=self._on_message, cache=None)
            )
            stage[0] = "did not answer tools/list"
            await self._list(client)
            started.set()
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
                    with anyio.fail_after(self.config.startup_timeout):
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
        return self._offered.get(self.listed, lambda listed: [OfferedTool.from_listing(t, self) for t in listed])

    def problem(self) -> str | None:
        if self.status in ("failed", "starting"):
            return f"MCP server {self.name!r} is {self.status}: {self.error or 'still starting'}"
        return None

    def might_offer(self, name: str) -> bool:
        return self.status != "disabled"

    async def read_resource(self, uri: str, timeout: float) -> ReadResourceResult:
        """One of this server's resources; a ``ResourceReadError`` says why it could not be read."""
        client = self.client
        if self.blocked is not None or client is None or self.status != "ready":
            raise ResourceReadError(f"the MCP server {self.name!r} is unavailable ({self.error or self.status})")
        try:
            with anyio.fail_after(timeout):
                return await client.read_resource(uri)
        except TimeoutError as exc:
            raise ResourceReadError(f"the MCP server {self.name!r} did not answer within {timeout:g} s") from exc
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # its error for a resource it does not have, or a broken connection
            raise ResourceReadError(f"the MCP server {self.name!r} could not read it: {_describe(exc)}") from exc

    async def call(self, name: str, arguments: dict[str, Any], timeout: float) -> CallToolResult:
        if self.blocked is not None:
            return error_result(f"the MCP server {self.name!r} is unavailable: {self.blocked}")
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

    def __init__(self, config: HubConfig, *, ping_interval: float = 15.0, writes: RunMode = "return") -> None:
        self.config = config
        #: This process's nesting depth in key4u-mcp bridges (``KEY4U_MCP_DEPTH``).
        self.depth = current_depth()
        self.servers = {name: Downstream(name, cfg, depth=self.depth) for name, cfg in config.servers.items()}
        self.ping_interval = ping_interval
        self.toolsets: list[Toolset] = [
            PrefixedToolset(PolicyToolset(server, server.config.policy, writes=writes), qualified(server.name, ""))
            for server in self.servers.values()
        ]
        if self.depth >= MAX_DEPTH:
            reason = f"not started: nested {self.depth} levels deep (a key4u-mcp inside its own servers list?)"
            blocked = [s for s in self.servers.values() if not s.config.disabled]
            for server in blocked:
                server.block(reason)
            if blocked:
                logger.warning(
                    "starting none of the MCP servers %s: this key4u-mcp is nested %d levels deep "
                    "(%s=%d; is a key4u-mcp listed in its own servers list?)",
                    ", ".join(s.name for s in blocked),
                    self.depth,
                    DEPTH_VARIABLE,
                    self.depth,
                )

    def start(self, tg: TaskGroup) -> None:
        for server in self.servers.values():
            tg.start_soon(server.run, self.ping_interval, name=f"downstream:{server.name}")

    async def wait_ready(self, timeout: float) -> None:
        """Wait until every server has finished its first attempt (ready or failed).

        At most ``timeout``, and never past the servers' startup deadlines; at once when all have settled.
        """
        await self.wait_ready_for(None, timeout)

    async def read_resource(self, server: str, uri: str, timeout: float = 30.0) -> ReadResourceResult:
        """Resource ``uri`` of the downstream server named ``server``."""
        found = self.servers.get(server)
        if found is None:
            known = ", ".join(self.servers) or "none"
            raise ResourceReadError(f"there is no downstream MCP server named {server!r} (configured: {known})")
        await self.wait_ready_for([qualified(server, "")], min(10.0, timeout))
        return await found.read_resource(uri, timeout)

    async def wait_ready_for(self, names: list[str] | None, timeout: float) -> None:
        """Like ``wait_ready``, for only the servers whose tools could be among ``names`` (None: all).

        A server counts when a name starts with its ``<server>__`` prefix; names of no configured
        server (local tools, the caller's functions) need no waiting.
        """
        pending = [s for s in self._servers_for(names) if not s.settled.is_set()]
        if not pending:
            return
        deadline = min(anyio.current_time() + max(0.0, timeout), max(s.settle_by() for s in pending))
        with anyio.move_on_after(deadline - anyio.current_time()):
            for server in pending:
                await server.settled.wait()

    def _servers_for(self, names: list[str] | None) -> list[Downstream]:
        if names is None:
            return list(self.servers.values())
        return [s for s in self.servers.values() if any(n.startswith(qualified(s.name, "")) for n in names)]

    def report(self) -> list[dict[str, Any]]:
        return [s.report() for s in self.servers.values()]
