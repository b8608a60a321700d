"""What each MCP host does with a tool result, and fitting ``key4u_respond``'s result into that budget.

Hosts differ (see the README's host notes): Claude Code and Codex hand the model the structured
content as JSON and drop the text; Gemini CLI hands it the text; each cuts or refuses results above
its own size. ``Host.of`` picks the profile from the ``clientInfo.name`` the host sent at initialize;
``fit`` shortens a result, least valuable parts first (tool-call details, then older calls, then
notes, then the answer's tail), until what the host will measure fits. The full record stays in the
transcript resource, which the result links to. Nothing here runs or stores anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mcp.server.mcpserver import Context

from server.bridge.conversation import ToolCallTrace
from server.bridge.request import RespondResult

Reads = Literal["structured", "text", "both"]


@dataclass(frozen=True)
class Host:
    """One host's handling of results: which part its model reads, the size it keeps, its call timeout."""

    name: str
    reads: Reads
    budget: int
    """Characters of what the model reads that the host passes on whole."""
    deadline: float | None = None
    """Seconds a call may take before the host gives up, where known and longer than the default."""

    @classmethod
    def of(cls, client_name: str | None) -> Host:
        name = (client_name or "").lower()
        for marker, host in _HOSTS:
            if marker in name:
                return host
        return _UNKNOWN


_HOSTS: tuple[tuple[str, Host], ...] = (
    # Inline up to 50,000 chars unless the tool's definition raises it with _meta["anthropic/maxResultSizeChars"]
    # (respond_tool sets it); refuses beyond ~25,000 tokens (MAX_MCP_OUTPUT_TOKENS).
    ("claude-code", Host("Claude Code", "structured", 60_000, deadline=100.0)),
    # Keeps about 12 KB of the structured content (6,000 characters each end) and cuts out the middle;
    # 60 s per call. Sends clientInfo.name "codex-mcp-client".
    ("codex", Host("Codex", "structured", 9_000)),
    # Reads the text; truncates above 40,000 chars (20% head, 80% tail) when a result has one part;
    # 10 minutes per call. Sends "gemini-cli-mcp-client".
    ("gemini", Host("Gemini CLI", "text", 36_000, deadline=300.0)),
    # Claude Desktop identifies as claude-ai; about 60 s per call.
    ("claude", Host("Claude Desktop", "both", 40_000)),
    ("cursor", Host("Cursor", "both", 30_000)),
    ("visual studio code", Host("VS Code", "both", 30_000)),
    ("vscode", Host("VS Code", "both", 30_000)),
)
_UNKNOWN = Host("an unknown host", "both", 20_000)

SHORT_OUTPUT = 200
_NOTE_ROOM = 450
SHORT_ARGUMENTS = 300


#: What a listing leaves free under the host's budget for the "more not shown" line and the SDK's framing.
_LISTING_ROOM = 160


def lines_within(lines: Sequence[str], budget: int, more: Callable[[int], str]) -> str:
    """``lines`` joined, as many as fit in ``budget`` characters from the first; when some do not fit,
    they end with ``more(count_left_out)``, a line saying how to see the rest."""
    out: list[str] = []
    size = 0
    for n, line in enumerate(lines):
        if size + len(line) + 1 > budget - _LISTING_ROOM:
            out.append(more(len(lines) - n))
            break
        out.append(line)
        size += len(line) + 1
    return "\n".join(out)


def client_name(ctx: Context[Any]) -> str | None:
    """The ``clientInfo.name`` the host sent at initialize, if any."""
    params = ctx.request_context.session.client_params
    return params.client_info.name if params is not None else None


def measure(result: RespondResult, render: Callable[[RespondResult], str], reads: Reads) -> int:
    """Characters of what the host's model will read: the structured content's JSON, the text, or both."""
    structured = len(json.dumps(result.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":")))
    if reads == "structured":
        return structured
    text = len(render(result))
    return text if reads == "text" else structured + text


def _short_call(call: ToolCallTrace) -> ToolCallTrace:
    arguments = call.arguments
    shown = json.dumps(arguments, ensure_ascii=False) if not isinstance(arguments, str) else arguments
    if len(shown) > SHORT_ARGUMENTS:
        arguments = shown[:SHORT_ARGUMENTS] + "…"
    output = call.output if len(call.output) <= SHORT_OUTPUT else call.output[:SHORT_OUTPUT] + "…"
    return call.model_copy(update={"arguments": arguments, "output": output})


