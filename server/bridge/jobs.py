"""Running conversations: each a job in the server's task group, under a claim renewed while it runs.

A job outlives the call that started it, so that a call can return ``in_progress`` at its deadline
while the work goes on. ``Jobs.running`` is this process's cache of what it runs; the store's
claims are the truth that every process sharing the database sees. A job never lets its
conversation's failure reach the task group, and always saves the conversation and releases its
claim at the end, even when the server is shutting down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

from server.bridge.approval import NOBODY, ApprovalRequest, Approver, Verdict
from server.bridge.conversation import Conversation
from server.bridge.loop import Loop
from server.errors import StoreError
from server.store.base import ConversationStore

logger = logging.getLogger(__name__)

Listener = Callable[[str], Awaitable[None]]
#: How long the final save and release may take when the server is stopping.
_SAVE_BOUND = 10.0
#: How long a final save that met another process's lock is tried again, in the background.
SAVE_RETRY_SECONDS = 600.0
#: The longest pause between those tries.
_SAVE_RETRY_PAUSE = 30.0
_BUSY_NOTE = (
    "the conversation database is busy (another process holds it): this conversation is saved as soon as it is "
    "free; until then it can be waited on in this server process only"
)


@dataclass
class Job:
    """One conversation run by this process, or one already done, as a caller waits on it.

    It holds the event set when the run ends, the scope that cancels it, and the listener, if any,
    that hears its progress.
    """

    conversation: Conversation
    done: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    listener: Listener | None = None
    #: The latest progress message, for a listener that comes later (a caller waiting again, or in a group).
    last: str | None = None
    #: Who can approve an ``ask`` call right now: the waiting caller's host, if it can show a form.
    approver: Approver | None = None

    #: A form is open in the host: the waiting caller stays past its deadline until the person answers.
    asking: bool = False
    #: Whether the store holds the conversation yet. A new one is written (claimed) only once its id is
    #: about to be seen while it runs, or at its first renewal; a run that ends sooner is written once.
    stored: bool = True
    #: Held while the job writes its conversation, so that the first write and the last never cross.
    writing: anyio.Lock = field(default_factory=anyio.Lock)

    async def approve(self, request: ApprovalRequest) -> Verdict:
        approver = self.approver
        if approver is None:
            return NOBODY
        self.asking = True
        try:
            return await approver.ask(request)
        finally:
            self.asking = False

    async def notify(self, message: str) -> None:
        self.last = message
        if self.listener is not None:
            try:
                await self.listener(message)
            except Exception:  # a client that went away must not stop the work
                logger.debug("progress notification failed", exc_info=True)


class Jobs:
    """The conversations this process runs in the background, each under a store claim it renews.

    A job's failure never reaches the task group; its conversation is always saved and released.
    """

    def __init__(self, store: ConversationStore, task_group: TaskGroup, owner: str, lease: float) -> None:
        self.store = store
        self.task_group = task_group
        self.owner = owner
        self.lease = lease
        self.running: dict[str, Job] = {}
        #: Whether the store's last write went through: until it has, and after one fails, a new
        #: conversation is written before anything is sent (so nothing is spent on one it cannot keep).
        self.store_ok = False

    @staticmethod
    def finished(conv: Conversation) -> Job:
        """A job for a conversation that is not running here: only its state to report."""
        job = Job(conv)
        job.done.set()
        return job

    def start(self, conv: Conversation, make_loop: Callable[[Job], Loop], *, stored: bool = True) -> Job:
        """Run ``conv`` in the background: already claimed by this process and saved as running, or, if
        not ``stored``, a new conversation nobody else knows of yet (``store_now`` writes it)."""
        job = Job(conv, stored=stored)
        self.running[conv.id] = job
        loop = make_loop(job)
        self.task_group.start_soon(self._run, job, loop, name=f"conversation:{conv.id}")
        return job

    async def _run(self, job: Job, loop: Loop) -> None:
        conv = job.conversation
        started = time.perf_counter()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep_claim, job)
                with job.scope:
                    await loop.run(conv)
                tg.cancel_scope.cancel()
            if job.scope.cancelled_caught:
                # A host that timed out looks the same as a person who pressed stop: keep the work.
                conv.status, conv.interrupted = "incomplete", True
                conv.notes.append(
                    f"interrupted: the call was cancelled (or the host timed out); call key4u_respond with "
                    f"conversation_id={conv.id!r} to resume it"
                )
        except Exception as exc:  # never let one conversation take the server down
            logger.exception("conversation %s crashed", conv.id)
            conv.status, conv.error = "failed", f"internal error: {type(exc).__name__}"
        finally:
            conv.run_seconds = round(time.perf_counter() - started, 3)
            later = False  # saved in the background, once the lock that held it up is gone
            with anyio.move_on_after(_SAVE_BOUND, shield=True) as bounded:
                try:
                    async with job.writing:
                        await self._save_and_release(conv)
                        job.stored = self.store_ok = True
                except Exception as exc:
                    self.store_ok = False
                    later = isinstance(exc, StoreError) and exc.busy
                    if not later:  # the caller still gets the result, told it was not kept
                        # A StoreError says what went wrong; anything else is a bug: its traceback.
                        unexpected = not isinstance(exc, StoreError)
                        logger.error("conversation %s: the final save failed: %s", conv.id, exc, exc_info=unexpected)
                        conv.notes.append(f"this conversation could not be saved, so it cannot be continued: {exc}")
            if bounded.cancelled_caught:
                self.store_ok = False
                later = True
            if later:
                # Kept in ``running`` meanwhile: this process answers for it until the store has it.
                logger.warning("conversation %s: the database is busy; saving it in the background", conv.id)
                conv.notes.append(_BUSY_NOTE)
                self.task_group.start_soon(self._save_later, job, name=f"save:{conv.id}")
            else:
                self.running.pop(conv.id, None)
            job.done.set()

    async def _save_later(self, job: Job) -> None:
        """Try the final save again, with pauses that double, until the store takes it or
        ``SAVE_RETRY_SECONDS`` have passed."""
        conv = job.conversation
        pause, deadline = 1.0, time.monotonic() + SAVE_RETRY_SECONDS
        try:
            while True:
                await anyio.sleep(pause)  # the caller has had the result, note and all, by now
                # Stored without the note the caller was given: once saved, it is no longer true.
                conv.notes = [n for n in conv.notes if n != _BUSY_NOTE]
                try:
                    async with job.writing:
                        await self._save_and_release(conv)
                except Exception as exc:  # never into the task group: it would take the server down
                    retry = isinstance(exc, StoreError) and time.monotonic() + pause <= deadline
                    if not retry:
                        unexpected = not isinstance(exc, StoreError)
                        logger.error(
                            "conversation %s could not be saved, and is lost: %s", conv.id, exc, exc_info=unexpected
                        )
                        return
                    pause = min(pause * 2, _SAVE_RETRY_PAUSE)
                    continue
                job.stored = self.store_ok = True
                logger.info("conversation %s: saved, once the database was free", conv.id)
                return
        finally:
            self.running.pop(conv.id, None)

    async def _save_and_release(self, conv: Conversation) -> None:
        """The run's last save and the release of its claim, in one write; nothing when another process
        has taken the conversation over meanwhile (its work is not overwritten)."""
        try:
            kept = await self.store.put(conv, owner=self.owner, release=True)
        except BaseException:
            await self.store.release(conv.id, self.owner)
            raise
        if not kept:
            logger.warning("conversation %s: another process holds it now; this run's end was not saved", conv.id)
            conv.notes.append(
                "another server process took this conversation over while this run went on: what this run did "
                "after that was not saved; call key4u_respond with its conversation_id to see where it stands"
            )

    async def create(self, conv: Conversation) -> None:
        """Write a new conversation, claimed by this process; ``store_ok`` says how it went. Raises
        ``StoreError``."""
        try:
            await self.store.create(conv, self.owner, self.lease)
        except BaseException:
            self.store_ok = False
            raise
        self.store_ok = True

    async def store_now(self, job: Job) -> None:
        """Write a running job's new conversation, claimed, if the store does not hold it yet: before its
        id is seen (another process may then be asked to continue it). Raises ``StoreError``."""
        async with job.writing:
            if not job.stored and not job.done.is_set():
                await self.create(job.conversation)
                job.stored = True

    async def _keep_claim(self, job: Job) -> None:
        while True:
            await anyio.sleep(self.lease / 3)
            try:
                if not job.stored:
                    await self.store_now(job)  # a long run: written, claimed, as the lease would have it
                    continue
                kept = await self.store.renew(job.conversation.id, self.owner, self.lease)
            except StoreError as exc:  # a passing database fault: the work goes on, the next renewal retries
                logger.warning("conversation %s: could not renew its claim: %s", job.conversation.id, exc)
                continue
            if not kept:
                logger.warning("conversation %s: its claim was lost; stopping it here", job.conversation.id)
                job.conversation.notes.append("another server process took this conversation over")
                job.scope.cancel()
                return

    def cancel_all(self) -> None:
        for job in list(self.running.values()):
            job.scope.cancel()
