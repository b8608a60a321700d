"""The bridge: starts, continues and waits for ``key4u_respond`` conversations.

A thin orchestrator. ``Planner`` decides what the model is offered, ``Loop`` runs the turns,
``Jobs`` runs loops in the background under a store claim, and the store keeps every
conversation. A client's cancellation cancels the job it waits on; its deadline only stops the
waiting. This module never builds requests, parses replies or runs tools itself.
"""

from __future__ import annotations

import base64
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import BlobResourceContents

from server.bridge import attachments, panel
from server.bridge.approval import Approver
from server.bridge.attachments import RESOURCE_PREFIX, Limits
from server.bridge.continuation import add_request, running_elsewhere, settled, still_running
from server.bridge.conversation import Conversation, Group, Member, Options, ResultUsage
from server.bridge.jobs import Job, Jobs
from server.bridge.loop import Loop, LoopLimits, Offer
from server.bridge.panel import is_group
from server.bridge.plan import Planner
from server.bridge.request import ModelAnswer, RespondRequest, RespondResult
from server.config import Settings
from server.errors import StoreError
from server.store.base import ConversationStore, Stored
from server.telemetry import OFF, Telemetry
from server.toolsets.base import CombinedToolset
from server.toolsets.hub import Hub, ResourceReadError
from server.upstream.model import Attachment, Message, Model

if TYPE_CHECKING:
    from server.upstream.pricing import Prices

