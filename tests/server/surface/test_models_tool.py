"""``key4u_models`` through a real MCP client against the stand-in: the key's models with their
prices, APIs, reasoning look and the balance; the filter; gateways without prices or billing; the
host budget; failures; and a definition that stays small."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.types import Implementation

from server.config import Settings
from server.standin import Faults, StandIn
from server.surface.app import build_server
from server.surface.models_tool import Listed, Row, looks_reasoning, parse_listing, render
from server.upstream.pricing import Balance, Prices, Rate
from tests.conftest import FAKE_KEY
from tests.helpers import LOCAL_TOOLS, bridge_client, settings_for, text_of

pytestmark = pytest.mark.anyio

LISTING = """\
9 models for this key · balance $87.50 left of $100.00 (used $12.50) · USD per 1M tokens in/out, group default
claude-sonnet-4-5 · Anthropic · $3/$15 (cached $0.3) · responses, chat, anthropic
dall-e-3 · OpenAI · $0.04/call · image-generation
deepseek-chat · DeepSeek · $0.27/$1.08 · responses, chat
gemini-2.5-pro · Google · $1.25/$10 · responses, chat, gemini
gpt-4.1 · OpenAI · $2/$8 (cached $0.5) · responses, chat
gpt-4.1-mini · OpenAI · $0.4/$1.6 (cached $0.1) · responses, chat
gpt-5 · OpenAI · $1.25/$10 (cached $0.125) · reasoning · responses, chat
gpt-5-mini · offline-stand-in · price unknown · reasoning
o4-mini · OpenAI · $1.1/$4.4 (cached $0.275) · reasoning · responses, chat"""


@pytest.fixture
def upstream() -> Any:
    with StandIn(api_key=FAKE_KEY) as served:
        yield served


async def models(client: Client, **arguments: Any) -> str:
    result = await client.call_tool("key4u_models", arguments)
    assert not result.is_error, text_of(result)
    assert result.structured_content is None and len(result.content) == 1  # text only: every host reads it
    return text_of(result)


async def test_lists_the_keys_models_with_prices_apis_reasoning_and_the_balance(
    upstream: StandIn, tmp_path: Path
) -> None:
    async with bridge_client(settings_for(upstream.base_url, tmp_path)) as client:
        tool = next(t for t in (await client.list_tools()).tools if t.name == "key4u_models")
        text = await models(client)
        again = await models(client)
    assert text == again == LISTING
    assert FAKE_KEY not in text
    assert tool.annotations is not None and tool.annotations.read_only_hint is True
    assert tool.annotations.destructive_hint is None and tool.output_schema is None


@pytest.mark.parametrize(
    ("wanted", "header", "ids"),
    [
        ("anthropic", "1 of 9 models match 'anthropic'", ["claude-sonnet-4-5"]),  # the vendor
        ("GPT-5", "2 of 9 models match 'GPT-5'", ["gpt-5", "gpt-5-mini"]),  # the id, any case
        ("stand-in", "1 of 9 models match 'stand-in'", ["gpt-5-mini"]),  # the owner /v1/models names
        ("no-such", "0 of 9 models match 'no-such'", []),
    ],
)
async def test_the_filter_matches_id_or_vendor(
    upstream: StandIn, tmp_path: Path, wanted: str, header: str, ids: list[str]
) -> None:
    async with bridge_client(settings_for(upstream.base_url, tmp_path)) as client:
        first, *lines = (await models(client, filter=wanted)).splitlines()
    assert first.startswith(header + " · balance $87.50 left")
    assert [line.split(" · ")[0] for line in lines] == ids


async def test_without_prices_or_billing_it_says_so_and_uses_what_the_bridge_learned(
    upstream: StandIn, tmp_path: Path
) -> None:
    """A gateway outside the new-api family: no /api/pricing, no billing. The APIs come from what
    /v1/models advertises, else from what the bridge learned (endpoints.json)."""
    upstream.faults = Faults(pricing_route="missing", billing_route="missing")
    settings = settings_for(upstream.base_url, tmp_path)
    learned = {f"{upstream.base_url} claude-sonnet-4-5": "chat", f"{upstream.base_url} gpt-4.1": "responses"}
    settings.endpoint_memory.parent.mkdir(parents=True, exist_ok=True)
    settings.endpoint_memory.write_text(json.dumps(learned))
    async with bridge_client(settings) as client:
        text = await models(client)
        upstream.faults = Faults(pricing_route="missing", billing_route="missing", advertise_endpoints=True)
        advertised = await models(client, filter="gpt-4.1")
    header, *lines = text.splitlines()
    assert header == (
        "9 models for this key · USD per 1M tokens in/out, group default · "
        "the gateway's prices are unavailable (GET /api/pricing: HTTP 404)"
    )
    assert "claude-sonnet-4-5 · offline-stand-in · price unknown · chat (learned)" in lines
    assert "gpt-4.1 · offline-stand-in · price unknown · responses (learned)" in lines
    assert "deepseek-chat · offline-stand-in · price unknown" in lines
    assert advertised.splitlines()[1:] == [
        "gpt-4.1 · offline-stand-in · price unknown · responses, chat",
        "gpt-4.1-mini · offline-stand-in · price unknown · responses, chat",
    ]


async def test_a_price_file_wins_and_the_group_ratio_applies(upstream: StandIn, tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"gpt-5-mini": {"input": 0.25, "output": 2, "cached": 0.025}}))
    settings = settings_for(upstream.base_url, tmp_path, prices=prices, group="vip")
    async with bridge_client(settings) as client:
        lines = (await models(client, filter="gpt-")).splitlines()
    assert lines[0].endswith("USD per 1M tokens in/out, group vip")
    assert "gpt-4.1 · OpenAI · $1.6/$6.4 (cached $0.4) · responses, chat" in lines  # x 0.8
    assert "gpt-5-mini · offline-stand-in · $0.25/$2 (cached $0.025) · reasoning" in lines  # the file's own price


async def test_the_answer_fits_the_host_budget(upstream: StandIn, tmp_path: Path) -> None:
    # The smallest budget there is (KEY4U_MAX_RESULT_CHARS=1000) holds the stand-in's nine models whole.
    settings = settings_for(upstream.base_url, tmp_path, max_result_chars=1000)
    async with bridge_client(settings) as client:
        assert await models(client) == LISTING
    # With no budget set, the calling host's (Codex keeps about 9,000 characters).
    async with Client(build_server(settings_for(upstream.base_url, tmp_path)), client_info=codex()) as client:
        assert await models(client) == LISTING
    # A gateway with thousands of models: cut to the budget, saying how many were left out.
    rows = [
        Row(f"vendor-model-{n:04d}", "Vendor", Rate(input=1, output=2), ("chat",), False, False) for n in range(2000)
    ]
    for budget in (1000, 9000, 60_000):
        cut = render(rows, total=2000, text=None, balance=None, prices=Prices(), budget=budget)
        lines = cut.splitlines()
        assert budget * 0.8 < len(cut) <= budget
        assert lines[-1] == f"… {2000 - (len(lines) - 2)} more not shown: call again with a narrower filter"
        assert lines[1] == "vendor-model-0000 · Vendor · $1/$2 · chat"


def codex() -> Implementation:
    return Implementation(name="codex-mcp-client", version="0.171.0")


async def test_it_is_not_offered_to_the_remote_model(upstream: StandIn, tmp_path: Path) -> None:
    async with bridge_client(settings_for(upstream.base_url, tmp_path)) as client:
        result = await client.call_tool("key4u_respond", {"prompt": "What time is it?"})
    assert not result.is_error, text_of(result)
    assert {t["name"] for t in upstream.requests[0]["tools"]} == LOCAL_TOOLS


async def test_without_a_key_or_with_a_rejected_one_it_is_a_tool_error_without_the_key(
    upstream: StandIn, tmp_path: Path
) -> None:
    async with Client(build_server(Settings())) as client:
        missing = await client.call_tool("key4u_models", {})
    wrong = "sk-wrong-NOT-THIS-ONE-00000000000"
    async with bridge_client(settings_for(upstream.base_url, tmp_path, api_key=wrong)) as client:
        rejected = await client.call_tool("key4u_models", {})
    assert missing.is_error and "KEY4U_API_KEY" in text_of(missing)
    assert rejected.is_error and "could not list this key's models: HTTP 401" in text_of(rejected)
    assert "check KEY4U_API_KEY" in text_of(rejected) and wrong not in text_of(rejected)


def test_a_hostile_listing_keeps_only_models() -> None:
    reply = {
        "data": [
            {"id": "gpt-4.1", "owned_by": "openai", "supported_endpoint_types": ["openai", 7, None, "x" * 100]},
            {"id": "gpt-4.1", "owned_by": "again"},  # a duplicate: the first is kept
            {"id": 12},
            {"id": ""},
            {"id": "y" * 201},
            {"owned_by": "nobody"},
            "o3",
            None,
            {"id": "o3", "owned_by": ["not", "a", "string"], "supported_endpoint_types": "openai"},
        ]
    }
    assert parse_listing(reply) == [
        Listed("gpt-4.1", "openai", ("openai", "x" * 40)),
        Listed("o3", None, ()),
    ]
    for junk in (None, [], "models", {"data": "x"}, {"data": [[]]}):
        assert parse_listing(junk) == []


def test_the_header_shows_the_balance_only_where_known() -> None:
    rows = [Row("m", None, None, (), False, False)]
    unknown = render(rows, total=1, text=None, balance=Balance(note="usage: HTTP 404"), prices=Prices(), budget=9000)
    unlimited = render(rows, total=1, text=None, balance=Balance(unlimited=True), prices=Prices(), budget=9000)
    assert (
        unknown.splitlines()[0]
        == "1 models for this key · USD per 1M tokens in/out, group default · no prices are configured"
    )
    assert unlimited.splitlines()[0].startswith("1 models for this key · balance unlimited ·")


@pytest.mark.parametrize(
    ("model", "reasoning"),
    [
        ("o1", True),
        ("o3-pro", True),
        ("openai/o4-mini", True),
        ("gpt-5", True),
        ("gpt-5.1-codex", True),
        ("gpt-5-chat-latest", False),
        ("claude-sonnet-4-5-thinking", True),
        ("deepseek-reasoner", True),
        ("deepseek-r1", True),
        ("qwq-32b", True),
        ("gpt-4o", False),
        ("gpt-4.1", False),
        ("claude-sonnet-4-5", False),
        ("deepseek-chat", False),
        ("gemini-2.5-pro", False),
        ("tor1x", False),
    ],
)
def test_which_names_look_like_reasoning_models(model: str, reasoning: bool) -> None:
    assert looks_reasoning(model) is reasoning


async def test_its_definition_is_short(upstream: StandIn, tmp_path: Path) -> None:
    async with bridge_client(settings_for(upstream.base_url, tmp_path)) as client:
        tool = next(t for t in (await client.list_tools()).tools if t.name == "key4u_models")
    shown = json.dumps({"name": tool.name, "description": tool.description, "input_schema": tool.input_schema})
    assert len(shown) < 240, shown
    assert tool.input_schema == {
        "type": "object",
        "properties": {"filter": {"type": "string", "description": "Substring of model id or vendor"}},
    }
