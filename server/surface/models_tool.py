"""The ``key4u_models`` tool: the models this key can use, what each costs, which APIs reach it.

One call asks the gateway, at once, for the key's model list (``GET /v1/models``), its balance
(``/v1/dashboard/billing/*``) and, if they are not loaded yet, its published prices (``Prices``,
waited for a few seconds at most). Each model gets a line: its vendor, its USD price per million
input / output tokens (or per call) for the key's group, whether it looks like a reasoning model, and
the APIs that reach it: the gateway's ``supported_endpoint_types`` where it publishes them, else
what the bridge learned (``EndpointMemory``). The text fits the calling host's budget, is the only
content (every host reads it), and never contains the key.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import anyio
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from server import errors
from server.config import Settings
from server.logs import mask
from server.surface.budget import Host, client_name, lines_within
from server.upstream.jsonvalues import is_array, is_object, scrub
from server.upstream.pricing import (
    LISTING_MAX_BYTES,
    Balance,
    Prices,
    Rate,
    fetch_balance,
    get_json,
)

if TYPE_CHECKING:
    import httpx

TOOL_NAME = "key4u_models"
DESCRIPTION = "Models this key can use: USD per 1M tokens, APIs, balance."
FILTER = "Substring of model id or vendor"
PRICES_WAIT = 5.0
"""Seconds a call waits for the gateway's prices when they are not loaded yet."""
LISTING_TIMEOUT = 20.0
_MAX_LISTED = 5000

_REASONING = re.compile(
    r"(?:^|[/:_.-])o[134](?:$|[-_.:])|gpt-5(?![\d.]*-chat)|thinking|reason|(?:^|[/:_.-])r1(?:$|[-_.:])|qwq",
    re.IGNORECASE,
)
_API_NAMES = {"openai-response": "responses", "openai": "chat"}


def looks_reasoning(model: str) -> bool:
    """Whether the name looks like a reasoning model's: o1/o3/o4, gpt-5 (not -chat), thinking, reasoner, r1, qwq."""
    return bool(_REASONING.search(model))


class Upstream(Protocol):
    """What this tool needs of the shared upstream (``SharedUpstream``): its HTTP client and prices."""

    @property
    def prices(self) -> Prices: ...

    def http(self) -> httpx.AsyncClient: ...


class HasUpstream(Protocol):
    """The lifespan state this module needs (``AppState``)."""

    @property
    def upstream(self) -> Upstream | None: ...


@dataclass(frozen=True)
class Listed:
    """One model of the key's ``/v1/models`` list."""

    id: str
    owner: str | None = None
    endpoint_types: tuple[str, ...] = ()


def parse_listing(reply: object) -> list[Listed]:
    """The models of a ``/v1/models`` reply, read defensively (entries that are not models are skipped)."""
    data: object = reply.get("data") if is_object(reply) else None
    listed: dict[str, Listed] = {}
    for entry in data[:_MAX_LISTED] if is_array(data) else []:
        if not is_object(entry) or not isinstance(model := entry.get("id"), str) or not model or len(model) > 200:
            continue
        owner: object = entry.get("owned_by")
        types: object = entry.get("supported_endpoint_types")
        endpoint_types = tuple(scrub(t)[:40] for t in (types[:16] if is_array(types) else []) if isinstance(t, str))
        listed.setdefault(
            model, Listed(scrub(model), scrub(owner)[:80] if isinstance(owner, str) and owner else None, endpoint_types)
        )
    return sorted(listed.values(), key=lambda m: m.id)


@dataclass(frozen=True)
class Row:
    """One line of the answer."""

    id: str
    vendor: str | None
    rate: Rate | None
    apis: tuple[str, ...]
    learned: bool
    reasoning: bool

    def line(self) -> str:
        parts = [self.id]
        if self.vendor:
            parts.append(self.vendor)
        parts.append(_price(self.rate))
        if self.reasoning:
            parts.append("reasoning")
        if self.apis:
            parts.append(", ".join(self.apis) + (" (learned)" if self.learned else ""))
        return " · ".join(parts)


def _price(rate: Rate | None) -> str:
    return rate.summary() if rate is not None else "price unknown"


def _apis(types: Iterable[str]) -> tuple[str, ...]:
    named = [_API_NAMES.get(t, t) for t in types]
    order = {"responses": 0, "chat": 1}
    return tuple(sorted(dict.fromkeys(named), key=lambda n: order.get(n, 2)))