Progress = Callable[[str], Awaitable[None]]
#: Seconds between reads of a conversation another process runs, while a call waits for it.
ELSEWHERE_POLL = 0.5


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
        self,
        request: RespondRequest,
        progress: Progress | None,
        *,
        deadline: float | None = None,
        approver: Approver | None = None,
    ) -> RespondResult:
        """Start, continue or wait for a conversation (or a group), for up to ``deadline`` seconds.

        ``progress`` hears how it goes; ``approver``, when the caller's host can show forms, is asked
        about each call of an ``ask`` tool while this call waits."""
        waiter = Waiter(progress, approver)
        if self.upstream is None:
            raise ToolError(
                "no API key is configured: set KEY4U_API_KEY (or OPENAI_API_KEY) in this server's environment; "
                "the local tools work without one"
            )
        if request.models is not None or is_group(request.conversation_id):
            return await self._group(request, waiter, deadline or self.settings.deadline)
        if request.synthesize is not None:
            raise ToolError("synthesize needs models: the models whose answers it compares")
        try:
            attached = await self._attachments(request)
            if request.conversation_id:
                wait = deadline or self.settings.deadline
                job = await self._continue(request.conversation_id, request, attached, wait=wait)
            else:
                job = await self._start_new(request, attached, stored=not self.jobs.store_ok)
        except StoreError as exc:  # the database is unusable: say which file and what to do
            raise ToolError(str(exc)) from exc
        return await self._wait(job, waiter, deadline or self.settings.deadline)

    async def _attachments(self, request: RespondRequest) -> list[Attachment]:
        """The call's images and files, read and checked (on a worker thread) before anything is sent."""
        if not request.attaches:
            return []
        if not request.prompt:
            raise ToolError("images and files go with a prompt: add one that says what to do with them")
        limits = Limits.of(self.settings.roots())
        images = [await self._resource(e) for e in request.images or []]
        files = [await self._resource(e) for e in request.files or []]
        return await anyio.to_thread.run_sync(attachments.load, images, files, limits)

    async def _resource(self, entry: str) -> str:
        """An ``mcp:<server>:<uri>`` entry read from that downstream server, as a data: URI; others as they are."""
        if not entry.startswith(RESOURCE_PREFIX):
            return entry
        server, sep, uri = entry.removeprefix(RESOURCE_PREFIX).partition(":")
        if not sep or not server or not uri:
            raise ToolError(f"{entry[:80]}: a resource is named mcp:<server>:<uri>, e.g. mcp:fs:file:///tmp/a.png")
        if self.hub is None:
            raise ToolError(f"{entry[:80]}: no downstream MCP servers are configured (KEY4U_MCP_SERVERS)")
        try:
            read = await self.hub.read_resource(server, uri)
        except ResourceReadError as exc:
            raise ToolError(f"{entry[:80]}: {exc}") from exc
        if not read.contents:
            raise ToolError(f"{entry[:80]}: the resource is empty")
        content = read.contents[0]
        if isinstance(content, BlobResourceContents):
            return f"data:{content.mime_type or 'application/octet-stream'};base64,{content.blob}"
        encoded = base64.b64encode(content.text.encode("utf-8", "replace")).decode("ascii")
        return f"data:text/plain;base64,{encoded}"

    async def _start_new(
        self, request: RespondRequest, attached: list[Attachment] | None = None, *, stored: bool = True
    ) -> Job:
        """Start a new conversation. It is written (claimed) at once if ``stored``; else not before its id is
        seen while it runs (``_wait``), so that a run that ends within the call is written once, at its end
        (0.2 ms less per call on SQLite, a round trip less on PostgreSQL)."""
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
        # RespondRequest made the prompt writable
        conv.items.append(Message(role="user", text=request.prompt, attachments=list(attached or [])))
        self._begin(conv)
        if stored:
            await self.jobs.create(conv)
        return self.jobs.start(conv, lambda job: self._loop(offer, job), stored=stored)

    async def _continue(
        self,
        conversation_id: str,
        request: RespondRequest,
        attached: list[Attachment] | None = None,
        *,
        wait: float = 0.0,
    ) -> Job:
        running = self.jobs.running.get(conversation_id)
        if running is not None:
            if request.wants_more:
                raise ToolError(
                    f"conversation {conversation_id} is still running; call key4u_respond with only its "
                    "conversation_id to wait for the result, then continue it"
                )
            return running
        claimed: Conversation | None = None
        if request.wants_more:  # the common case: claim at once (one read, not two)
            claimed = await self.store.claim(conversation_id, self.jobs.owner, self.jobs.lease)
        if claimed is None:
            stored = await self.store.get(conversation_id)
            if stored is None:
                raise ToolError(f"unknown conversation_id {conversation_id!r}; it may have expired: start a new one")
            if wait and not request.wants_more and stored.held_by_other(self.jobs.owner, time.time()):
                stored = await self._until_released(stored, wait)
            if stored.held_by_other(self.jobs.owner, time.time()) or request.wants_more:
                return self.jobs.finished(running_elsewhere(stored.conversation, request))
            if not settled(stored.conversation).interrupted:
                return self.jobs.finished(stored.conversation)  # nothing new: report where it stands
            claimed = await self.store.claim(conversation_id, self.jobs.owner, self.jobs.lease)
            if claimed is None:  # another process won the race for it
                fresh = await self.store.get(conversation_id)
                return self.jobs.finished(running_elsewhere((fresh or stored).conversation, request))
        try:
            conv = settled(claimed)
            if request.wants_more or conv.interrupted:
                add_request(conv, request, attached or [])  # an interrupted one resumes with what it has
            await self._servers_for(conv.options.tools)
            offer = self.planner.offer(conv.options)  # checked before anything is sent
        except BaseException:
            await self.store.release(conversation_id, self.jobs.owner)
            raise
        self._begin(conv)
        await self._save_claimed(conv)
        return self.jobs.start(conv, lambda job: self._loop(offer, job))

    async def _save_claimed(self, conv: Conversation) -> None:
        """Save a conversation this process has just claimed, as long as the claim is still its own."""
        if not await self.store.put(conv, owner=self.jobs.owner):
            raise ToolError(f"conversation {conv.id} was taken over by another server process; call again")

    # -- groups: several models at once ------------------------------------------------------------------

    async def _group(self, request: RespondRequest, waiter: Waiter, deadline: float) -> RespondResult:
        """Start a group, send it a follow-up, or wait for it: every member, then the synthesis."""
        ends = time.monotonic() + deadline
        if request.models is not None and request.conversation_id is not None:
            raise ToolError(
                "models starts a new group; to go on with a group, pass its conversation_id (grp_...) with a prompt"
            )
        try:
            attached = await self._attachments(request)  # read once, sent to every model
            if request.conversation_id is None:
                group_conv = await self._start_group(request, attached)
            else:
                group_conv = await self._group_of(request, attached)
            assert group_conv.group is not None
            answers = await self._wait_members(group_conv.group, waiter, deadline)
            synthesis: RespondResult | None = None
            if group_conv.group.synthesize and panel.settled(answers) and panel.answered(answers):
                left = max(0.0, ends - time.monotonic())
                synthesis = await self._synthesis(group_conv, answers, waiter, left)  # may replace .group
        except StoreError as exc:
            raise ToolError(str(exc)) from exc
        assert group_conv.group is not None
        return panel.group_result(group_conv.id, group_conv.group, answers, synthesis)

    async def _start_group(self, request: RespondRequest, attached: list[Attachment]) -> Conversation:
        if request.model is not None:
            raise ToolError("give either model or models, not both")
        if request.function_outputs:
            raise ToolError("function_outputs go to one model's conversation: pass that answer's conversation_id")
        if not request.prompt:
            raise ToolError("prompt is required to ask models")
        if any(not name.strip() or len(name) > 200 for name in request.models or []):
            raise ToolError("each entry of models must be a model name (1 to 200 characters)")
        group = Group(
            members=panel.plan_members(request.models or []),
            synthesize=request.synthesize,
            labels=request.synthesis_labels,
            prompts=[request.prompt],
        )
        for member in group.members:
            if member.error is not None:
                continue
            try:
                job = await self._start_new(panel.member_request(request, member.model), attached)
            except ToolError as exc:
                if not any(m.conversation_id for m in group.members):
                    raise  # what every member shares (the prompt, the tools) is wrong: the call's error
                member.error = f"{member.model}: {exc}"
                continue
            member.conversation_id = job.conversation.id
        conv = Conversation(
            id=panel.new_group_id(),
            options=Options(
                model=request.synthesize or group.members[0].model, tools=[], instructions=panel.SYNTHESIS_INSTRUCTIONS
            ),
            status="completed",
            group=group,
        )
        await self.store.create(conv, self.jobs.owner, self.jobs.lease)
        await self.store.release(conv.id, self.jobs.owner)
        return conv

    async def _group_of(self, request: RespondRequest, attached: list[Attachment]) -> Conversation:
        """A stored group, with a follow-up prompt sent to every member when the call has one."""
        group_id = request.conversation_id
        assert group_id is not None
        if request.function_outputs:
            raise ToolError(
                "function_outputs go to one model's conversation: pass that answer's conversation_id, "
                f"then wait for the group with conversation_id={group_id!r}"
            )
        if request.model is not None or request.synthesize is not None:
            raise ToolError("a group keeps its models and synthesis; start a new group to change them")
        running = self.jobs.running.get(group_id)
        stored = running.conversation if running is not None else None
        if stored is None:
            found = await self.store.get(group_id)
            stored = found.conversation if found is not None else None
        if stored is None or stored.group is None:
            raise ToolError(f"unknown conversation_id {group_id!r}; it may have expired: start a new one")
        if not request.prompt:
            return stored
        members = [m for m in stored.group.members if m.conversation_id]
        busy = [m.model for m in members if (m.conversation_id or "") in self.jobs.running]
        if busy or running is not None:
            raise ToolError(
                f"the group is still working ({', '.join(busy) or 'the synthesis'}); call key4u_respond with only "
                f"conversation_id={group_id!r} to wait for it, then send the follow-up"
            )
        for member in members:
            assert member.conversation_id is not None
            try:
                follow_up = panel.follow_up(request, member.conversation_id)
                await self._continue(member.conversation_id, follow_up, attached)
            except ToolError as exc:
                member.error = f"{member.model}: the follow-up was not sent: {exc}"
        stored.group.prompts.append(request.prompt)
        await self._save_group(stored)
        return stored

    async def _save_group(self, conv: Conversation) -> None:
        """Save a group's conversation while nothing runs it (under a claim, so no other process writes it then)."""
        claimed = await self.store.claim(conv.id, self.jobs.owner, self.jobs.lease)
        if claimed is None:
            raise ToolError(f"group {conv.id} is busy in another server process; try again in a moment")
        claimed.group = conv.group
        try:
            kept = await self.store.put(claimed, owner=self.jobs.owner, release=True)
        except BaseException:
            await self.store.release(conv.id, self.jobs.owner)
            raise
        if not kept:
            raise ToolError(f"group {conv.id} was taken over by another server process; try again in a moment")

    async def _wait_members(self, group: Group, waiter: Waiter, deadline: float) -> list[ModelAnswer]:
        """Every member's result, waited for at once, each one's progress told under its model's name."""
        members = [m for m in group.members if m.conversation_id is not None]
        answers: dict[int, ModelAnswer] = {}

        async def wait(n: int, member: Member) -> None:
            assert member.conversation_id is not None
            told = waiter.labelled(member.model)
            try:
                result = await self._wait_for(member.conversation_id, told, deadline)
            except (ToolError, StoreError) as exc:  # expired, or a database fault: this member's, not the group's
                result = _missing(member.conversation_id, str(exc))
            answers[n] = ModelAnswer.of_member(result, member.model)

        async with anyio.create_task_group() as tg:
            for n, member in enumerate(members):
                tg.start_soon(wait, n, member)
        return [answers[n] for n in range(len(members))]

    async def _synthesis(
        self, group_conv: Conversation, answers: list[ModelAnswer], waiter: Waiter, deadline: float
    ) -> RespondResult:
        """The synthesis of the latest round: started once every member has settled, or waited for."""
        group_id = group_conv.id
        told = waiter.labelled("synthesis")
        running = self.jobs.running.get(group_id)
        if running is not None:
            return await self._wait(running, told, deadline)
        claimed = await self.store.claim(group_id, self.jobs.owner, self.jobs.lease)
        if claimed is None:  # another process is writing it
            return await self._wait_for(group_id, told, deadline)
        group = claimed.group
        assert group is not None
        if group.synthesized >= len(group.prompts):  # started before: report it (or resume it, if interrupted)
            await self.store.release(group_id, self.jobs.owner)
            return await self._wait_for(group_id, told, deadline)
        try:
            done = panel.answered(answers)
            prompt, group.seen_as = panel.synthesis_prompt(
                group.prompts[-1], done, len(answers) - len(done), group.labels
            )
            group.synthesized = len(group.prompts)
            conv = settled(claimed)
            add_request(conv, RespondRequest(conversation_id=group_id, prompt=prompt))
            conv.options = conv.options.model_copy(update={"model": group.synthesize})
            offer = self.planner.offer(conv.options)
        except BaseException:
            await self.store.release(group_id, self.jobs.owner)
            raise
        group_conv.group = group  # the caller reports what this synthesis was shown
        self._begin(conv)
        await self._save_claimed(conv)
        job = self.jobs.start(conv, lambda job: self._loop(offer, job))
        return await self._wait(job, told, deadline)

    async def _servers_for(self, tools: list[str] | None) -> None:
        """Give downstream servers that are still starting, and whose tools may be offered, a moment."""
        if self.hub is not None:
            await self.hub.wait_ready_for(tools, min(10.0, self.settings.deadline / 2))

    def _begin(self, conv: Conversation) -> None:
        conv.status, conv.run_seconds = "in_progress", None
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
            approve=job.approve,
        )

    async def _until_released(self, stored: Stored, wait: float) -> Stored:
        """A conversation another process runs, read again every ``ELSEWHERE_POLL`` seconds until that
        process lets it go (its run saved, or its claim lapsed) or ``wait`` seconds pass: a caller who
        waits is answered when the work is done, as for a run in this process, not sent back to poll."""
        conversation_id = stored.conversation.id
        with anyio.move_on_after(wait):
            while stored.held_by_other(self.jobs.owner, time.time()):
                await anyio.sleep(min(ELSEWHERE_POLL, max(0.0, (stored.lease_until or 0.0) - time.time()) + 0.05))
                fresh = await self.store.get(conversation_id)
                if fresh is None:  # pruned meanwhile: report what was last seen
                    break
                stored = fresh
        return stored

    async def _wait_for(self, conversation_id: str, waiter: Waiter, deadline: float) -> RespondResult:
        """Where a conversation stands, waiting up to ``deadline`` if it runs (here, or resumed if interrupted)."""
        job = await self._continue(conversation_id, RespondRequest(conversation_id=conversation_id))
        return await self._wait(job, waiter, deadline)

    async def _wait(self, job: Job, waiter: Waiter, deadline: float) -> RespondResult:
        job.listener, job.approver = waiter.progress, waiter.approver
        try:
            if waiter.progress is not None and job.last is not None and not job.done.is_set():
                await job.notify(job.last)  # where it stands now, for a caller who comes in mid-run
            with anyio.move_on_after(deadline):
                await job.done.wait()
            while job.asking and not job.done.is_set():  # a person is reading a form: do not leave them
                with anyio.move_on_after(0.1):
                    await job.done.wait()
        except anyio.get_cancelled_exc_class():
            job.scope.cancel()  # the client cancelled: stop the upstream request and the tools
            raise
        finally:
            job.listener = job.approver = None
        conv = job.conversation
        if self.store.notice is not None and not self._told_notice:  # e.g. a corrupt file moved aside
            conv.notes.append(self.store.notice)
            self._told_notice = True
        if not job.done.is_set():
            unsaved = None
            try:
                await self.jobs.store_now(job)  # its id is about to be seen: another process may be asked for it
            except StoreError as exc:
                unsaved = f"not saved yet, so only this server process can continue it: {exc}"
            conv = still_running(conv, deadline)  # a copy
            if unsaved is not None:
                conv.notes.append(unsaved)
        return RespondResult.of(conv, self.settings.secrets())

    async def aclose(self) -> None:
        self.jobs.cancel_all()


@dataclass(frozen=True)
class Waiter:
    """The caller waiting for a conversation: who hears its progress, and who can approve its ``ask`` calls."""

    progress: Progress | None = None
    approver: Approver | None = None

    def labelled(self, label: str) -> Waiter:
        """Progress told under a member's name, so a host shows which model is where."""
        progress = self.progress
        if progress is None:
            return self

        async def told(message: str) -> None:
            await progress(f"{label}: {message}")

        return replace(self, progress=told)


def _missing(conversation_id: str, error: str) -> RespondResult:
    """A member whose conversation cannot be read (expired, or the database failed)."""
    return RespondResult(
        text="",
        status="failed",
        conversation_id=conversation_id,
        model=None,
        turns=0,
        tool_calls=[],
        pending_calls=[],
        usage=ResultUsage(),
        error=error,
        transcript=f"key4u://conversations/{conversation_id}",
    )


__all__ = ["Bridge"]
