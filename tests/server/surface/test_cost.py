"""What a ``key4u_respond`` call costs, through a real MCP client against the stand-in: each turn priced
from the gateway's published list (checked against a hand computation), or from ``KEY4U_PRICES``; null
with a note when the price is unknown, never a guess and never a failed or delayed call; and the
totals per model and per day that ``key4u_usage`` reads from the store's ledger."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, MCPError

from server.bridge.conversation import Conversation, Options, TurnUsage
from server.cli.demo import KEY4U_PROMPT
from server.standin import Faults, StandIn
from server.store.memory import MemoryStore
from server.store.sqlite import SQLiteStore
from tests.conftest import FAKE_KEY
from tests.helpers import bridge_client, settings_for, text_of

pytestmark = pytest.mark.anyio


@pytest.fixture
def upstream() -> Any:
    with StandIn(api_key=FAKE_KEY) as served:
        yield served


async def respond(client: Client, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool("key4u_respond", arguments)
    assert not result.is_error, text_of(result)
    data = result.structured_content or {}
    assert data["status"] == "completed", data
    return data


async def load_prices(client: Client) -> None:
    """key4u_models waits (a few seconds at most) for the gateway's prices: afterwards every turn is priced."""
    assert not (await client.call_tool("key4u_models", {})).is_error


def new_api_usd(turn: dict[str, Any], model_ratio: float, completion_ratio: float, cache_ratio: float) -> float:
    """new-api's bill for one request, by hand: quota = round((uncached + cached x cache_ratio + output x
    completion_ratio) x model_ratio x group_ratio (1 for default)), and 500,000 quota = 1 USD."""
    cached = turn["cached_tokens"]
    prompt = turn["input_tokens"] - cached + cached * cache_ratio
    quota = int(prompt * model_ratio + turn["output_tokens"] * completion_ratio * model_ratio + 0.5)
    return quota / 500_000


async def test_the_key4u_example_costs_what_the_gateways_prices_say(upstream: StandIn, tmp_path: Path) -> None:
    async with bridge_client(settings_for(upstream.base_url, tmp_path)) as client:
        await load_prices(client)
        data = await respond(client, prompt=KEY4U_PROMPT, model="gpt-4.1")
        follow = await respond(client, prompt="And the time again?", conversation_id=data["conversation_id"])
    usage = data["usage"]
    turns = usage["turns"]
    assert [t["turn"] for t in turns] == [1, 2] and all(t["model"] == "gpt-4.1" for t in turns)
    assert sum(t["input_tokens"] for t in turns) == usage["input_tokens"] > 0
    for turn in turns:  # gpt-4.1 at the stand-in: model_ratio 1 ($2/M in), completion_ratio 4, cache_ratio 0.25
        assert turn["cost_usd"] == pytest.approx(new_api_usd(turn, 1.0, 4.0, 0.25), abs=1e-12)
        assert turn["cost_note"] is None
    assert usage["cost_usd"] == pytest.approx(sum(t["cost_usd"] for t in turns), abs=1e-12)
    # By the published dollar prices, too: $2 per million in, $8 per million out.
    by_dollars = sum(t["input_tokens"] * 2e-6 + t["output_tokens"] * 8e-6 for t in turns)
    assert usage["cost_usd"] == pytest.approx(by_dollars, rel=1e-3)
    # A continuation reports its own run's turns, and the conversation's running total.
    again = follow["usage"]
    assert [t["turn"] for t in again["turns"]] == list(range(3, follow["turns"] + 1))
    added = sum(t["cost_usd"] for t in again["turns"])
    assert added > 0 and again["cost_usd"] == pytest.approx(usage["cost_usd"] + added, abs=1e-12)


async def test_the_text_a_host_reads_ends_with_the_cost(upstream: StandIn, tmp_path: Path) -> None:
    async with bridge_client(settings_for(upstream.base_url, tmp_path)) as client:
        await load_prices(client)
        result = await client.call_tool("key4u_respond", {"prompt": "Hello"})
    cost = (result.structured_content or {})["usage"]["cost_usd"]
    assert cost is not None and f"· ${cost:.4f} · conv_" in text_of(result)


@pytest.mark.parametrize(
    ("faults", "model", "note"),
    [
        (Faults(), "gpt-5-mini", "the gateway's price list has no model 'gpt-5-mini'"),  # listed, not priced
        (
            Faults(pricing_route="missing"),
            "gpt-4.1",
            "the gateway's prices are unavailable (GET /api/pricing: HTTP 404",
        ),
    ],
)
async def test_an_unknown_price_is_null_with_a_note_and_the_call_still_answers(
    upstream: StandIn, tmp_path: Path, faults: Faults, model: str, note: str
) -> None:
    upstream.faults = faults
    async with bridge_client(settings_for(upstream.base_url, tmp_path)) as client:
        await load_prices(client)
        data = await respond(client, prompt="Hello", model=model)
        usage_text = text_of(await client.call_tool("key4u_usage", {}))
    usage = data["usage"]
    assert usage["input_tokens"] > 0 and usage["cost_usd"] is None
    assert usage["turns"][0]["cost_usd"] is None and usage["turns"][0]["cost_note"].startswith(note)
    assert usage["cost_note"] == "turn 1: " + usage["turns"][0]["cost_note"]
    assert re.search(rf"{re.escape(model)} · 1 turn · in [\d,]+ / out [\d,]+ tokens · cost unknown", usage_text)


