"""The bridge: starts, continues and waits for ``key4u_respond`` conversations.

A thin orchestrator. ``Planner`` decides what the model is offered, ``Loop`` runs the turns,
``Jobs`` runs loops in the background under a store claim, and the store keeps every
conversation. A client's cancellation cancels the job it waits on; its deadline only stops the
waiting. This module never builds requests, parses replies or runs tools itself.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup
from mcp.server.mcpserver.exceptions import ToolError

from server.bridge.continuation import add_request, running_elsewhere, settled, still_running
from server.bridge.conversation import Conversation, Options
from server.bridge.jobs import Job, Jobs
from server.bridge.loop import Loop, LoopLimits, Offer
from server.bridge.plan import Planner
from server.bridge.request import RespondRequest, RespondResult
from server.config import Settings
from server.errors import StoreError
from server.store.base import ConversationStore
from server.telemetry import OFF, Telemetry
from server.toolsets.base import CombinedToolset
from server.toolsets.hub import Hub
from server.upstream.model import Message, Model

if TYPE_CHECKING:
    from server.upstream.pricing import Prices

Progress = Callable[[str], Awaitable[None]]


def process_owner_id() -> str:
    """Who this process is, in the store's claims: unique per process, readable in a database."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Bridge:
    """Answers ``key4u_respond``: starts, continues or waits for a conversation.

    It owns the planner and the jobs and builds a loop for each run; it never builds requests,
    parses replies or runs tools itself.
    """

    def __init__(
        self,
        settings: Settings,
        upstream: Callable[[], Model] | None,
        store: ConversationStore,
        toolsets: CombinedToolset,
        task_group: TaskGroup,
        hub: Hub | None = None,
        prices: Prices | None = None,
        telemetry: Telemetry = OFF,
    ) -> None:
        self.settings = settings
        self.telemetry = telemetry
        self.upstream = upstream
        self.prices = prices
        self.store = store
        self.toolsets = toolsets
        self.hub = hub
        self.planner = Planner(toolsets)
        self._told_notice = False
        self.jobs = Jobs(store, task_group, process_owner_id(), settings.claim_lease)
        self.limits = LoopLimits(
            concurrency=settings.tool_concurrency, call_timeout=settings.tool_timeout, heartbeat=settings.heartbeat
        )

    async def respond(
        self, request: RespondRequest, progress: Progress | None, *, deadline: float | None = None
    ) -> RespondResult:
        if self.upstream is None:
            raise ToolError(
                "no API key is configured: set KEY4U_API_KEY (or OPENAI_API_KEY) in this server's environment; "
                "the local tools work without one"
            )
        try:
            if request.conversation_id:
                job = await self._continue(request.conversation_id, request)
            else:
                job = await self._start_new(request)
        except StoreError as exc:  # the database is unusable: say which file and what to do
            raise ToolError(str(exc)) from exc
        return await self._wait(job, progress, deadline or self.settings.deadline)

    async def _start_new(self, request: RespondRequest) -> Job:
        if not request.prompt:
            raise ToolError("prompt is required unless conversation_id is given")
        if request.function_outputs:
            raise ToolError("function_outputs need the conversation_id of the conversation that asked for them")
        updates = request.option_updates()
        updates.setdefault("model", self.settings.model)
        conv = Conversation(options=Options.model_validate(updates))
        await self._servers_for(conv.options.tools)
        if request.api in ("responses", "chat"):
            conv.api = request.api
        offer = self.planner.offer(conv.options)
        conv.items.append(Message(role="user", text=request.prompt))  # RespondRequest made it writable
        self._begin(conv)
        await self.store.create(conv, self.jobs.owner, self.jobs.lease)
        return self.jobs.start(conv, lambda job: self._loop(offer, job))

    async def _continue(self, conversation_id: str, request: RespondRequest) -> Job:
        running = self.jobs.running.get(conversation_id)
        if running is not None:
            if request.wants_more:
                raise ToolError(
                    f"conversation {conversation_id} is still running; call key4u_respond with only its "
                    "conversation_id to wait for the result, then continue it"
                )
            return running
        stored = await self.store.get(conversation_id)
        if stored is None:
            raise ToolError(f"unknown conversation_id {conversation_id!r}; it may have expired: start a new one")
        if stored.held_by_other(self.jobs.owner, time.time()):
            return self.jobs.finished(running_elsewhere(stored.conversation, request))
        if not request.wants_more and not settled(stored.conversation).interrupted:
            return self.jobs.finished(stored.conversation)  # nothing new: report where it stands
        claimed = await self.store.claim(conversation_id, self.jobs.owner, self.jobs.lease)
        if claimed is None:  # another process won the race for it
            fresh = await self.store.get(conversation_id)
            return self.jobs.finished(running_elsewhere((fresh or stored).conversation, request))
        try:
            conv = settled(claimed)
            if request.wants_more or conv.interrupted:
                add_request(conv, request)  # an interrupted conversation resumes with what it has
            await self._servers_for(conv.options.tools)
            offer = self.planner.offer(conv.options)  # checked before anything is sent
        except BaseException:
            await self.store.release(conversation_id, self.jobs.owner)
            raise
        self._begin(conv)
        await self.store.put(conv)
        return self.jobs.start(conv, lambda job: self._loop(offer, job))

    async def _servers_for(self, tools: list[str] | None) -> None:
        """Give downstream servers that are still starting, and whose tools may be offered, a moment."""
        if self.hub is not None:
            await self.hub.wait_ready_for(tools, min(10.0, self.settings.deadline / 2))

    def _begin(self, conv: Conversation) -> None:
        conv.status = "in_progress"
        conv.notes.extend(self.toolsets.problems())
        if self.prices is not None:
            self.prices.want()  # fetched in the background while the model works; never waited for

    def _loop(self, offer: Offer, job: Job) -> Loop:
        assert self.upstream is not None
        return Loop(
            model=self.upstream(),
            tools=offer,
            limits=self.limits,
            progress=job.notify,
            prices=self.prices,
            telemetry=self.telemetry,
        )

    async def _wait(self, job: Job, progress: Progress | None, deadline: float) -> RespondResult:
        job.listener = progress
        try:
            with anyio.move_on_after(deadline):
                await job.done.wait()
        except anyio.get_cancelled_exc_class():
            job.scope.cancel()  # the client cancelled: stop the upstream request and the tools
            raise
        finally:
            job.listener = None
        conv = job.conversation
        if self.store.notice is not None and not self._told_notice:  # e.g. a corrupt file moved aside
            conv.notes.append(self.store.notice)
            self._told_notice = True
        if not job.done.is_set():
            conv = still_running(conv, deadline)
        return RespondResult.of(conv, self.settings.secrets())

    async def aclose(self) -> None:
        self.jobs.cancel_all()


__all__ = ["Bridge"]
