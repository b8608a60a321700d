"""A conversation as stores keep it: a small *head* and two append-only lists of *parts*.

The head is everything but the history (options, status, answer, usage: a few KB at most); the parts
are the items of the history and the tool-call traces, one JSON document each. A conversation only
ever grows at the end of both lists, so a save writes the head and the parts added since the last
save, and a read of a conversation whose first parts are already known reads only the rest: the cost
of a save, and of continuing a conversation, does not grow with its history.

``Saved`` records, on the conversation object, how much of it the store holds; a save that finds the
stored row as recorded appends, and any other (a conversation not read from this store, a row changed
by someone else, a history that shrank) rewrites the parts whole under a new ``generation``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pydantic import TypeAdapter, ValidationError

from server.bridge.conversation import Conversation, ToolCallTrace
from server.upstream.model import Item

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: A part's kind, as stored: an item of the history, a tool-call trace.
ITEM_PART, TRACE_PART = 0, 1
#: The fields kept as parts, not in the head.
PART_FIELDS = frozenset({"items", "tool_calls"})
_NOT_IN_HEAD = {*PART_FIELDS, "options"}  # the options go in first, as ``head_json`` keeps them
ITEMS = TypeAdapter(list[Item])
TRACES = TypeAdapter(list[ToolCallTrace])


@dataclass(frozen=True)
class Saved:
    """How much of a conversation a store holds: its parts' generation and how many of each it has."""

    generation: int
    items: int
    traces: int


@dataclass(frozen=True)
class Save:
    """What to write for one save: the head, the parts to add from ``items_from``/``traces_from``, and
    whether the stored parts are replaced (``rewrite``) or appended to."""

    head: str
    items: list[str]
    traces: list[str]
    items_from: int
    traces_from: int
    rewrite: bool
    after: Saved


def head_json(conv: Conversation) -> str:
    """The conversation without its parts. Its options (which may hold a thousand function schemas)
    are written once per ``Options`` object, not on every save."""
    kept = conv._options_json  # noqa: SLF001  # pyright: ignore[reportPrivateUsage] -- the store's bookkeeping
    if kept is None or kept[0] is not conv.options:
        kept = (conv.options, conv.options.model_dump_json())
        conv._options_json = kept  # noqa: SLF001  # pyright: ignore[reportPrivateUsage]
    rest = conv.model_dump_json(exclude=_NOT_IN_HEAD)
    return '{"options":' + kept[1] + ("," + rest[1:] if rest != "{}" else "}")


def plan_save(conv: Conversation, stored: Saved | None) -> Save:
    """What saving ``conv`` writes, given what the store holds now (``stored``; None when nothing or
    a whole-document row of an older version)."""
    known = saved_state(conv)
    append = (
        known is not None
        and known == stored
        and len(conv.items) >= known.items
        and len(conv.tool_calls) >= known.traces
    )
    if known is not None and append:
        items_from, traces_from, generation = known.items, known.traces, known.generation
    else:
        items_from, traces_from = 0, 0
        generation = (stored.generation if stored is not None else 0) + 1
    return Save(
        head=head_json(conv),
        items=[i.model_dump_json() for i in conv.items[items_from:]],
        traces=[t.model_dump_json() for t in conv.tool_calls[traces_from:]],
        items_from=items_from,
        traces_from=traces_from,
        rewrite=not append,
        after=Saved(generation, len(conv.items), len(conv.tool_calls)),
    )


def saved_state(conv: Conversation) -> Saved | None:
    state = conv._saved  # noqa: SLF001  # pyright: ignore[reportPrivateUsage] -- the store's bookkeeping
    return state if isinstance(state, Saved) else None


def mark_saved(conv: Conversation, state: Saved | None) -> None:
    conv._saved = state  # noqa: SLF001  # pyright: ignore[reportPrivateUsage]


def joined(head: str, items: list[str], traces: list[str]) -> str:
    """One conversation document from its head and parts, for a single parse."""
    if not head.endswith("}"):
        return head  # not a JSON object: the parse reports it
    return f'{head[:-1]},"items":[{",".join(items)}],"tool_calls":[{",".join(traces)}]}}'


@dataclass(frozen=True)
class Head:
    """A stored head row: the head's JSON, and what it says the parts hold (None: a whole document
    written by a version before parts, in ``data``)."""

    data: str
    generation: int | None
    items: int | None
    traces: int | None

    @property
    def saved(self) -> Saved | None:
        if self.generation is None or self.items is None or self.traces is None:
            return None
        return Saved(self.generation, self.items, self.traces)


#: What a save answers when the row is claimed by another owner than the one saving: nothing was written.
NOT_OURS = Saved(-1, -1, -1)


@dataclass(frozen=True)
class Known:
    """What the cache already holds of a conversation being read: parsed parts, and where to read on from."""

    cached: tuple[list[Item], list[ToolCallTrace]] | None
    items_from: int
    traces_from: int


def known_parts(cache: PartsCache, conversation_id: str, saved: Saved) -> Known:
    """The parts of ``conversation_id`` to read (from ``items_from``/``traces_from`` on) given the cache."""
    cached = cache.get(conversation_id, saved.generation)
    if cached is not None and (len(cached[0]) > saved.items or len(cached[1]) > saved.traces):
        cached = None
    if cached is None:
        return Known(None, 0, 0)
    return Known(cached, len(cached[0]), len(cached[1]))


