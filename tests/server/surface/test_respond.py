"""key4u_respond end to end: a real MCP client, the bridge, and the stand-in over real HTTP."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from server.bridge.conversation import Conversation
from server.cli.demo import KEY4U_PROMPT
from server.standin import LABEL, Faults, StandIn
from server.store.base import Stored
from server.store.sqlite import SQLiteStore
from tests.conftest import FAKE_KEY
from tests.helpers import LOCAL_TOOLS, bridge_client, settings_for, text_of

pytestmark = pytest.mark.anyio

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "inputSchema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "units": {"type": "string"}},
        "required": ["city"],
    },
}


async def respond(client: Client, **arguments: Any) -> tuple[dict[str, Any], str, bool]:
    result = await client.call_tool("key4u_respond", arguments)
    assert result.structured_content is not None, text_of(result)
    return result.structured_content, text_of(result), bool(result.is_error)


async def test_key4u_example_runs_four_calls_in_parallel_and_answers(standin: StandIn, tmp_path: Path) -> None:
    async with bridge_client(settings_for(standin.base_url, tmp_path)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert "key4u_respond" in tools and tools["key4u_respond"].output_schema is None  # see respond_tool
        out, text, is_error = await respond(client, prompt=KEY4U_PROMPT, metadata={"model_id": "32"})
    assert not is_error and out["status"] == "completed"
    assert out["turns"] == 2
    assert {c["name"] for c in out["tool_calls"]} == LOCAL_TOOLS
    assert all(c["ok"] and c["turn"] == 1 for c in out["tool_calls"])
    by_name = {c["name"]: c for c in out["tool_calls"]}
    assert by_name["math_calculator"]["arguments"] == {"operation": "add", "a": 123.5, "b": 456.7}
    assert by_name["random_generator"]["arguments"] == {"min": 1, "max": 100, "count": 3}
    assert text.startswith(LABEL) and "580.2" in text  # the answer first, built from the tool outputs
    assert out["usage"]["input_tokens"] > 0 and out["usage"]["output_tokens"] > 0
    # The wire: turn 1 offered the four tools (strict), turn 2 replayed the four calls with four outputs.
    first, second = standin.requests
    assert {t["name"] for t in first["tools"]} == LOCAL_TOOLS and all(t["strict"] for t in first["tools"])
    assert first["store"] is False and first["parallel_tool_calls"] is True
    assert first["metadata"] == {"model_id": "32"}
    assert "key4u_respond" not in {t["name"] for t in first["tools"]}
    calls = [i for i in second["input"] if i.get("type") == "function_call"]
    outputs = [i for i in second["input"] if i.get("type") == "function_call_output"]
    assert len(calls) == len(outputs) == 4
    assert {c["call_id"] for c in calls} == {o["call_id"] for o in outputs}
    assert any("580.2" in o["output"] for o in outputs)


async def test_the_gateways_model_name_is_reported(standin: StandIn, tmp_path: Path) -> None:
    standin.faults = Faults(model_alias="gpt-4.1-2025-04-14")
    async with bridge_client(settings_for(standin.base_url, tmp_path)) as client:
        out, _, _ = await respond(client, prompt="hello")
    assert out["model"] == "gpt-4.1-2025-04-14"


async def test_caller_functions_come_back_as_pending_calls_and_resume(standin: StandIn, tmp_path: Path) -> None:
    async with bridge_client(settings_for(standin.base_url, tmp_path)) as client:
        out, text, _ = await respond(client, prompt='What is the weather in "Paris"?', functions=[WEATHER], tools=[])
        assert out["status"] == "requires_action"
        (pending,) = out["pending_calls"]
        assert pending["name"] == "get_weather" and pending["arguments"] == {"city": "Paris"}
        assert pending["call_id"] in text
        resumed, text, _ = await respond(
            client,
            conversation_id=out["conversation_id"],
            function_outputs=[{"call_id": pending["call_id"], "output": {"temp_c": 18, "sky": "sunny"}}],
        )
    assert resumed["status"] == "completed"
    assert "get_weather" in text and "sunny" in text
    assert [c["ran_by"] for c in resumed["tool_calls"]] == ["caller"]
    replay = standin.requests[-1]["input"]
    assert {
        "type": "function_call_output",
        "call_id": pending["call_id"],
        "output": '{"temp_c": 18, "sky": "sunny"}',
    } in replay


async def test_resume_checks_function_outputs(standin: StandIn, tmp_path: Path) -> None:
    async with bridge_client(settings_for(standin.base_url, tmp_path)) as client:
        out, _, _ = await respond(client, prompt='Weather in "Oslo"', functions=[WEATHER], tools=[])
        conv = out["conversation_id"]
        missing = await client.call_tool(
            "key4u_respond", {"conversation_id": conv, "function_outputs": [], "prompt": "go on"}
        )
        assert missing.is_error and "missing call_id" in text_of(missing)
        wrong = await client.call_tool(
            "key4u_respond", {"conversation_id": conv, "function_outputs": [{"call_id": "call_nope", "output": "x"}]}
        )
        assert wrong.is_error and "call_nope" in text_of(wrong)
        unknown = await client.call_tool("key4u_respond", {"conversation_id": "conv_missing", "prompt": "hi"})
        assert unknown.is_error and "unknown conversation_id" in text_of(unknown)


async def test_a_conversation_continues_after_a_server_restart(standin: StandIn, tmp_path: Path) -> None:
    settings = settings_for(standin.base_url, tmp_path)
    async with bridge_client(settings) as client:
        first, _, _ = await respond(client, prompt="Calculate 2 + 3 please", tools=["math_calculator"])
    async with bridge_client(settings) as client:  # a new server process state, same database
        second, text, _ = await respond(
            client, conversation_id=first["conversation_id"], prompt="Calculate 7 * 6 please"
        )
        resource = await client.read_resource(first["transcript"])
    assert second["status"] == "completed" and second["conversation_id"] == first["conversation_id"]
    replay = standin.requests[-1]["input"]
    assert replay[0] == {"type": "message", "role": "user", "content": "Calculate 2 + 3 please"}
    prompts = [i["content"] for i in replay if i.get("role") == "user"]
    assert prompts == ["Calculate 2 + 3 please", "Calculate 7 * 6 please"]
    transcript = json.loads(resource.contents[0].text)  # type: ignore[union-attr]
    assert transcript["conversation_id"] == first["conversation_id"] and len(transcript["items"]) >= 5
    # Each result reports the calls of its own run; the transcript keeps them all.
    assert first["tool_calls"] and second["tool_calls"]
    assert all(c["turn"] > first["turns"] for c in second["tool_calls"])
    assert transcript["tool_calls"] == [*first["tool_calls"], *second["tool_calls"]]


async def test_the_deadline_returns_in_progress_and_a_later_call_gets_the_result(
    standin: StandIn, tmp_path: Path
) -> None:
    standin.faults = Faults(latency=1.5)
    async with bridge_client(settings_for(standin.base_url, tmp_path, deadline=0.3)) as client:
        out, text, is_error = await respond(client, prompt="hello")
        assert out["status"] == "in_progress" and not is_error
        assert out["conversation_id"] in text
        with anyio.fail_after(20):
            while out["status"] == "in_progress":
                out, _, _ = await respond(client, conversation_id=out["conversation_id"])
        busy = standin.faults.latency
    assert out["status"] == "completed" and busy == 1.5


async def test_a_new_conversation_is_in_the_store_claimed_once_its_id_is_seen(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the store has taken a write, a run that ends within the call is written once, at its end; one
    still running when the caller gets its id is in the store already, claimed by this process, so that
    no other process takes it."""
    settings = settings_for(standin.base_url, tmp_path, deadline=0.3)
    other = SQLiteStore(settings.database)  # what another server process on this machine reads
    creates: list[str] = []
    create = SQLiteStore.create

    async def counted(self: SQLiteStore, conversation: Conversation, owner: str, lease: float) -> None:
        creates.append(conversation.id)
        await create(self, conversation, owner, lease)

    monkeypatch.setattr(SQLiteStore, "create", counted)
    async with bridge_client(settings) as client:
        first, _, _ = await respond(client, prompt="hello")
        quick, _, _ = await respond(client, prompt="hello")
        assert creates == [first["conversation_id"]]  # the first proved the store; the next was written once
        standin.faults = Faults(latency=1.5)
        slow, _, _ = await respond(client, prompt="hello again")
        assert slow["status"] == "in_progress"
        running = await other.get(slow["conversation_id"])
        assert running is not None and running.owner is not None
        assert running.conversation.status == "in_progress"
        assert await other.claim(slow["conversation_id"], "another process", 30) is None
        with anyio.fail_after(20):
            while slow["status"] == "in_progress":
                slow, _, _ = await respond(client, conversation_id=slow["conversation_id"])
    done = await other.get(quick["conversation_id"])
    assert done is not None and done.owner is None and done.conversation.status == "completed"
    finished = await other.get(slow["conversation_id"])
    assert finished is not None and finished.owner is None and finished.conversation.status == "completed"
    await other.aclose()


