"""Several models at once (``models``): independent parallel answers, the synthesis, partial failure,
pending calls resumed per model, follow-ups and waiting, through a real MCP client and the stand-in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from server.cli.demo import KEY4U_PROMPT
from server.standin import LABEL, Faults, StandIn
from server.surface.budget import fair_shares
from tests.conftest import FAKE_KEY
from tests.helpers import LOCAL_TOOLS, bridge_client, settings_for, text_of

pytestmark = pytest.mark.anyio

TWO = ["gpt-4.1", "claude-sonnet-4"]
WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "inputSchema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


async def respond(client: Client, **arguments: Any) -> tuple[dict[str, Any], str, bool]:
    result = await client.call_tool("key4u_respond", arguments)
    assert result.structured_content is not None, text_of(result)
    return result.structured_content, text_of(result), bool(result.is_error)


def sent_for(standin: StandIn, model: str) -> list[str]:
    """Every request body the stand-in received for ``model``, as JSON text."""
    return [json.dumps(body) for body in standin.requests if body.get("model") == model]


async def test_each_model_answers_on_its_own_in_parallel_and_never_sees_another(
    standin: StandIn, tmp_path: Path
) -> None:
    standin.faults = Faults(model_latency={"gpt-4.1": 0.3, "claude-sonnet-4": 0.3})
    async with bridge_client(settings_for(standin.base_url, tmp_path)) as client:
        out, text, is_error = await respond(client, prompt=KEY4U_PROMPT, models=TWO)
    assert not is_error and out["status"] == "completed" and out["conversation_id"].startswith("grp_")
    answers = out["answers"]
    assert [a["asked"] for a in answers] == TWO
    for answer in answers:
        assert answer["status"] == "completed" and answer["conversation_id"].startswith("conv_")
        assert answer["text"].startswith(f"{LABEL} As {answer['asked']}:") and "580.2" in answer["text"]
        assert {c["name"] for c in answer["tool_calls"]} == LOCAL_TOOLS  # each ran its own tool loop
        assert answer["turns"] == 2 and answer["seconds"] > 0 and answer["usage"]["input_tokens"] > 0
    assert len({a["conversation_id"] for a in answers}) == 2
    # Independent: no request of one model carries the other's answer (or its conversation).
    for mine, other in (TWO, TWO[::-1]):
        assert sent_for(standin, mine) and not [b for b in sent_for(standin, mine) if f"As {other}" in b]
    # Parallel: both models' requests were being answered at the same moment.
    assert standin.state.peak_active >= 2
    # The combined usage is the sum of the answers'.
    assert out["usage"]["input_tokens"] == sum(a["usage"]["input_tokens"] for a in answers)
    assert out["usage"]["output_tokens"] == sum(a["usage"]["output_tokens"] for a in answers)
    # The text: each model under its name, then the group's account.
    assert text.index("## gpt-4.1") < text.index("## claude-sonnet-4") < text.index("[group completed · 2 models")
    assert FAKE_KEY not in text + json.dumps(out)


@pytest.mark.parametrize("labels", ["anonymous", "shuffled", "named"])
async def test_the_synthesis_compares_the_answers_and_comes_first(
    labels: str, standin: StandIn, tmp_path: Path
) -> None:
    async with bridge_client(settings_for(standin.base_url, tmp_path)) as client:
        out, text, _ = await respond(
            client, prompt="Calculate 2 + 3", models=TWO, synthesize="gpt-4.1-mini", synthesis_labels=labels
        )
    assert out["status"] == "completed" and out["model"] == "gpt-4.1-mini"
    assert out["text"].startswith(f"{LABEL} As gpt-4.1-mini: Compared 2 answers")
    assert text.startswith("Synthesis by gpt-4.1-mini:") and text.index("Synthesis") < text.index("## gpt-4.1")
    (request,) = [json.loads(b) for b in sent_for(standin, "gpt-4.1-mini")]
    sent = json.dumps(request["input"])
    assert "Calculate 2 + 3" in sent and sent.count("<answer label=") == 2
    assert "Agreements" in request["instructions"] and not request.get("tools")
    (seen,) = [n for n in out["notes"] if n.startswith("the synthesis saw ")]
    if labels == "anonymous":
        assert 'label=\\"Answer A\\"' in sent and 'label=\\"Answer B\\"' in sent and "Answer from" not in sent
        assert seen.count("Answer ") == 2 and "gpt-4.1" in seen and "claude-sonnet-4" in seen
    else:
        assert 'label=\\"Answer from gpt-4.1\\"' in sent and 'label=\\"Answer from claude-sonnet-4\\"' in sent
    if labels == "named":  # in the order listed
        assert sent.index("Answer from gpt-4.1") < sent.index("Answer from claude-sonnet-4")
    # The synthesis is paid for too.
    synth_tokens = out["usage"]["input_tokens"] - sum(a["usage"]["input_tokens"] for a in out["answers"])
    assert synth_tokens > 0


async def test_a_model_that_fails_does_not_fail_the_others(standin: StandIn, tmp_path: Path) -> None:
    standin.faults = Faults(unknown_models=("no-such-model", "nor-this"))
    async with bridge_client(settings_for(standin.base_url, tmp_path)) as client:
        out, text, is_error = await respond(
            client, prompt="Calculate 2 + 3", models=["gpt-4.1", "no-such-model", "gpt-4.1"], synthesize="gpt-4.1"
        )
        assert not is_error and out["status"] == "completed"
        ok, failed = out["answers"]
        assert ok["status"] == "completed" and "5" in ok["text"]
        assert failed["asked"] == "no-such-model" and failed["status"] == "failed"
        assert "model_not_found" in failed["error"] and "no-such-model" in text
        assert "gpt-4.1 is listed twice in models; it was asked once" in out["notes"]
        assert len(sent_for(standin, "gpt-4.1")) == 3  # two turns of the one gpt-4.1 answer, and the synthesis
        assert out["text"].endswith("Compared 1 answers: Answer A.")  # only what was answered is compared
        assert "(1 other model(s) gave no answer)" in sent_for(standin, "gpt-4.1")[-1]
        assert out["usage"]["cost_usd"] is not None  # the failed model made no turn: nothing unknown to pay

        # Every model failing fails the group, and says why for each.
        out, text, is_error = await respond(client, prompt="hello", models=["no-such-model", "nor-this"])
    assert is_error and out["status"] == "failed"
    assert out["error"].startswith("every model failed: no-such-model: ")


async def test_bad_model_lists_are_refused_clearly(standin: StandIn, tmp_path: Path) -> None:
    async with bridge_client(settings_for(standin.base_url, tmp_path)) as client:
        for arguments, expected in (
            ({"models": [f"m{n}" for n in range(9)]}, "at most 8"),
            ({"models": ["gpt-4.1"]}, "at least 2"),
            ({"models": ["gpt-4.1", " "]}, "a model name"),
            ({"models": TWO, "model": "gpt-4.1"}, "either model or models"),
            ({"synthesize": "gpt-4.1"}, "synthesize needs models"),
            ({"models": TWO, "conversation_id": "conv_x"}, "models starts a new group"),
        ):
            result = await client.call_tool("key4u_respond", {"prompt": "hello", **arguments})
            assert result.is_error and expected in text_of(result), (arguments, text_of(result))
        assert not standin.requests  # nothing was sent
        ok, _, _ = await respond(client, prompt="hello", models=TWO)  # and the next call is served
    assert ok["status"] == "completed"


async def test_pending_calls_come_back_per_model_and_the_group_waits_for_all(standin: StandIn, tmp_path: Path) -> None:
    async with bridge_client(settings_for(standin.base_url, tmp_path)) as client:
        out, text, _ = await respond(
            client, prompt='Weather in "Oslo"', models=TWO, functions=[WEATHER], tools=[], synthesize="gpt-4.1-mini"
        )
        group = out["conversation_id"]
        assert out["status"] == "requires_action" and "pending_calls" in out["next"]
        assert not out["pending_calls"] and not sent_for(standin, "gpt-4.1-mini")  # no synthesis yet
        first, second = out["answers"]
        for answer in (first, second):
            (call,) = answer["pending_calls"]
            assert call["name"] == "get_weather" and call["arguments"] == {"city": "Oslo"}
        # Function outputs go to the model's own conversation, not the group's.
        refused = await client.call_tool(
            "key4u_respond", {"conversation_id": group, "function_outputs": [{"call_id": "x", "output": "1"}]}
        )
        assert refused.is_error and "that answer's conversation_id" in text_of(refused)

        resumed, _, _ = await respond(
            client,
            conversation_id=first["conversation_id"],
            function_outputs=[{"call_id": first["pending_calls"][0]["call_id"], "output": "rain, 4 °C"}],
        )
        assert resumed["status"] == "completed" and "rain" in resumed["text"]
        waiting, _, _ = await respond(client, conversation_id=group)
        assert waiting["status"] == "requires_action"
        assert [a["status"] for a in waiting["answers"]] == ["completed", "requires_action"]

        await respond(
            client,
            conversation_id=second["conversation_id"],
            function_outputs=[{"call_id": second["pending_calls"][0]["call_id"], "output": "snow, -2 °C"}],
        )
        done, text, _ = await respond(client, conversation_id=group)
        assert done["status"] == "completed" and done["text"].startswith(f"{LABEL} As gpt-4.1-mini: Compared 2")
        assert "rain" in done["answers"][0]["text"] and "snow" in done["answers"][1]["text"]
        again, _, _ = await respond(client, conversation_id=group)  # waiting again does not synthesize again
    assert again["text"] == done["text"] and len(sent_for(standin, "gpt-4.1-mini")) == 1


async def test_a_follow_up_goes_to_every_model_and_is_synthesized_again(standin: StandIn, tmp_path: Path) -> None:
    async with bridge_client(settings_for(standin.base_url, tmp_path)) as client:
        out, _, _ = await respond(client, prompt="hello", models=TWO, synthesize="gpt-4.1")
        group = out["conversation_id"]
        more, _, _ = await respond(client, conversation_id=group, prompt="Calculate 6 * 7")
    assert more["status"] == "completed" and more["conversation_id"] == group
    assert [a["conversation_id"] for a in more["answers"]] == [a["conversation_id"] for a in out["answers"]]
    for answer in more["answers"]:
        assert "42" in answer["text"] and answer["tool_calls"][0]["name"] == "math_calculator"
    last = json.loads(sent_for(standin, "claude-sonnet-4")[-1])
    assert "hello" in json.dumps(last["input"])  # the member's own history goes on
    synth = [json.loads(b) for b in sent_for(standin, "gpt-4.1") if "<answer label=" in b]
    assert len(synth) == 2 and "Calculate 6 * 7" in json.dumps(synth[1]["input"][-1])


async def test_a_group_past_the_deadline_is_waited_for_and_survives_a_restart(standin: StandIn, tmp_path: Path) -> None:
    # gpt-4.1 answers within the first call's deadline, claude-sonnet-4 after it; both are still working
    # when the call starts waiting, so both report progress.
    standin.faults = Faults(model_latency={"gpt-4.1": 0.2, "claude-sonnet-4": 2.0})
    settings = settings_for(standin.base_url, tmp_path, deadline=1.0)
    heard: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        heard.append(message or "")

    async with bridge_client(settings) as client:
        result = await client.call_tool(
            "key4u_respond",
            {"prompt": "hello", "models": TWO, "synthesize": "gpt-4.1-mini"},
            progress_callback=on_progress,
        )
        out = result.structured_content or {}
        assert out["status"] == "in_progress" and "wait for every answer" in out["next"]
        assert [a["status"] for a in out["answers"]] == ["completed", "in_progress"]
        with anyio.fail_after(30):
            while out["status"] == "in_progress":
                out, _, _ = await respond(client, conversation_id=out["conversation_id"])
    assert out["status"] == "completed" and out["text"].startswith(f"{LABEL} As gpt-4.1-mini")
    for model in TWO:  # each model's progress, under its name
        assert any(m.startswith(f"{model}: ") for m in heard), heard
    # Another server process on the same database reports the same group.
    async with bridge_client(settings) as client:
        later, _, _ = await respond(client, conversation_id=out["conversation_id"])
    assert later["text"] == out["text"] and [a["text"] for a in later["answers"]] == [a["text"] for a in out["answers"]]
    assert len(sent_for(standin, "gpt-4.1-mini")) == 1


async def test_a_small_host_budget_is_shared_fairly_between_the_answers(standin: StandIn, tmp_path: Path) -> None:
    standin.faults = Faults(answer_text="word " * 4000)
    async with bridge_client(settings_for(standin.base_url, tmp_path, max_result_chars=12_000)) as client:
        result = await client.call_tool("key4u_respond", {"prompt": "hello", "models": [*TWO, "gpt-4.1-mini"]})
    out = result.structured_content or {}
    assert len(json.dumps(out)) + len(text_of(result)) <= 12_000 * 1.05
    lengths = [len(a["text"]) for a in out["answers"]]
    assert all(0 < n < 20_000 for n in lengths) and max(lengths) - min(lengths) < 200  # equal shares
    assert any("shortened to share this host's room fairly" in n for n in out["notes"])
    assert all(any("offset=" in n for n in a["notes"]) for a in out["answers"])  # each says how to read on


def test_fair_shares_give_short_answers_what_they_need_and_split_the_rest() -> None:
    assert fair_shares([100, 5_000, 9_000], 9_000) == [100, 4_450, 4_450]
    assert fair_shares([100, 200], 9_000) == [100, 200]
    assert sum(fair_shares([7_000, 7_000, 7_000], 10_000)) <= 10_000


async def test_the_groups_transcript_names_its_models_conversations(standin: StandIn, tmp_path: Path) -> None:
    async with bridge_client(settings_for(standin.base_url, tmp_path)) as client:
        out, _, _ = await respond(client, prompt="Calculate 2 + 3", models=TWO, synthesize="gpt-4.1")
        read = await client.read_resource(out["transcript"])
        listed = (await client.list_resources()).resources
    document = json.loads(getattr(read.contents[0], "text", ""))
    members = document["group"]["members"]
    assert [m["conversation_id"] for m in members] == [a["conversation_id"] for a in out["answers"]]
    assert any("<answer label=" in json.dumps(i) for i in document["items"])  # the synthesis request
    (group,) = [r for r in listed if str(r.uri) == out["transcript"]]
    assert group.title == "Calculate 2 + 3"  # the models' prompt, not the synthesis request