def fit(result: RespondResult, budget: int, render: Callable[[RespondResult], str], reads: Reads) -> RespondResult:
    """``result`` shortened until ``measure`` fits ``budget``; pending calls are never shortened (the
    caller must run them as the model wrote them). What was left out is said in ``notes``."""

    def size(r: RespondResult) -> int:
        return measure(r, render, reads)

    if size(result) <= budget:
        return result
    budget -= _NOTE_ROOM * (2 if reads == "both" else 1)  # room for the note that says what was left out
    fitted = result.model_copy(update={"tool_calls": [_short_call(c) for c in result.tool_calls]})
    left_out: list[str] = []
    # First the rows of per-turn usage (the totals stay), oldest first; then the oldest tool calls.
    turns = fitted.usage.turns
    kept_turns = len(turns)
    while kept_turns > 0 and size(fitted) > budget:
        kept_turns //= 2
        usage = fitted.usage.model_copy(update={"turns": turns[len(turns) - kept_turns :] if kept_turns else []})
        fitted = fitted.model_copy(update={"usage": usage})
    if kept_turns < len(turns):
        left_out.append(f"the usage of {len(turns) - kept_turns} of {len(turns)} turns (the totals are complete)")
    calls = fitted.tool_calls
    keep = len(calls)
    while keep > 0 and size(fitted) > budget:
        keep //= 2
        fitted = fitted.model_copy(update={"tool_calls": calls[len(calls) - keep :] if keep else []})
    if keep < len(calls):
        left_out.append(f"{len(calls) - keep} of {len(calls)} tool calls")
    if size(fitted) > budget:
        fitted = fitted.model_copy(update={"notes": [n[:300] for n in fitted.notes[-5:]]})
    if size(fitted) > budget and fitted.text:
        fitted = _answer_head(fitted, budget, size, 2 if reads == "both" else 1)
        left_out.append(f"the answer after its first {len(fitted.text)} of {len(result.text)} characters")
    if left_out:
        fitted.notes.append(
            f"shortened to fit this host ({'; '.join(left_out)} left out): read everything in the resource "
            f"{result.transcript}, or call key4u_respond with conversation_id={result.conversation_id!r} and "
            f"offset={len(fitted.text)} for the rest of the answer"
        )
    return fitted


def fit_group(
    result: RespondResult, budget: int, render: Callable[[RespondResult], str], reads: Reads
) -> RespondResult:
    """A group's result within ``budget``, shared fairly: the synthesis keeps what it needs up to half,
    and each model's answer gets an equal share of the rest, a share a short answer leaves unused going
    to the longer ones. Each answer is then shortened as ``fit`` shortens one result."""

    def size(r: RespondResult) -> int:
        return measure(r, render, reads)

    answers = result.answers or []
    if size(result) <= budget or not answers:
        return fit(result, budget, render, reads)
    base = result.model_copy(update={"answers": []})
    head = fit(base, budget // 2, render, reads)
    room = max(budget - size(head), 0)
    shares = fair_shares([size(a) for a in answers], room)
    fitted = [fit(a, share, render, reads) for a, share in zip(answers, shares, strict=True)]
    shortened = sum(f is not a for f, a in zip(fitted, answers, strict=True))
    notes = [*head.notes]
    if shortened:
        notes.append(
            f"{shortened} of {len(answers)} answers were shortened to share this host's room fairly: each "
            "answer's own notes say where to read the rest"
        )
    return head.model_copy(update={"answers": fitted, "notes": notes})


def fair_shares(sizes: Sequence[int], room: int) -> list[int]:
    """Max-min fair shares of ``room``: the smallest needs are met whole, the rest split equally."""
    shares = [0] * len(sizes)
    left, count = room, len(sizes)
    for n in sorted(range(len(sizes)), key=lambda i: sizes[i]):
        share = min(sizes[n], left // count)
        shares[n] = share
        left -= share
        count -= 1
    return shares


def _answer_head(
    result: RespondResult, budget: int, size: Callable[[RespondResult], int], copies: int
) -> RespondResult:
    """The longest head of the answer that fits (a binary search: each size is one serialisation)."""
    text = result.text
    low, high = 0, len(text)
    room = result.model_copy(update={"text": ""})
    overhead = size(room) + 100
    while low < high:
        middle = (low + high + 1) // 2
        if overhead + len(json.dumps(text[:middle], ensure_ascii=False)) * copies <= budget:
            low = middle
        else:
            high = middle - 1
    return result.model_copy(update={"text": text[:low]})


__all__ = ["Host", "client_name", "fair_shares", "fit", "fit_group", "lines_within", "measure"]
