"""The loop with scripted toolsets: concurrency, the concurrency cap, timeouts and failures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from mcp.types import CallToolResult, TextContent

from server.bridge.conversation import Conversation, Options
from server.bridge.loop import Loop, LoopLimits, Offer
from server.standin import StandIn
from server.toolsets.base import OfferedTool
from server.upstream.responses import ResponsesClient
from server.upstream.translation import NameMap, to_function_tool
from tests.conftest import FAKE_KEY

pytestmark = pytest.mark.anyio

NAMES = [f"probe_{i}" for i in range(16)]
PROMPT = "run " + " ".join(NAMES)


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


@pytest.fixture
async def upstream(standin: StandIn) -> AsyncIterator[ResponsesClient]:
    async with httpx.AsyncClient() as http:
        yield ResponsesClient(http, base_url=standin.base_url, api_key=FAKE_KEY)


def conversation(prompt: str = PROMPT) -> Conversation:
    conv = Conversation(options=Options(model="gpt-4.1"))
    conv.items.append({"type": "message", "role": "user", "content": prompt})
    return conv


@pytest.mark.parametrize("count", [4, 16])
async def test_a_turns_calls_run_at_the_same_time(upstream: ResponsesClient, count: int) -> None:
    runner = GatedRunner(count)
    names = NAMES[:count]
    loop = Loop(upstream, offer(names, runner), LoopLimits(concurrency=count))
    with anyio.fail_after(10):
        conv = await loop.run(conversation("run " + " ".join(names)))
    assert conv.status == "completed" and runner.peak == count
    assert sorted(c.name for c in conv.tool_calls) == sorted(names)


async def test_the_concurrency_cap_is_respected(upstream: ResponsesClient) -> None:
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

    loop = Loop(upstream, offer(NAMES[:8], Counting()), LoopLimits(concurrency=3))
    conv = await loop.run(conversation("run " + " ".join(NAMES[:8])))
    assert conv.status == "completed" and peak == 3


async def test_a_hung_tool_times_out_and_a_raising_tool_is_reported(upstream: ResponsesClient) -> None:
    class Bad(Scripted):
        async def call(self, name: str, arguments: dict[str, Any], timeout: float) -> CallToolResult:
            if name == "probe_0":
                await anyio.sleep_forever()
            raise RuntimeError("disk on fire")

    loop = Loop(upstream, offer(NAMES[:2], Bad()), LoopLimits(call_timeout=0.2))
    with anyio.fail_after(10):
        conv = await loop.run(conversation("run probe_0 probe_1"))
    outputs = {c.name: c.output for c in conv.tool_calls}
    assert "did not finish within 0.2 s" in outputs["probe_0"]
    assert "disk on fire" in outputs["probe_1"]
    assert conv.status == "completed" and not any(c.ok for c in conv.tool_calls)