async def test_a_long_run_is_written_claimed_at_its_first_renewal(standin: StandIn, tmp_path: Path) -> None:
    settings = settings_for(standin.base_url, tmp_path, claim_lease=0.6)
    other = SQLiteStore(settings.database)
    seen: list[str] = []
    result: dict[str, Any] = {}
    held: Stored | None = None
    async with bridge_client(settings) as client, anyio.create_task_group() as tg:
        first, _, _ = await respond(client, prompt="a first call: the store works")
        standin.faults = Faults(latency=1.5)

        async def call() -> None:
            result.update((await respond(client, prompt="hello"))[0])

        tg.start_soon(call)
        with anyio.fail_after(10):
            while not seen:  # no id is out yet, but the renewal at lease/3 writes the conversation
                seen = [i.id for i in await other.list() if i.id != first["conversation_id"]]
                await anyio.sleep(0.05)
        held = await other.get(seen[0])
    assert held is not None and held.owner is not None and held.conversation.status == "in_progress"
    assert result["status"] == "completed" and result["conversation_id"] == seen[0]
    await other.aclose()


async def test_client_cancellation_stops_the_upstream_request(standin: StandIn, tmp_path: Path) -> None:
    standin.faults = Faults(latency=30)
    async with bridge_client(settings_for(standin.base_url, tmp_path)) as client:
        with anyio.move_on_after(0.5):
            await client.call_tool("key4u_respond", {"prompt": "hello"})
        standin.faults = Faults()
        with anyio.fail_after(10):
            out, _, _ = await respond(client, prompt="still there?")  # the server answers the next call
        assert out["status"] == "completed"
        bridge_jobs = len(standin.requests)
    assert bridge_jobs == 2