async def test_a_price_file_prices_what_the_gateway_does_not(upstream: StandIn, tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"gpt-5-mini": {"input": 0.25, "output": 2.0}}))
    upstream.faults = Faults(pricing_route="missing")  # the file alone, no published list
    async with bridge_client(settings_for(upstream.base_url, tmp_path, prices=prices)) as client:
        data = await respond(client, prompt=KEY4U_PROMPT, model="gpt-5-mini")
    turns = data["usage"]["turns"]
    for turn in turns:
        assert turn["cost_usd"] == pytest.approx(turn["input_tokens"] * 0.25e-6 + turn["output_tokens"] * 2e-6)
    assert data["usage"]["cost_usd"] == pytest.approx(sum(t["cost_usd"] for t in turns))


async def test_key4u_usage_totals_per_model_and_day_and_survives_a_restart(upstream: StandIn, tmp_path: Path) -> None:
    settings = settings_for(upstream.base_url, tmp_path)
    async with bridge_client(settings) as client:
        await load_prices(client)
        first = await respond(client, prompt=KEY4U_PROMPT, model="gpt-4.1")
        second = await respond(client, prompt="Hello", model="deepseek-chat")
        third = await respond(client, prompt="Hello again", model="gpt-4.1")
    async with bridge_client(settings) as client:  # a new server process on the same database
        tool = next(t for t in (await client.list_tools()).tools if t.name == "key4u_usage")
        text = text_of(await client.call_tool("key4u_usage", {"days": 7}))
        only = text_of(await client.call_tool("key4u_usage", {"model": "DEEPSEEK"}))
    assert tool.annotations is not None and tool.annotations.read_only_hint is True
    total = sum(d["usage"]["cost_usd"] for d in (first, second, third))
    gpt = first["usage"]["cost_usd"] + third["usage"]["cost_usd"]
    today = time.strftime("%Y-%m-%d", time.gmtime())
    lines = text.splitlines()
    assert lines[0].startswith("Total, last 7 days (UTC) · 4 turns · in ")
    assert lines[0].endswith(f" tokens · ${total:,.4f}")
    assert lines[1] == "By model:" and lines[-2] == "By day:"
    assert lines[2].startswith("gpt-4.1 · 3 turns · ") and lines[2].endswith(f"${gpt:,.4f}")
    assert lines[3].startswith("deepseek-chat · 1 turn · ")
    assert lines[-1].startswith(f"{today} · 4 turns · ")
    assert "gpt-4.1" not in only and "deepseek-chat · 1 turn" in only and "models matching 'deepseek'" in only


async def test_no_usage_yet_says_so(upstream: StandIn, tmp_path: Path) -> None:
    async with bridge_client(settings_for(upstream.base_url, tmp_path)) as client:
        text = text_of(await client.call_tool("key4u_usage", {"days": 1}))
    assert text == "No key4u_respond turns in the last 1 day (UTC) in this server's store."


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
async def test_the_ledger_counts_each_turn_once_and_outlives_pruned_conversations(tmp_path: Path, kind: str) -> None:
    store = (
        SQLiteStore(tmp_path / "c.db", max_conversations=1) if kind == "sqlite" else MemoryStore(max_conversations=1)
    )
    now = time.time()
    conv = Conversation(options=Options(model="m"))
    conv.run_turns = [
        TurnUsage(turn=1, model="m", at=now, input_tokens=10, output_tokens=5, cost_usd=0.5),
        TurnUsage(turn=2, model="m", at=now, input_tokens=1, output_tokens=1),
    ]
    await store.put(conv)
    await store.put(conv)  # saved again, the same turns: counted once
    for _ in range(3):  # others push it out of a store that keeps one conversation
        await store.put(Conversation(options=Options(model="other")))
    if isinstance(store, SQLiteStore):
        await store.prune()
    assert await store.get(conv.id) is None
    (row,) = await store.usage(now - 60)
    assert (row.model, row.turns, row.input_tokens, row.output_tokens) == ("m", 2, 11, 6)
    assert row.cost_usd == pytest.approx(0.5) and row.unpriced_turns == 1
    assert await store.usage(now + 60) == []
    await store.aclose()


async def test_an_unusable_database_gives_the_reason_to_usage_and_transcript_reads(tmp_path: Path) -> None:
    db = tmp_path / "conversations.db"
    db.mkdir()  # not a file SQLite can open
    async with bridge_client(settings_for("http://127.0.0.1:9/v1", tmp_path, db_path=db)) as client:
        usage = await client.call_tool("key4u_usage", {})
        assert usage.is_error and "the usage ledger could not be read" in text_of(usage)
        assert str(db) in text_of(usage) and "KEY4U_DB_PATH" in text_of(usage)
        with pytest.raises(MCPError, match="could not be read") as raised:
            await client.read_resource("key4u://conversations/conv_x")
        assert str(db) in str(raised.value)
        local = await client.call_tool("math_calculator", {"operation": "add", "a": 2, "b": 3})
        assert not local.is_error  # and the server serves on
