"""Several models asked at once: the members of a group, the synthesis prompt, and the group's result.

A group (``grp_`` id) is one conversation per model, each started with the same prompt, instructions,
tools and functions and run in parallel by the bridge as any conversation is; none is ever sent
another's answer. The group's own conversation holds only the optional synthesis: one more model is
given the request and the answers (labelled, in an order and under names the caller chooses) and
writes where they agree, where they differ, and what it recommends.

Plain data and text: the bridge starts, waits for and stores the conversations; nothing here does I/O.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Sequence

from server.bridge.conversation import Group, Labels, Member, ResultUsage, Status
from server.bridge.request import ModelAnswer, RespondRequest, RespondResult

GROUP_PREFIX = "grp_"
#: Characters of each answer the synthesis is given; the rest is cut, and the synthesis told so.
ANSWER_CHARS = 24_000

SYNTHESIS_INSTRUCTIONS = (
    "You compare answers that several AI models gave, each on its own, to the same request. None of them "
    "saw the others. Write three short sections: Agreements (what the answers share), Disagreements "
    "(where they differ, and which side is better supported), and Recommended answer (the best answer to "
    "the request, drawing on all of them). Refer to the answers by their labels. Judge the content, not "
    "the style or the length."
)


def new_group_id() -> str:
    return GROUP_PREFIX + secrets.token_hex(12)


def is_group(conversation_id: str | None) -> bool:
    return conversation_id is not None and conversation_id.startswith(GROUP_PREFIX)


def plan_members(models: Sequence[str]) -> list[Member]:
    """One member per model, in the order given; a model listed again is asked once, and said so."""
    members: list[Member] = []
    seen: set[str] = set()
    for model in models:
        if model in seen:
            members.append(Member(model=model, error=f"{model} is listed twice in models; it was asked once"))
            continue
        seen.add(model)
        members.append(Member(model=model))
    return members


def member_request(request: RespondRequest, model: str) -> RespondRequest:
    """What one member is sent: the group's request, for that model alone."""
    return request.model_copy(update={"models": None, "synthesize": None, "conversation_id": None, "model": model})


def follow_up(request: RespondRequest, conversation_id: str) -> RespondRequest:
    """A group's follow-up prompt (and changed options) for one member; each keeps its own model."""
    return request.model_copy(update={"conversation_id": conversation_id, "model": None, "models": None})


def synthesis_prompt(
    prompt: str, answers: Sequence[ModelAnswer], others_failed: int, labels: Labels, rng: random.Random | None = None
) -> tuple[str, dict[str, str]]:
    """The request and the completed answers, labelled as ``labels`` says, and which label is which model.

    ``anonymous``: "Answer A", "Answer B" in a shuffled order (the judge cannot favour a model it
    knows, or the first answer); ``shuffled``: named by model, in a shuffled order; ``named``: named by
    model, in the order the models were listed."""
    shown = list(answers)
    if labels != "named":
        (rng or random.SystemRandom()).shuffle(shown)
    seen_as: dict[str, str] = {}
    parts = [f"The request:\n<request>\n{prompt}\n</request>"]
    failed = f" ({others_failed} other model(s) gave no answer)" if others_failed else ""
    parts.append(f"{len(shown)} answers, each written without seeing the others{failed}:")
    for n, answer in enumerate(shown):
        label = f"Answer {chr(ord('A') + n)}" if labels == "anonymous" else f"Answer from {answer.asked}"
        seen_as[label] = answer.asked
        text = answer.text
        if len(text) > ANSWER_CHARS:
            text = (
                text[:ANSWER_CHARS]
                + f"\n[... cut: the answer goes on for {len(answer.text) - ANSWER_CHARS} characters]"
            )
        parts.append(f'<answer label="{label}">\n{text}\n</answer>')
    return "\n\n".join(parts), seen_as


def answered(answers: Sequence[ModelAnswer]) -> list[ModelAnswer]:
    return [a for a in answers if a.status == "completed" and a.text]


def settled(answers: Sequence[ModelAnswer]) -> bool:
    """Every member has stopped: nothing runs, nothing waits for the caller's function outputs."""
    return all(a.status not in ("in_progress", "requires_action") for a in answers)