@pytest.mark.parametrize(
    ("faults", "fragment"),
    [
        (Faults(status=401), "HTTP 401"),
        (Faults(status=403), "HTTP 403"),
        (Faults(status=404), "/v1/responses"),
        (Faults(status=400, error_message="Invalid value for 'model'"), "Invalid value for 'model'"),
        (Faults(status=429, retry_after="3600"), "rate limited"),
        (Faults(status=429, error_code="insufficient_quota", error_message="You exceeded your current quota"), "quota"),
        (Faults(status=500), "HTTP 500"),
        (Faults(cut_stream_after=3), "without a terminal event"),
        (Faults(reset_stream_after=3), "closed mid-reply"),
        (Faults(error_event_after=2), "stream error"),
        (Faults(malformed_json=True), "not JSON"),
        (Faults(ok_with_error=True), "bad_response_body"),
        (Faults(response_status="failed"), "response failed"),
    ],
)
async def test_every_upstream_error_is_a_clear_tool_error_and_the_next_call_works(
    standin: StandIn, tmp_path: Path, faults: Faults, fragment: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with bridge_client(settings_for(standin.base_url, tmp_path, retry_max_wait=0.05, max_retries=1)) as client:
        standin.faults = faults
        out, text, is_error = await respond(client, prompt="hello")
        assert is_error and out["status"] == "failed"
        assert fragment in text, text
        standin.faults = Faults()
        after, _, after_error = await respond(client, prompt="hello again")
        assert not after_error and after["status"] == "completed"
    assert FAKE_KEY not in text + json.dumps(out) + caplog.text


async def test_incomplete_response_never_runs_truncated_calls(standin: StandIn, tmp_path: Path) -> None:
    standin.faults = Faults(response_status="incomplete")
    async with bridge_client(settings_for(standin.base_url, tmp_path)) as client:
        out, text, _ = await respond(client, prompt="Calculate 2 + 3", tools=["math_calculator"])
        assert out["status"] == "incomplete" and out["tool_calls"] == []
        assert "not run" in text
        standin.faults = Faults()
        again, _, _ = await respond(client, conversation_id=out["conversation_id"], prompt="try again")
    assert again["status"] == "completed"  # the replay stayed valid: every call has an output


async def test_model_mistakes_go_back_to_the_model(standin: StandIn, tmp_path: Path) -> None:
    standin.faults = Faults(bad_arguments="{not json", call_unknown_tool="no_such_tool")
    async with bridge_client(settings_for(standin.base_url, tmp_path, max_retries=0)) as client:
        out, _, _ = await respond(client, prompt="Calculate 2 + 3", tools=["math_calculator"], max_turns=1)
    assert out["status"] == "incomplete"  # the mistakes were answered; the loop bound stopped it
    errors = {c["name"]: c["output"] for c in out["tool_calls"]}
    assert "not valid JSON" in errors["math_calculator"] and "no tool named 'no_such_tool'" in errors["no_such_tool"]
    outputs = [i["output"] for i in standin.requests[0]["input"] if i.get("type") == "function_call_output"]
    assert outputs == []  # nothing sent after the bound


async def test_a_runaway_loop_stops_at_max_turns(standin: StandIn, tmp_path: Path) -> None:
    standin.faults = Faults(tool_call_loop=True)
    async with bridge_client(settings_for(standin.base_url, tmp_path)) as client:
        out, text, _ = await respond(client, prompt="Calculate 2 + 3", tools=["math_calculator"], max_turns=3)
    assert out["status"] == "incomplete" and out["turns"] == 3 and "max_turns=3" in text
    assert len(out["tool_calls"]) == 3


async def test_arguments_are_checked_before_anything_is_sent(standin: StandIn, tmp_path: Path) -> None:
    async with bridge_client(settings_for(standin.base_url, tmp_path)) as client:
        cases = [
            ({}, "prompt is required"),
            ({"prompt": "x", "tools": ["rm_rf"]}, "unknown tool(s) rm_rf"),
            ({"prompt": "x", "tools": ["key4u_respond"]}, "unknown tool(s) key4u_respond"),
            ({"prompt": "x", "functions": [{"name": "math_calculator"}]}, "clash"),
            ({"prompt": "x", "functions": [{"name": "f", "inputSchema": {"type": "string"}}]}, "object schema"),
            ({"prompt": "x", "tool_choice": "nope"}, "tool_choice"),
            ({"prompt": "x", "reasoning_effort": "extreme"}, "reasoning_effort"),
            ({"prompt": "x", "max_turns": 0}, "max_turns"),
        ]
        for arguments, fragment in cases:
            result = await client.call_tool("key4u_respond", arguments)
            assert result.is_error and fragment in text_of(result), (arguments, text_of(result))
    assert standin.requests == []


async def test_without_a_key_the_bridge_says_what_to_set(tmp_path: Path) -> None:
    async with bridge_client(settings_for("http://127.0.0.1:9/v1", tmp_path, api_key=None)) as client:
        result = await client.call_tool("key4u_respond", {"prompt": "hi"})
        calc = await client.call_tool("math_calculator", {"operation": "add", "a": 1, "b": 2})
    assert result.is_error and "KEY4U_API_KEY" in text_of(result)
    assert not calc.is_error


async def test_request_options_reach_the_wire(standin: StandIn, tmp_path: Path) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    async with bridge_client(settings_for(standin.base_url, tmp_path)) as client:
        out, _, _ = await respond(
            client,
            prompt="hi",
            instructions="Be brief.",
            model="gpt-5",
            tools=[],
            reasoning_effort="low",
            response_format=schema,
            max_output_tokens=100,
            web_search=True,
            parallel_tool_calls=False,
        )
    body = standin.requests[0]
    assert body["instructions"] == "Be brief." and body["model"] == "gpt-5"
    assert body["reasoning"] == {"effort": "low"} and body["include"] == ["reasoning.encrypted_content"]
    assert body["text"]["format"]["type"] == "json_schema" and body["text"]["format"]["strict"] is True
    assert body["max_output_tokens"] == 100 and body["parallel_tool_calls"] is False
    assert {"type": "web_search"} in body["tools"]
    assert isinstance(out["parsed"], dict) and "answer" in out["parsed"]


async def test_long_answers_are_capped_with_a_pointer_to_the_transcript(standin: StandIn, tmp_path: Path) -> None:
    async with bridge_client(settings_for(standin.base_url, tmp_path, max_result_chars=2000)) as client:
        result = await client.call_tool("key4u_respond", {"prompt": KEY4U_PROMPT})
    text, out = text_of(result), result.structured_content or {}
    assert "shortened to fit this host" in text and out["transcript"] in text
    assert len(text) + len(json.dumps(out, separators=(",", ":"))) <= 2000  # an unknown host: both count
    links = [b for b in result.content if b.type == "resource_link"]
    assert [str(link.uri) for link in links] == [out["transcript"]]  # pyright: ignore[reportAttributeAccessIssue]


async def test_previous_response_id_mode_sends_only_new_items(standin: StandIn, tmp_path: Path) -> None:
    settings = settings_for(standin.base_url, tmp_path, conversation_mode="previous_response_id")
    async with bridge_client(settings) as client:
        out, text, _ = await respond(client, prompt="Calculate 2 + 3", tools=["math_calculator"])
        again, _, _ = await respond(client, conversation_id=out["conversation_id"], prompt="and now 4 * 5")
    assert out["status"] == "completed" and "2 + 3 = 5" in text
    assert again["status"] == "completed"
    first, second, third = standin.requests[:3]
    assert first["store"] is True and "previous_response_id" not in first
    # Turn 2 continues turn 1 at the gateway: only the call's output is sent, not the history.
    assert second["previous_response_id"] and [i["type"] for i in second["input"]] == ["function_call_output"]
    assert third["input"] == [{"type": "message", "role": "user", "content": "and now 4 * 5"}]


async def test_the_retry_budget_setting_bounds_retries(standin: StandIn, tmp_path: Path) -> None:
    standin.faults = Faults(status=503, retry_after="2")
    settings = settings_for(standin.base_url, tmp_path, max_retries=5, retry_budget=1.0)
    async with bridge_client(settings) as client:
        out, text, is_error = await respond(client, prompt="hello")
    assert is_error and "HTTP 503" in text
    assert len(standin.requests) == 1  # a 2 s wait would pass the 1 s budget: reported at once


async def test_lone_surrogates_the_host_sends_are_made_writable(standin: StandIn, tmp_path: Path) -> None:
    async with bridge_client(settings_for(standin.base_url, tmp_path)) as client:
        out, _, is_error = await respond(
            client,
            prompt='What is the weather in "Par\ud800is"?',
            instructions="be \udfff brief",
            functions=[{**WEATHER, "description": "Current \udc80 weather for a city"}],  # inside an SDK model
            tools=[],
        )
        assert not is_error and out["status"] == "requires_action"
        (pending,) = out["pending_calls"]
        done, text, is_error = await respond(
            client,
            conversation_id=out["conversation_id"],
            function_outputs=[{"call_id": pending["call_id"], "output": {"sky": "sun\ud800ny"}}],
        )
    assert not is_error and done["status"] == "completed" and "sun\ufffdny" in text
    first = standin.requests[0]
    assert first["input"][0]["content"] == 'What is the weather in "Par\ufffdis"?' and "\ufffd" in first["instructions"]
    assert first["tools"][0]["description"] == "Current \ufffd weather for a city"
