"""The ``key4u_usage`` tool: tokens and USD spent through this server, per model and per day.

It reads the store's usage ledger (every model turn of every ``key4u_respond`` call, saved with its
conversation and kept for a year, whatever conversations are pruned). Costs are those computed when
each turn ran, from the gateway's published prices or ``KEY4U_PRICES``; turns whose price was not known
are counted, never guessed. The text fits the calling host's budget and is the only content.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from server.config import Settings
from server.errors import StoreError
from server.store.base import ConversationStore, UsageRow
from server.surface.budget import Host, client_name, lines_within

TOOL_NAME = "key4u_usage"
DESCRIPTION = "Tokens and USD spent via key4u_respond, per model and day."


class HasStore(Protocol):
    """The lifespan state this module needs (``AppState``)."""

    @property
    def store(self) -> ConversationStore: ...


@dataclass
class Sum:
    """Turns, tokens and the cost of the priced ones, added up."""

    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    priced: int = 0

    def add(self, row: UsageRow) -> None:
        self.turns += row.turns
        self.input_tokens += row.input_tokens
        self.output_tokens += row.output_tokens
        self.priced += row.turns - row.unpriced_turns
        self.cost_usd += row.cost_usd or 0.0

    def line(self, label: str) -> str:
        unpriced = self.turns - self.priced
        if self.priced == 0:
            cost = "cost unknown"
        else:
            cost = f"${self.cost_usd:,.4f}" + (f" + {unpriced} unpriced turn(s)" if unpriced else "")
        turns = f"{self.turns} turn" + ("" if self.turns == 1 else "s")
        return f"{label} · {turns} · in {self.input_tokens:,} / out {self.output_tokens:,} tokens · {cost}"


def summed(rows: Iterable[UsageRow], key: str) -> dict[str, Sum]:
    sums: dict[str, Sum] = {}
    for row in rows:
        sums.setdefault(getattr(row, key), Sum()).add(row)
    return sums


def render(rows: list[UsageRow], *, days: int, text: str | None, budget: int) -> str:
    """A total line, a line per model (most spent first), then a line per day (newest first), cut to
    ``budget`` characters with a line saying how many were left out."""
    total = Sum()
    for row in rows:
        total.add(row)
    scope = f"last {days} day" + ("" if days == 1 else "s") + " (UTC)" + (f", models matching {text!r}" if text else "")
    if not rows:
        return f"No key4u_respond turns in the {scope} in this server's store."
    lines = [total.line(f"Total, {scope}"), "By model:"]
    by_model = sorted(summed(rows, "model").items(), key=lambda kv: (-kv[1].cost_usd, -kv[1].turns, kv[0]))
    lines += [s.line(m) for m, s in by_model]
    lines.append("By day:")
    lines += [s.line(d) for d, s in summed(rows, "day").items()]  # rows come newest day first
    return lines_within(lines, budget, lambda left: f"… {left} more lines not shown: ask for fewer days or one model")


def register_usage(server: MCPServer[Any], settings: Settings) -> None:
    async def key4u_usage(
        ctx: Context[Any],
        days: Annotated[int, Field(ge=1, le=400, description="Days back, today included")] = 30,
        model: Annotated[str | None, Field(description="Substring of the model name")] = None,
    ) -> CallToolResult:
        state: HasStore = ctx.request_context.lifespan_context
        now = time.time()
        since = (now // 86400 - (days - 1)) * 86400  # from the start of the first UTC day
        try:
            rows = await state.store.usage(since)
        except StoreError as exc:  # a reason, not the SDK's bare "Error executing tool"
            raise ToolError(f"the usage ledger could not be read: {exc}") from exc
        needle = model.strip()[:200].lower() if model and model.strip() else None
        if needle:
            rows = [r for r in rows if needle in r.model.lower()]
        budget = settings.max_result_chars or Host.of(client_name(ctx)).budget
        text = render(rows, days=days, text=needle, budget=budget)
        return CallToolResult(content=[TextContent(type="text", text=text)])

    server.add_tool(
        key4u_usage,
        name=TOOL_NAME,
        title="Key4U usage and cost",
        description=DESCRIPTION,
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False),
    )


__all__ = ["DESCRIPTION", "TOOL_NAME", "register_usage", "render"]