def group_status(answers: Sequence[ModelAnswer], synthesis: RespondResult | None) -> Status:
    if any(a.status == "in_progress" for a in answers) or (synthesis is not None and synthesis.status == "in_progress"):
        return "in_progress"
    if any(a.status == "requires_action" for a in answers):
        return "requires_action"
    if any(a.status == "completed" for a in answers):
        return "completed"  # a model that failed does not fail the others
    if any(a.status == "incomplete" for a in answers):
        return "incomplete"
    return "failed"


def combined_usage(results: Sequence[RespondResult]) -> ResultUsage:
    """Every member's and the synthesis's usage summed; the cost is null once any of them is unknown."""
    total = ResultUsage(cost_usd=0.0)
    unknown: list[str] = []
    for result in results:
        usage = result.usage
        total.input_tokens += usage.input_tokens
        total.output_tokens += usage.output_tokens
        total.cached_tokens += usage.cached_tokens
        total.reasoning_tokens += usage.reasoning_tokens
        total.total_tokens += usage.total_tokens
        if usage.cost_usd is None and not usage.total_tokens and not usage.cost_note:
            continue  # no turn was made (the model failed at once): nothing to pay
        if usage.cost_usd is None:
            name = result.asked if isinstance(result, ModelAnswer) else f"the synthesis ({result.model})"
            unknown.append(f"{name}: {usage.cost_note or 'unknown'}")
        elif total.cost_usd is not None:
            total.cost_usd += usage.cost_usd
    if unknown:
        total.cost_usd, total.cost_note = None, "; ".join(unknown)
    elif total.cost_usd is not None:
        total.cost_usd = round(total.cost_usd, 8)
    return total


def group_result(
    group_id: str,
    group: Group,
    answers: list[ModelAnswer],
    synthesis: RespondResult | None,
    notes: Sequence[str] = (),
) -> RespondResult:
    """The group's result: the synthesis (when there is one) as its text, then every model's own result."""
    status = group_status(answers, synthesis)
    all_notes = [m.error for m in group.members if m.error]
    all_notes += list(notes)
    error: str | None = None
    if synthesis is not None and synthesis.status != "in_progress":
        if synthesis.status == "completed":
            all_notes.append("the synthesis saw " + ", ".join(f"{k} = {v}" for k, v in group.seen_as.items()))
        else:
            error = f"the synthesis by {group.synthesize} did not finish ({synthesis.status}): {synthesis.error or ''}"
            error = error.rstrip(": ")
    elif group.synthesize and status == "completed" and not answered(answers):
        all_notes.append("no model answered, so there was nothing to synthesize")
    if status == "failed":
        error = "every model failed: " + "; ".join(f"{a.asked}: {a.error or a.status}" for a in answers)
    counted: list[RespondResult] = [*answers, *([synthesis] if synthesis is not None else [])]
    return RespondResult(
        text=synthesis.text if synthesis is not None and synthesis.status == "completed" else "",
        status=status,
        conversation_id=group_id,
        next=_NEXT.get(status, "").format(id=group_id) or None,
        model=synthesis.model if synthesis is not None else None,
        api=synthesis.api if synthesis is not None else None,
        turns=synthesis.turns if synthesis is not None else 0,
        tool_calls=[],
        pending_calls=[],
        usage=combined_usage(counted),
        error=error,
        notes=all_notes,
        transcript=f"key4u://conversations/{group_id}",
        seconds=_seconds(answers, synthesis),
        answers=answers,
    )


def _seconds(answers: Sequence[ModelAnswer], synthesis: RespondResult | None) -> float | None:
    """The group's run: the slowest model (they run at once), then the synthesis."""
    if any(a.seconds is None for a in answers):
        return None
    slowest = max((a.seconds or 0.0 for a in answers), default=0.0)
    return round(slowest + (synthesis.seconds or 0.0 if synthesis is not None else 0.0), 3)


_NEXT = {
    "requires_action": "run each answer's pending_calls and send their outputs with that answer's conversation_id "
    "and function_outputs; then call key4u_respond with conversation_id={id!r} to wait for all",
    "in_progress": "call key4u_respond with only conversation_id={id!r} to wait for every answer",
    "incomplete": "call key4u_respond with conversation_id={id!r} and a prompt to go on",
}


__all__ = [
    "GROUP_PREFIX",
    "SYNTHESIS_INSTRUCTIONS",
    "answered",
    "combined_usage",
    "follow_up",
    "group_result",
    "group_status",
    "is_group",
    "member_request",
    "new_group_id",
    "plan_members",
    "settled",
    "synthesis_prompt",
]
