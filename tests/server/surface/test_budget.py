"""Results that reach the calling model intact, in every host: through a real MCP client identifying as
each host, a huge answer and a long run fit that host's budget, answer first, the rest readable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.types import Implementation

from server.standin import LABEL, Faults, StandIn
from server.surface.app import build_server
from server.surface.budget import Host
from tests.helpers import settings_for, text_of

pytestmark = pytest.mark.anyio

HOSTS = {
    "claude-code": ("structured", 60_000),
    "codex-mcp-client": ("structured", 9_000),
    "gemini-cli-mcp-client": ("text", 36_000),
    "some-new-host": ("both", 20_000),
}


def seen_by(reads: str, result: Any) -> int:
    """What the host's model reads, in characters, as the host measures it."""
    structured = len(json.dumps(result.structured_content, ensure_ascii=False, separators=(",", ":")))
    text = len(text_of(result))
    return {"structured": structured, "text": text, "both": structured + text}[reads]


@pytest.mark.parametrize("client_name", HOSTS)
async def test_a_200000_character_answer_fits_each_host_answer_first(
    standin: StandIn, tmp_path: Path, client_name: str
) -> None:
    reads, budget = HOSTS[client_name]
    assert Host.of(client_name).budget == budget
    answer = "The answer begins here. " + "x" * 200_000
    standin.faults = Faults(answer_text=answer)
    server = build_server(settings_for(standin.base_url, tmp_path))
    info = Implementation(name=client_name, version="1")
    async with Client(server, mode="legacy", client_info=info) as client:  # pyright: ignore[reportArgumentType]
        result = await client.call_tool("key4u_respond", {"prompt": "hello", "tools": []})
        out: dict[str, Any] = result.structured_content or {}
        assert seen_by(reads, result) <= budget
        assert out["text"].startswith("The answer begins here.") and text_of(result).startswith("The answer")
        shown = len(out["text"])
        assert shown > budget // 4  # the room goes to the answer
        assert any("offset=" in n for n in out["notes"])
        if client_name == "claude-code":  # Claude Code reads it from the definition
            [tool] = [t for t in (await client.list_tools()).tools if t.name == "key4u_respond"]
            assert (tool.meta or {}).get("anthropic/maxResultSizeChars") == budget
        # The rest, through the offset the note names, and whole in the transcript resource.
        rest = await client.call_tool("key4u_respond", {"conversation_id": out["conversation_id"], "offset": shown})
        assert (rest.structured_content or {})["text"].startswith(answer[shown : shown + 100])
        transcript = await client.read_resource(out["transcript"])
        assert answer in json.loads(transcript.contents[0].text)["items"][-1]["text"]  # pyright: ignore[reportAttributeAccessIssue]
    assert not text_of(result).startswith(LABEL)


async def test_a_call_the_host_gives_up_on_is_listed_and_a_later_call_finishes_it(
    standin: StandIn, tmp_path: Path
) -> None:
    standin.faults = Faults(first_byte_delay=30)  # the model takes longer than the host waits
    server = build_server(settings_for(standin.base_url, tmp_path))
    async with Client(server, mode="legacy") as client:  # pyright: ignore[reportArgumentType]
        with anyio.move_on_after(3):  # the host times out and cancels
            await client.call_tool("key4u_respond", {"prompt": "Calculate 6 * 7", "tools": ["math_calculator"]})
        listed = (await client.list_resources()).resources
        mine = [r for r in listed if str(r.uri).startswith("key4u://conversations/")]
        assert len(mine) == 1 and mine[0].title == "Calculate 6 * 7"
        assert (mine[0].description or "").startswith(("incomplete", "in_progress"))  # being saved as cut
        conversation_id = str(mine[0].uri).rsplit("/", 1)[1]
        standin.faults = Faults()
        out: dict[str, Any] = {}
        for _ in range(3):  # the first may still find the cancelled run saving itself
            result = await client.call_tool("key4u_respond", {"conversation_id": conversation_id})
            out = result.structured_content or {}
            if out["status"] == "completed":
                break
        assert out["status"] == "completed" and "= 42" in out["text"], out


@pytest.mark.parametrize("client_name", HOSTS)
async def test_a_64_turn_run_with_10_calls_a_turn_fits_the_host(
    standin: StandIn, tmp_path: Path, client_name: str
) -> None:
    reads, budget = HOSTS[client_name]
    standin.faults = Faults(tool_call_loop=True, calls_per_turn=10)
    server = build_server(settings_for(standin.base_url, tmp_path, deadline=120))
    info = Implementation(name=client_name, version="1")
    async with Client(server, mode="legacy", client_info=info) as client:  # pyright: ignore[reportArgumentType]
        result = await client.call_tool(
            "key4u_respond", {"prompt": "Calculate 2 + 3", "tools": ["math_calculator"], "max_turns": 64}
        )
        out: dict[str, Any] = result.structured_content or {}
        assert out["status"] == "incomplete" and out["turns"] == 64
        assert seen_by(reads, result) <= budget
        if reads != "text":  # the text has no per-call trace, so a text-reading host needs nothing cut
            assert any("of 640 tool calls" in n for n in out["notes"]), out["notes"]
        assert out["tool_calls"] and out["tool_calls"][-1]["turn"] == 64  # the newest calls are the ones kept
        transcript = json.loads((await client.read_resource(out["transcript"])).contents[0].text)  # pyright: ignore[reportAttributeAccessIssue]
        assert len(transcript["tool_calls"]) == 640


async def test_a_silent_upstream_still_sends_progress_to_the_host(standin: StandIn, tmp_path: Path) -> None:
    standin.faults = Faults(first_byte_delay=3.5)  # the model "thinks" before its first byte
    server = build_server(settings_for(standin.base_url, tmp_path, heartbeat=1.0))
    heard: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if message and "still waiting" in message:
            heard.append(anyio.current_time())

    async with Client(server, mode="legacy") as client:  # pyright: ignore[reportArgumentType]
        started = anyio.current_time()
        result = await client.call_tool(
            "key4u_respond", {"prompt": "hello", "tools": []}, progress_callback=on_progress
        )
    assert (result.structured_content or {})["status"] == "completed"
    assert len(heard) >= 3 and heard[0] - started < 2.0
    assert max(b - a for a, b in zip(heard, heard[1:], strict=False)) < 2.0
