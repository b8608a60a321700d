"""Builds the MCP server: its lifespan (the shared parts every call uses) and its tools.

Wiring only: what each part does lives in the module that defines it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncGenerator, Callable, Generator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from mcp.server import MCPServer

from server import __version__, startup
from server.config import Settings
from server.store.base import ConversationStore
from server.store.sqlite import SQLiteStore
from server.surface.conversations import RecentConversations
from server.surface.lean import LeanMiddleware
from server.surface.local_tools import register_local_tools
from server.surface.models_tool import TOOL_NAME as MODELS_TOOL
from server.surface.models_tool import register_models
from server.surface.proxy import ProxyMiddleware
from server.surface.respond_tool import TOOL_NAME, register_respond
from server.surface.usage_tool import TOOL_NAME as USAGE_TOOL
from server.surface.usage_tool import register_usage
from server.telemetry import Telemetry
from server.toolsets.base import CombinedToolset, PolicyToolset, Toolset
from server.toolsets.hub import Hub, load_hub_config
from server.toolsets.local import LocalToolset
from server.toolsets.policy import Policy
from server.upstream.model import Model
from server.upstream.pricing import Prices

if TYPE_CHECKING:
    import httpx

    from server.bridge.service import Bridge


logger = logging.getLogger(__name__)

INSTRUCTIONS = (
    "key4u-mcp hosts local tools (current_time, system_info, math_calculator, random_generator) that answer at "
    "once, with no network, and key4u_respond, which hands a prompt to a model behind the Key4U gateway "
    "(OpenAI-compatible: /v1/responses or /v1/chat/completions, chosen per model) and lets that model call "
    "these tools in parallel and functions you define. key4u_models lists the models the key can use and their "
    "prices; key4u_usage totals the tokens and USD spent."
)


@dataclass
class AppState:
    """What the server's lifespan gives every request: the store, the bridge, and the downstream toolsets
    for proxy mode.

    The bridge (``server.bridge`` and what it imports: the loop, the planner, the upstream adapters)
    is made on first use, by the first call that needs it: a host starts every configured server at
    launch and lists its tools, and neither needs the bridge.
    """

    store: ConversationStore
    #: The downstream servers' toolsets, for proxy mode.
    downstream: CombinedToolset
    make_bridge: Callable[[], Bridge]
    #: The shared HTTP client and prices (None without a key), for ``key4u_models``.
    upstream: SharedUpstream | None = None
    made: Bridge | None = None

    @property
    def bridge(self) -> Bridge:
        if self.made is None:
            self.made = self.make_bridge()
        return self.made


#: Seconds after start-up at which the gateway's prices are first fetched (never on a call's path).
PRICES_WARM_AFTER = 2.0


class SharedUpstream:
    """The process's one ``httpx.AsyncClient`` and model client (``AutoModel``), made on first use.

    Hosts start every configured server at launch, and a server that never calls the gateway
    (local tools only) needs no HTTP client. Importing httpx and the upstream package and building
    the client (it loads the TLS trust store) adds about a sixth to the start-up path, so both wait
    for the first call: the one import this package defers to a function.

    ``prices`` (what a turn costs) is made at once but fetches nothing until first asked: its refresher
    (``Prices.run``) runs in the lifespan's task group, and builds the client only when it fetches.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._http: httpx.AsyncClient | None = None
        self._model: Model | None = None
        self.prices = Prices.for_settings(settings, self.http)

    def http(self) -> httpx.AsyncClient:
        """The process's HTTP client for the gateway, made on first use."""
        if self._http is None:
            import httpx

            s = self._settings
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(s.timeout, connect=10.0, write=30.0, pool=10.0),
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            )
        return self._http

    def get(self) -> Model:
        if self._model is None:
            from server.upstream.routing import connect

            self._model = connect(self.http(), self._settings)
        return self._model

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


def _hub(settings: Settings) -> tuple[Hub | None, Policy]:
    """The downstream servers (None when there are none) and the policy for the local tools."""
    if settings.servers_file is None:
        return None, Policy()
    config, _ = load_hub_config(settings.servers_file)
    writes = "ask" if settings.ask_writes else "return"
    return (Hub(config, writes=writes) if config.servers else None), config.local_tools