def assemble(
    cache: PartsCache, conversation_id: str, head: str, saved: Saved, known: Known, items: list[str], traces: list[str]
) -> Conversation | None:
    """The conversation from its head, the cached parts and those read after them; None when parts are
    missing. Raises ``ValidationError`` when it no longer reads as a conversation."""
    if known.items_from + len(items) != saved.items or known.traces_from + len(traces) != saved.traces:
        return None
    if known.cached is None:
        conv = Conversation.model_validate_json(joined(head, items, traces))
    else:
        conv = Conversation.model_validate_json(head)
        conv.items = [*known.cached[0], *(ITEMS.validate_json(f"[{','.join(items)}]") if items else ())]
        conv.tool_calls = [*known.cached[1], *(TRACES.validate_json(f"[{','.join(traces)}]") if traces else ())]
    mark_saved(conv, saved)
    size = cache.size(conversation_id) if known.cached is not None else 0
    cache.put(conv, saved.generation, size + sum(map(len, items)) + sum(map(len, traces)))
    return conv


def is_stale(plan: Save, stored: Saved | None) -> bool:
    """Whether an appending ``plan`` no longer fits the row (someone else wrote it since it was read)."""
    return (
        stored is None
        or stored.generation != plan.after.generation
        or (stored.items, stored.traces) != (plan.items_from, plan.traces_from)
    )


def cache_saved(cache: PartsCache, conv: Conversation, plan: Save) -> None:
    """After a save: the conversation marked as saved, and its parts cached."""
    mark_saved(conv, plan.after)
    size = 0 if plan.rewrite else cache.size(conv.id)
    cache.put(conv, plan.after.generation, size + sum(map(len, plan.items)) + sum(map(len, plan.traces)))


class Unreadable:
    """Stored conversations that no longer read (rows that do not validate, parts missing): each one is
    ignored, and logged once, naming the database ``where``."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._seen: set[str] = set()

    def clear(self) -> None:
        self._seen.clear()

    def parse(self, conversation_id: str, parse: Callable[[], T]) -> T | None:
        """What ``parse`` makes of a stored row, or None (logged once) when it no longer validates."""
        try:
            return parse()
        except ValidationError as exc:
            if conversation_id not in self._seen:
                self._seen.add(conversation_id)
                first = exc.errors(include_url=False, include_input=False)[0]
                logger.warning(
                    "conversation %s in %s no longer reads as a conversation and is ignored "
                    "(%d errors; first at %s: %s)",
                    conversation_id,
                    self.where,
                    exc.error_count(),
                    ".".join(str(part) for part in first["loc"]) or "the top",
                    first["msg"],
                )
            return None

    def assemble(
        self,
        cache: PartsCache,
        conversation_id: str,
        head: str,
        saved: Saved,
        known: Known,
        items: list[str],
        traces: list[str],
    ) -> Conversation | None:
        """``assemble``, or None (logged once) when the row does not validate or parts are missing."""
        conv = self.parse(conversation_id, lambda: assemble(cache, conversation_id, head, saved, known, items, traces))
        if conv is None and conversation_id not in self._seen:
            self._seen.add(conversation_id)
            logger.warning("conversation %s in %s has parts missing and is ignored", conversation_id, self.where)
        return conv


class PartsCache:
    """The parts of recently used conversations, already parsed, so that continuing one reads and
    parses only what was added since. Bounded by the bytes of JSON the cached parts came from.

    Parts are never changed once made (a conversation only appends), so a cached list's items are
    shared with the conversations built from it; each conversation gets its own list. Bounded in count
    too (``max_entries``, the most recently used): parsed parts take several times the bytes of their
    JSON, and a server that starts conversations all day should stay the size it settles at.
    """

    def __init__(self, max_bytes: int = 32 * 1024 * 1024, max_entries: int = 256) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[int, list[Item], list[ToolCallTrace], int]] = OrderedDict()
        self._bytes = 0

    def get(self, conversation_id: str, generation: int) -> tuple[list[Item], list[ToolCallTrace]] | None:
        entry = self._entries.get(conversation_id)
        if entry is None or entry[0] != generation:
            return None
        self._entries.move_to_end(conversation_id)
        return entry[1], entry[2]

    def size(self, conversation_id: str) -> int:
        """About how many bytes of JSON the cached parts of ``conversation_id`` came from (0: none cached)."""
        entry = self._entries.get(conversation_id)
        return entry[3] if entry is not None else 0

    def put(self, conv: Conversation, generation: int, size: int) -> None:
        """Remember ``conv``'s parts (``size``: about how many bytes of JSON they take)."""
        self.drop(conv.id)
        if size > self.max_bytes // 4:  # one huge conversation must not push out all the others
            return
        self._entries[conv.id] = (generation, list(conv.items), list(conv.tool_calls), size)
        self._bytes += size
        while (self._bytes > self.max_bytes or len(self._entries) > self.max_entries) and self._entries:
            _, (_, _, _, dropped) = self._entries.popitem(last=False)
            self._bytes -= dropped

    def drop(self, conversation_id: str) -> None:
        entry = self._entries.pop(conversation_id, None)
        if entry is not None:
            self._bytes -= entry[3]

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
