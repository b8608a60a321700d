"""The bridge: starts, continues and waits for ``key4u_respond`` conversations.

A thin orchestrator. ``Planner`` decides what the model is offered, ``Loop`` runs the turns,
``Jobs`` runs loops in the background under a store claim, and the store keeps every
conversation. A client's cancellation cancels the job it waits on; its deadline only stops the
waiting. This module never builds requests, parses replies or runs tools itself.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskGroup
from mcp.server.mcpserver.exceptions import ToolError

from server.bridge.conversation import Conversation, Options, ToolCallTrace
from server.bridge.jobs import Job, Jobs
from server.bridge.loop import Loop, LoopLimits, Offer, Upstream
from server.bridge.plan import Planner
from server.bridge.request import FunctionOutput, RespondRequest, RespondResult
from server.config import Settings
from server.logs import mask
from server.store.base import ConversationStore, Stored
from server.toolsets.base import CombinedToolset
from server.toolsets.hub import Hub

Progress = Callable[[str], Awaitable[None]]


def process_owner_id() -> str:
    """Who this process is, in the store's claims: unique per process, readable in a database."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Bridge:
    def __init__(
        self,
        settings: Settings,
        upstream: Callable[[], Upstream] | None,
        store: ConversationStore,
        toolsets: CombinedToolset,
        task_group: TaskGroup,
        hub: Hub | None = None,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.store = store
        self.toolsets = toolsets
        self.hub = hub
        self.planner = Planner(toolsets)
        self.jobs = Jobs(store, task_group, process_owner_id(), settings.claim_lease)
        self.limits = LoopLimits(
            concurrency=settings.tool_concurrency,
            call_timeout=settings.tool_timeout,
            conversation_mode=settings.conversation_mode,
        )

    async def respond(self, request: RespondRequest, progress: Progress | None) -> RespondResult:
        if self.upstream is None:
            raise ToolError(
                "no API key is configured: set KEY4U_API_KEY (or OPENAI_API_KEY) in this server's environment; "
                "the local tools work without one"
            )
        if self.hub is not None:
            await self.hub.wait_ready(min(10.0, self.settings.deadline / 2))
        if request.conversation_id:
            job = await self._continue(request.conversation_id, request)
        else:
            job = await self._start_new(request)
        return await self._wait(job, progress)

    async def _start_new(self, request: RespondRequest) -> Job:
        if not request.prompt:
            raise ToolError("prompt is required unless conversation_id is given")
        if request.function_outputs:
            raise ToolError("function_outputs need the conversation_id of the conversation that asked for them")
        updates = request.option_updates()
        updates.setdefault("model", self.settings.model)
        conv = Conversation(options=Options.model_validate(updates))
        offer = self.planner.offer(conv.options)
        conv.items.append({"type": "message", "role": "user", "content": request.prompt})
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
            return self._elsewhere(stored, request)
        if not request.wants_more:
            return self.jobs.finished(_settled(stored.conversation))  # nothing new: report where it stands
        claimed = await self.store.claim(conversation_id, self.jobs.owner, self.jobs.lease)
        if claimed is None:  # another process won the race for it
            fresh = await self.store.get(conversation_id)
            return self._elsewhere(fresh or stored, request)
        try:
            conv = _settled(claimed)
            offer = self._prepare_continuation(conv, request)
        except BaseException:
            await self.store.release(conversation_id, self.jobs.owner)
            raise
        self._begin(conv)
        await self.store.put(conv)
        return self.jobs.start(conv, lambda job: self._loop(offer, job))

    def _prepare_continuation(self, conv: Conversation, request: RespondRequest) -> Offer:
        conv.options = conv.options.model_copy(update=request.option_updates())
        offer = self.planner.offer(conv.options)  # checked before anything is sent
        if conv.status == "requires_action":
            _add_function_outputs(conv, request.function_outputs or [])
        elif request.function_outputs:
            raise ToolError(f"conversation {conv.id} is not waiting for function outputs (status {conv.status})")
        if request.prompt:
            conv.items.append({"type": "message", "role": "user", "content": request.prompt})
        conv.notes, conv.error = [], None
        conv.options = conv.options.model_copy(update={"max_turns": conv.turns + conv.options.max_turns})
        return offer

    def _elsewhere(self, stored: Stored, request: RespondRequest) -> Job:
        """A conversation another server process is running: refuse to add to it, or report it."""
        conv = stored.conversation
        note = (
            f"this conversation is running in another server process (last saved "
            f"{time.time() - conv.updated_at:.0f} s ago); call again with only its conversation_id"
        )
        if request.wants_more:
            raise ToolError(note)
        conv.status = "in_progress"
        conv.notes = [*conv.notes, note]
        return self.jobs.finished(conv)

    def _begin(self, conv: Conversation) -> None:
        conv.status = "in_progress"
        conv.notes.extend(self.toolsets.problems())

    def _loop(self, offer: Offer, job: Job) -> Loop:
        assert self.upstream is not None
        return Loop(upstream=self.upstream(), tools=offer, limits=self.limits, progress=job.notify)

    async def _wait(self, job: Job, progress: Progress | None) -> RespondResult:
        job.listener = progress
        try:
            with anyio.move_on_after(self.settings.deadline):
                await job.done.wait()
        except anyio.get_cancelled_exc_class():
            job.scope.cancel()  # the client cancelled: stop the upstream request and the tools
            raise
        finally:
            job.listener = None
        conv = job.conversation
        if not job.done.is_set():
            snapshot = conv.model_copy(update={"status": "in_progress"})
            snapshot.notes = [
                *conv.notes,
                f"still working after {self.settings.deadline:g} s; call key4u_respond "
                f"with conversation_id={conv.id!r} (and nothing else) to wait for the result",
            ]
            return self.result(snapshot)
        return self.result(conv)

    def result(self, conv: Conversation) -> RespondResult:
        secrets_ = self.settings.secrets()
        return RespondResult(
            text=mask(conv.text, secrets_),
            status=conv.status,
            conversation_id=conv.id,
            model=conv.model,
            turns=conv.turns,
            tool_calls=conv.tool_calls,
            pending_calls=conv.pending_calls,
            parsed=conv.parsed,
            usage=conv.usage,
            error=mask(conv.error, secrets_) if conv.error else None,
            notes=conv.notes,
            transcript=f"key4u://conversations/{conv.id}",
        )

    async def aclose(self) -> None:
        self.jobs.cancel_all()


def _settled(conv: Conversation) -> Conversation:
    """A stored conversation nobody runs: one saved as running was left by a process that stopped."""
    if conv.status == "in_progress":
        conv.status = "incomplete"
        conv.notes = [*conv.notes, "the process running this conversation stopped before it finished"]
    return conv


def _add_function_outputs(conv: Conversation, outputs: list[FunctionOutput]) -> None:
    pending = {p.call_id: p for p in conv.pending_calls}
    given = {o.call_id: o for o in outputs}
    unknown = sorted(set(given) - set(pending))
    if unknown:
        raise ToolError(f"no pending call has call_id {', '.join(unknown)}; pending: {', '.join(pending)}")
    missing = sorted(set(pending) - set(given))
    if missing:
        raise ToolError(f"function_outputs must answer every pending call; missing call_id {', '.join(missing)}")
    for call_id, call in pending.items():
        value = given[call_id].output
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        conv.items.append({"type": "function_call_output", "call_id": call_id, "output": text})
        conv.tool_calls.append(
            ToolCallTrace(
                turn=conv.turns,
                call_id=call_id,
                name=call.name,
                arguments=call.arguments,
                ok=True,
                ms=0.0,
                started_ms=0.0,
                output=text[:500],
                ran_by="caller",
            )
        )
    conv.pending_calls = []


__all__ = ["Bridge"]
