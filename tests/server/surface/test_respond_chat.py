"""key4u_respond against gateways that do not serve /v1/responses for the model: one-api (no route) and
new-api (500 convert_request_failed for non-OpenAI channels). With no setting changed, the bridge falls
back to Chat Completions once, remembers it, and everything works there: parallel calls, caller
functions, resuming after a restart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from server.cli.demo import KEY4U_PROMPT
from server.standin import LABEL, Faults, StandIn
from tests.conftest import FAKE_KEY
from tests.helpers import LOCAL_TOOLS, bridge_client, settings_for, text_of

pytestmark = pytest.mark.anyio

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "inputSchema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
GATEWAYS = {
    "one-api": ("gpt-4.1", Faults(responses_route="missing")),
    "new-api": ("claude-sonnet-4-5", Faults(chat_only_models=("claude",))),
}


async def respond(client: Client, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool("key4u_respond", arguments)
    assert result.structured_content is not None and not result.is_error, text_of(result)
    return result.structured_content


@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_the_key4u_example_completes_over_chat_and_the_next_call_goes_straight_there(
    standin: StandIn, tmp_path: Path, gateway: str
) -> None:
    model, faults = GATEWAYS[gateway]
    standin.faults = faults
    async with bridge_client(settings_for(standin.base_url, tmp_path, model=model)) as client:
        out = await respond(client, prompt=KEY4U_PROMPT)
        assert out["status"] == "completed" and out["api"] == "chat" and out["turns"] == 2
        assert {c["name"] for c in out["tool_calls"]} == LOCAL_TOOLS
        assert all(c["ok"] and c["turn"] == 1 for c in out["tool_calls"])
        assert out["text"].startswith(LABEL) and "580.2" in out["text"]
        assert any("used /v1/chat/completions" in n for n in out["notes"])
        assert standin.paths == ["/v1/responses", "/v1/chat/completions", "/v1/chat/completions"]
        again = await respond(client, prompt="what time is it?")
        assert again["api"] == "chat" and standin.paths.count("/v1/responses") == 1
    # The chat wire: four calls in one assistant message, then four tool messages paired by id.
    second = standin.requests[2]
    assistant = next(m for m in second["messages"] if m["role"] == "assistant")
    tool_ids = [m["tool_call_id"] for m in second["messages"] if m["role"] == "tool"]
    assert sorted(c["id"] for c in assistant["tool_calls"]) == sorted(tool_ids) and len(tool_ids) == 4
    assert second["stream"] is True and second["stream_options"] == {"include_usage": True}
    # A restarted server reads what was learned: no Responses attempt.
    async with bridge_client(settings_for(standin.base_url, tmp_path, model=model)) as client:
        assert (await respond(client, prompt="hello"))["api"] == "chat"
    assert standin.paths.count("/v1/responses") == 1
    assert json.loads((tmp_path / "endpoints.json").read_text()) == {f"{standin.base_url} {model}": "chat"}


async def test_caller_functions_resume_over_chat_also_after_a_restart(standin: StandIn, tmp_path: Path) -> None:
    standin.faults = Faults(chat_only_models=("claude",))
    settings = settings_for(standin.base_url, tmp_path, model="claude-sonnet-4-5")
    async with bridge_client(settings) as client:
        first = await respond(client, prompt='What is the weather in "Paris"?', tools=[], functions=[WEATHER])
    assert first["status"] == "requires_action" and first["api"] == "chat"
    [pending] = first["pending_calls"]
    assert pending["name"] == "get_weather" and pending["arguments"] == {"city": "Paris"}
    async with bridge_client(settings) as client:  # a new server process, the same database
        done = await respond(
            client,
            conversation_id=first["conversation_id"],
            function_outputs=[{"call_id": pending["call_id"], "output": {"temp_c": 21}}],
        )
    assert done["status"] == "completed" and done["api"] == "chat" and "21" in done["text"]
    last = standin.requests[-1]
    assert [m["role"] for m in last["messages"]] == ["user", "assistant", "tool"]
    assert last["messages"][2] == {"role": "tool", "tool_call_id": pending["call_id"], "content": '{"temp_c": 21}'}
    assert standin.paths.count("/v1/responses") == 1


async def test_a_conversation_keeps_its_api_and_the_style_can_be_forced(standin: StandIn, tmp_path: Path) -> None:
    async with bridge_client(settings_for(standin.base_url, tmp_path, api_style="chat")) as client:
        forced = await respond(client, prompt="hi")
    assert forced["api"] == "chat" and "/v1/responses" not in standin.paths
    async with bridge_client(settings_for(standin.base_url, tmp_path)) as client:
        started = await respond(client, prompt="hi", api="chat")
        assert started["api"] == "chat"
        result = await client.call_tool(
            "key4u_respond", {"conversation_id": started["conversation_id"], "prompt": "more", "api": "responses"}
        )
        assert result.is_error and "uses the chat API" in text_of(result)
        continued = await respond(client, conversation_id=started["conversation_id"], prompt="more")
        assert continued["api"] == "chat"


async def test_a_gateway_that_serves_neither_route_gets_one_clear_error(standin: StandIn, tmp_path: Path) -> None:
    standin.faults = Faults(responses_route="missing", chat_route="missing")
    async with bridge_client(settings_for(standin.base_url, tmp_path)) as client:
        result = await client.call_tool("key4u_respond", {"prompt": "hi"})
        text = text_of(result)
        assert "/responses" in text and "/chat/completions" in text and "KEY4U_BASE_URL" in text
        assert FAKE_KEY not in text
        standin.faults = Faults()
        assert (await respond(client, prompt="hi"))["status"] == "completed"  # the next call works