def open_store(settings: Settings) -> ConversationStore:
    """PostgreSQL when ``KEY4U_DB_URL`` is set (replicas on several machines), else the SQLite file."""
    limits: dict[str, Any] = {"max_conversations": settings.max_conversations, "max_age_days": settings.max_age_days}
    if settings.db_url is not None:
        from server.store.postgres import PostgresStore  # psycopg only where it is used

        return PostgresStore(settings.db_url.get_secret_value(), **limits)
    return SQLiteStore(settings.database, **limits)


def _lifespan(settings: Settings) -> Callable[[MCPServer[AppState]], AbstractAsyncContextManager[AppState]]:
    @asynccontextmanager
    async def lifespan(server: MCPServer[AppState]) -> AsyncGenerator[AppState, None]:
        upstream = SharedUpstream(settings) if settings.api_key is not None else None
        store = open_store(settings)
        # Offered to the remote model: the local tools, not this server's gateway tools.
        listed = [t for t in await server.list_tools() if t.name not in (TOOL_NAME, MODELS_TOOL, USAGE_TOOL)]
        hub, local_policy = _hub(settings)
        downstream = CombinedToolset(hub.toolsets if hub else [])
        local: Toolset = PolicyToolset(LocalToolset(listed, server.call_tool), local_policy, default="run")
        telemetry = Telemetry.from_env(settings)  # off unless OTEL_* variables ask for traces
        async with AsyncExitStack() as cleanup:
            cleanup.push_async_callback(telemetry.aclose)  # last out: after the jobs' final spans
            cleanup.push_async_callback(store.aclose)
            if upstream is not None:
                cleanup.push_async_callback(upstream.aclose)
            async with anyio.create_task_group() as tg:
                if hub is not None:
                    hub.start(tg)
                if upstream is not None:
                    # Prices load in the background once start-up is done, and hourly when asked again.
                    tg.start_soon(upstream.prices.run, PRICES_WARM_AFTER)
                toolsets = CombinedToolset([local, *downstream.toolsets])

                def make_bridge() -> Bridge:
                    from server.bridge.service import Bridge  # the bridge's modules: on first use

                    return Bridge(
                        settings,
                        upstream.get if upstream else None,
                        store,
                        toolsets,
                        tg,
                        hub=hub,
                        telemetry=telemetry,
                        prices=upstream.prices if upstream else None,
                    )

                # What start-up made lives as long as the process: keep it out of every later collection
                # (a full collection of it paused calls by 80-110 ms every few hundred calls), and resume
                # collection if the command line paused it for start-up. No collection first: it would
                # cost start-up time for the little garbage there is.
                startup.settle()
                state = AppState(store=store, downstream=downstream, make_bridge=make_bridge, upstream=upstream)
                yield state
                if state.made is not None:
                    await state.made.aclose()
                tg.cancel_scope.cancel()

    return lifespan


def _no_logging_setup(*_args: object, **_kwargs: object) -> None:
    return None


@contextmanager
def _logging_already_set() -> Generator[None]:
    """While building an ``MCPServer`` whose process has its logging set (``server.logs``), skip the SDK's
    ``configure_logging``: it imports rich (12-20 ms of start-up, where rich is installed) only to hand a
    handler to ``logging.basicConfig``, which does nothing at all once the root logger has handlers.
    mcp 2.3.0 calls it from ``MCPServer.__init__`` with no way to opt out; re-check on SDK upgrades."""
    sdk = sys.modules.get("mcp.server.mcpserver.server")
    original = getattr(sdk, "configure_logging", None)
    if sdk is None or original is None or not logging.getLogger().handlers:
        yield
        return
    sdk.configure_logging = _no_logging_setup  # pyright: ignore[reportAttributeAccessIssue]
    try:
        yield
    finally:
        sdk.configure_logging = original  # pyright: ignore[reportAttributeAccessIssue]


def build_server(settings: Settings) -> MCPServer[AppState]:
    proxy = [ProxyMiddleware(settings.tool_timeout)] if settings.proxy else []
    # Outermost first: the lean listing sees the tools proxy mode adds, and leans them too.
    middleware = [LeanMiddleware(), RecentConversations(), *proxy]
    with _logging_already_set():
        server: MCPServer[AppState] = MCPServer(
            "key4u-mcp",
            title="Key4U MCP bridge",
            version=__version__,
            instructions=INSTRUCTIONS,
            website_url="https://api.key4u.shop",
            log_level=settings.log_level,
            lifespan=_lifespan(settings),
            middleware=middleware,
        )
    register_local_tools(server)
    register_respond(server, settings)
    register_models(server, settings)
    register_usage(server, settings)
    return server
