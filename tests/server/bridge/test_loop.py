"""The loop with a scripted model and scripted toolsets: concurrency, the cap, timeouts, failures, and
what each turn sends the model."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import anyio
import pytest
from mcp.types import CallToolResult, TextContent, Tool

from server.bridge.conversation import Conversation, Options
from server.bridge.loop import Loop, LoopLimits, Offer
from server.toolsets.base import CombinedToolset, OfferedTool, PolicyToolset, PrefixedToolset
from server.toolsets.local import LocalToolset
from server.toolsets.policy import Policy
from server.upstream.model import FunctionCall, FunctionOutput, Message, ModelResponse
from server.upstream.translation import NameMap, to_function_tool
from tests.helpers import ScriptedModel

pytestmark = pytest.mark.anyio

NAMES = [f"probe_{i}" for i in range(16)]


class Scripted:
    """A tool owner whose ``call`` each test writes."""

    async def call(self, name: str, arguments: dict[str, Any], timeout: float) -> CallToolResult:
        raise NotImplementedError


def offer(names: list[str], owner: Scripted) -> Offer:
    tools = Offer(names=NameMap.build(names))
    for name in names:
        tool = OfferedTool(
            name=name, description="a probe", input_schema={"type": "object"}, owner=owner, owner_name=name
        )
        tools.add(to_function_tool(name, "a probe", {"type": "object"}, name), tool)
    return tools


class GatedRunner(Scripted):
    """Each call waits until ``expected`` calls are running at once: a sequential loop would hang."""

    def __init__(self, expected: int) -> None:
        self.expected, self.active, self.peak = expected, 0, 0
        self.all_in = anyio.Event()

    async def call(self, name: str, arguments: dict[str, Any], timeout: float) -> CallToolResult:
        self.active += 1
        self.peak = max(self.peak, self.active)
        if self.active >= self.expected:
            self.all_in.set()
        await self.all_in.wait()
        self.active -= 1
        return CallToolResult(content=[TextContent(type="text", text=f"{name} ok")])


def conversation(prompt: str = "go", **options: Any) -> Conversation:
    conv = Conversation(options=Options(model="gpt-4.1", **options))
    conv.items.append(Message(role="user", text=prompt))
    return conv


def all_of(names: list[str]) -> ScriptedModel:
    """A model that calls every one of ``names`` in its first turn, then answers."""
    return ScriptedModel([(n, {}) for n in names], "all done")


@pytest.mark.parametrize("count", [4, 16])
async def test_a_turns_calls_run_at_the_same_time(count: int) -> None:
    runner = GatedRunner(count)
    names = NAMES[:count]
    loop = Loop(all_of(names), offer(names, runner), LoopLimits(concurrency=count))
    with anyio.fail_after(10):
        conv = await loop.run(conversation())
    assert conv.status == "completed" and runner.peak == count
    assert sorted(c.name for c in conv.tool_calls) == sorted(names)


async def test_the_concurrency_cap_is_respected() -> None:
    peak = 0
    active = 0

    class Counting(Scripted):
        async def call(self, name: str, arguments: dict[str, Any], timeout: float) -> CallToolResult:
            nonlocal peak, active
            active += 1
            peak = max(peak, active)
            await anyio.sleep(0.01)
            active -= 1
            return CallToolResult(content=[TextContent(type="text", text="ok")])

    loop = Loop(all_of(NAMES[:8]), offer(NAMES[:8], Counting()), LoopLimits(concurrency=3))
    conv = await loop.run(conversation())
    assert conv.status == "completed" and peak == 3


async def test_a_hung_tool_times_out_and_a_raising_tool_is_reported() -> None:
    class Bad(Scripted):
        async def call(self, name: str, arguments: dict[str, Any], timeout: float) -> CallToolResult:
            if name == "probe_0":
                await anyio.sleep_forever()
            raise RuntimeError("disk on fire")

    loop = Loop(all_of(NAMES[:2]), offer(NAMES[:2], Bad()), LoopLimits(call_timeout=0.2))
    with anyio.fail_after(10):
        conv = await loop.run(conversation())
    outputs = {c.name: c.output for c in conv.tool_calls}
    assert "did not finish within 0.2 s" in outputs["probe_0"]
    assert "disk on fire" in outputs["probe_1"]
    assert conv.status == "completed" and not any(c.ok for c in conv.tool_calls)


class Echo(Scripted):
    async def call(self, name: str, arguments: dict[str, Any], timeout: float) -> CallToolResult:
        return CallToolResult(content=[TextContent(type="text", text=f"{name}({arguments})")])


async def test_each_turn_sends_the_history_with_every_call_answered() -> None:
    model = ScriptedModel([("probe_0", {"x": 1}), ("probe_1", {})], [("probe_0", {})], "the end")
    conv = await Loop(model, offer(NAMES[:2], Echo())).run(conversation("hello", instructions="be brief"))
    assert conv.status == "completed" and conv.text == "the end" and conv.turns == 3
    assert conv.api == "responses" and conv.usage.input_tokens == 30 and conv.usage.total_tokens == 45
    second = model.requests[1]
    assert second.instructions == "be brief" and [t.api_name for t in second.tools] == NAMES[:2]
    kinds = [type(i).__name__ for i in second.items]
    assert kinds == ["Message", "FunctionCall", "FunctionCall", "FunctionOutput", "FunctionOutput"]
    calls = [i for i in second.items if isinstance(i, FunctionCall)]
    outputs = [i for i in second.items if isinstance(i, FunctionOutput)]
    assert [o.call_id for o in outputs] == [c.call_id for c in calls]
    assert "probe_0({'x': 1})" in outputs[0].output
    assert second.new_from == 3  # the outputs are what the last response has not seen


async def test_an_unknown_function_and_bad_arguments_go_back_to_the_model_as_errors() -> None:
    model = ScriptedModel([("nope", {}), ("probe_0", {})], "ok")
    strict = Offer(names=NameMap.build(["probe_0"]))
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    strict.add(
        to_function_tool("probe_0", "p", schema, "probe_0"),
        OfferedTool(name="probe_0", description="p", input_schema=schema, owner=Echo(), owner_name="probe_0"),
    )
    conv = await Loop(model, strict).run(conversation())
    outputs = [i.output for i in model.requests[1].items if isinstance(i, FunctionOutput)]
    assert "there is no tool named 'nope'" in outputs[0]
    assert "invalid arguments for probe_0" in outputs[1] and "'n' is a required property" in outputs[1]
    assert conv.status == "completed" and not any(c.ok for c in conv.tool_calls)


class Cut(ScriptedModel):
    async def respond(self, request: Any, on_event: Any = None) -> ModelResponse:
        self.requests.append(request)
        call = FunctionCall(call_id="c1", name="probe_0", arguments='{"x": ')
        return ModelResponse(api="chat", status="incomplete", incomplete_reason="max_output_tokens", output=[call])


async def test_a_cut_turn_is_incomplete_and_its_calls_are_answered_not_run() -> None:
    conv = await Loop(Cut(), offer(NAMES[:1], Echo())).run(conversation())
    assert conv.status == "incomplete" and conv.api == "chat" and not conv.tool_calls
    assert "incomplete (max_output_tokens)" in conv.notes[0]
    assert isinstance(conv.items[-1], FunctionOutput) and "not run" in conv.items[-1].output


def test_the_bridge_imports_no_wire_module() -> None:
    """The loop and the bridge speak the neutral interface only: no adapter, wire model or HTTP client."""
    code = (
        "import sys, server.bridge.service, server.bridge.jobs; "
        "print(' '.join(m for m in sys.modules if m.startswith(('server.upstream.', 'httpx'))))"
    )
    loaded = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    wire = {"server.upstream.wire", "server.upstream.responses", "server.upstream.chat", "server.upstream.gateway"}
    assert not loaded & wire and "httpx" not in loaded
    assert "server.upstream.model" in loaded


class Silent(ScriptedModel):
    """A model that thinks for ``delay`` seconds before answering."""

    def __init__(self, delay: float) -> None:
        super().__init__("done")
        self.delay = delay

    async def respond(self, request: Any, on_event: Any = None) -> ModelResponse:
        await anyio.sleep(self.delay)
        return await super().respond(request, on_event)


async def test_a_silent_model_still_gets_progress_reported_at_the_heartbeat() -> None:
    said: list[tuple[float, str]] = []

    async def progress(message: str) -> None:
        said.append((anyio.current_time(), message))

    started = anyio.current_time()
    loop = Loop(Silent(2.0), offer([], Echo()), LoopLimits(heartbeat=0.4), progress=progress)
    conv = await loop.run(conversation())
    assert conv.status == "completed"
    beats = [t for t, m in said if "still waiting for gpt-4.1" in m]
    assert len(beats) >= 3
    gaps = [b - a for a, b in zip([started, *beats], beats, strict=False)]
    assert max(gaps) < 0.4 * 2  # never silent much longer than the heartbeat


def test_toolsets_reuse_their_listing_until_a_server_lists_again() -> None:
    """What the planner reads on every call is built once per listing, not once per call."""

    async def never(name: str, arguments: dict[str, Any]) -> Any:
        raise NotImplementedError

    listing = [Tool(name=f"t{i}", input_schema={"type": "object"}) for i in range(1000)]
    local = LocalToolset(listing, never)
    wrapped = PrefixedToolset(PolicyToolset(local, Policy(), default="run"), "fx__")
    combined = CombinedToolset([wrapped])
    first, second = wrapped.tools(), wrapped.tools()
    assert first is second and len(first) == 1000 and first[0].name == "fx__t0"
    assert combined.by_name() == combined.by_name() and combined.by_name()["fx__t999"] is first[-1]
    relisted = LocalToolset(listing[:10], never)
    wrapped.inner = PolicyToolset(relisted, Policy(), default="run")
    assert len(wrapped.tools()) == 10 and len(combined.by_name()) == 10  # a new listing is seen at once
