"""Recent conversations in ``resources/list``, so a model that lost a ``conversation_id`` finds it again.

A server middleware (the SDK's public hook around every request) adds the newest conversations in the
store, as ``key4u://conversations/{id}`` resources with the first prompt as their title, after the
server's own resources. Reading one is the transcript resource of ``respond_tool``. Nothing is written.
"""

from __future__ import annotations

import time
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.types import ListResourcesResult, Resource

from server.errors import StoreError
from server.surface.respond_tool import HasBridge

LISTED = 20


class RecentConversations:
    """Appends the ``LISTED`` newest conversations to every ``resources/list`` answer."""

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        result = await call_next(ctx)
        state: HasBridge | None = getattr(ctx, "lifespan_context", None)
        if ctx.method != "resources/list" or state is None or result is None:
            return result
        listing = result if isinstance(result, ListResourcesResult) else ListResourcesResult.model_validate(result)
        try:
            recent = await state.store.list(LISTED)
        except StoreError:
            return listing  # the store is unusable: key4u_respond says why; the listing stays
        resources = [
            Resource(
                uri=f"key4u://conversations/{info.id}",
                name=f"conversation {info.id}",
                title=info.title or info.id,
                description=f"{info.status} · {info.model or 'model unknown'} · updated "
                f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(info.updated_at))}; continue it with "
                f"key4u_respond(conversation_id={info.id!r}, prompt=...)",
                mime_type="application/json",
            )
            for info in recent
        ]
        return listing.model_copy(update={"resources": [*listing.resources, *resources]})