def rows_for(listed: Iterable[Listed], prices: Prices, learned: Mapping[str, str]) -> list[Row]:
    """A row per listed model: the price book's rate and vendor, and the APIs (published, else learned)."""
    rows: list[Row] = []
    for model in listed:
        entry = prices.entry(model.id)
        published = entry.endpoint_types if entry is not None and entry.endpoint_types else model.endpoint_types
        apis, was_learned = _apis(published), False
        if not apis and model.id in learned:
            apis, was_learned = (learned[model.id],), True
        vendor = entry.vendor if entry is not None and entry.vendor else model.owner
        rows.append(Row(model.id, vendor, prices.rate(model.id), apis, was_learned, looks_reasoning(model.id)))
    return rows


def matches(row: Row, text: str | None) -> bool:
    if not text:
        return True
    needle = text.lower()
    return needle in row.id.lower() or (row.vendor is not None and needle in row.vendor.lower())


def render(
    rows: list[Row], *, total: int, text: str | None, balance: Balance | None, prices: Prices, budget: int
) -> str:
    """The answer: a header line (count, balance, what the prices are), then one line per model, cut
    to ``budget`` characters with a line saying how many were left out."""
    shown = [r for r in rows if matches(r, text)]
    count = f"{len(shown)} of {total} models match {text!r}" if text else f"{total} models for this key"
    header = [count]
    if balance is not None and balance.known:
        header.append(f"balance {balance.summary()}")
    header.append(f"USD per 1M tokens in/out, group {prices.group}")
    unpriced = [r.id for r in shown if r.rate is None]
    if unpriced and (why := prices.why_unpriced(unpriced[0])) is not None and not prices.loaded:
        header.append(why)
    lines = [" · ".join(header), *(row.line() for row in shown)]
    return lines_within(lines, budget, lambda left: f"… {left} more not shown: call again with a narrower filter")


def _handler(settings: Settings) -> Callable[..., Coroutine[Any, Any, CallToolResult]]:
    secrets = settings.secrets()

    async def key4u_models(
        ctx: Context[Any], filter: Annotated[str | None, Field(description=FILTER)] = None
    ) -> CallToolResult:
        state: HasUpstream = ctx.request_context.lifespan_context
        upstream = state.upstream
        if upstream is None or settings.api_key is None:
            raise ToolError(
                "no API key is configured: set KEY4U_API_KEY (or OPENAI_API_KEY) in this server's environment"
            )
        key = settings.api_key.get_secret_value()
        http = upstream.http()
        prices = upstream.prices
        found: dict[str, Any] = {}

        async def listing() -> None:
            try:
                found["listing"] = await get_json(
                    http, f"{settings.base_url}/models", api_key=key, max_bytes=LISTING_MAX_BYTES,
                    timeout=LISTING_TIMEOUT, secrets=secrets,
                )  # fmt: skip
            except errors.UpstreamError as exc:
                found["error"] = exc

        async def balance() -> None:
            found["balance"] = await fetch_balance(http, settings.base_url, key)

        async with anyio.create_task_group() as tg:
            tg.start_soon(listing)
            tg.start_soon(balance)
            tg.start_soon(prices.ready, PRICES_WAIT)
        if (error := found.get("error")) is not None:
            assert isinstance(error, errors.UpstreamError)
            raise ToolError(mask(f"could not list this key's models: {error}", secrets))
        listed = parse_listing(found.get("listing"))
        learned = await anyio.to_thread.run_sync(_learned, settings, [m.id for m in listed])
        host = Host.of(client_name(ctx))
        text = render(
            rows_for(listed, prices, learned),
            total=len(listed),
            text=filter.strip()[:200] if filter else None,
            balance=found.get("balance"),
            prices=prices,
            budget=settings.max_result_chars or host.budget,
        )
        return CallToolResult(content=[TextContent(type="text", text=mask(text, secrets))])

    return key4u_models


def _learned(settings: Settings, models: list[str]) -> dict[str, str]:
    """The API the bridge learned for each model (``endpoints.json``), read from disk in a worker thread."""
    from server.upstream.routing import EndpointMemory

    memory = EndpointMemory(settings.endpoint_memory)
    return {m: api for m in models if (api := memory.get(settings.base_url, m)) is not None}


def register_models(server: MCPServer[Any], settings: Settings) -> None:
    server.add_tool(
        _handler(settings),
        name=TOOL_NAME,
        title="List Key4U models",
        description=DESCRIPTION,
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=True),
    )


__all__ = ["DESCRIPTION", "TOOL_NAME", "Listed", "Row", "looks_reasoning", "parse_listing", "register_models", "render"]
