"""Prices and balance: new-api's billing formula against hand-computed figures, KEY4U_PRICES files,
hostile /api/pricing and billing replies (none crashes, none leaks the key), the background
refresher, and doctor's prices and balance lines."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pydantic import ValidationError

from server.cli.doctor import run_doctor
from server.config import Settings
from server.standin import Faults, StandIn
from server.standin import billing as standin_billing
from server.upstream.pricing import (
    ModelPrice,
    Prices,
    PriceTable,
    PricingUnavailable,
    Rate,
    fetch_balance,
    fetch_pricing,
    gateway_quota,
    load_price_file,
    origin_of,
    parse_pricing,
)
from tests.conftest import FAKE_KEY
from tests.helpers import settings_for

pytestmark = pytest.mark.anyio


def table(*prices: ModelPrice, groups: dict[str, float] | None = None) -> PriceTable:
    return PriceTable(models={p.model: p for p in prices}, group_ratios=groups or {"default": 1.0})


def ready(*prices: ModelPrice, group: str = "default", groups: dict[str, float] | None = None) -> Prices:
    """A price book whose gateway list is already loaded (its source answers at once)."""
    loaded = table(*prices, groups=groups)

    async def source() -> PriceTable:
        return loaded

    return Prices(source, group=group)


# --- the formula, against figures computed by hand from new-api's billing code --------------------

GPT41 = ModelPrice("gpt-4.1", model_ratio=1.0, completion_ratio=4.0, cache_ratio=0.25)
OPUS = ModelPrice("claude-opus-4-6", model_ratio=2.5, completion_ratio=5.0)  # new-api's own test: $5 / $25 per 1M
DEEPSEEK = ModelPrice("deepseek-chat", model_ratio=0.135, completion_ratio=4.0)
DALLE = ModelPrice("dall-e-3", per_call_usd=0.04)


@pytest.mark.parametrize(
    ("price", "group_ratio", "usage", "quota"),
    [
        # (1000 - 200) + 200 x 0.25 + 500 x 4 = 2,850 quota at ratio 1: $0.0057.
        (GPT41, 1.0, (1000, 500, 200), 2_850),
        # new-api's Claude Opus 4.6 case: (100,000 + 1,000 x 5) x 2.5 = 262,500 quota = $0.525 ($5/M in, $25/M out).
        (OPUS, 1.0, (100_000, 1_000, 0), 262_500),
        # The same in a group of ratio 0.8: 210,000.
        (OPUS, 0.8, (100_000, 1_000, 0), 210_000),
        # (7 + 3 x 4) x 0.135 = 2.565, rounded as new-api's decimal Round(0): 3.
        (DEEPSEEK, 1.0, (7, 3, 0), 3),
        # 1 x 0.135 = 0.135 rounds to 0; a priced request is charged at least one unit.
        (DEEPSEEK, 1.0, (1, 0, 0), 1),
        # A request that reported no tokens is charged nothing.
        (GPT41, 1.0, (0, 0, 0), 0),
        # Per call: 0.04 x 500,000 x group ratio, whatever the tokens.
        (DALLE, 1.0, (10, 0, 0), 20_000),
        (DALLE, 0.8, (10, 0, 0), 16_000),
    ],
)
def test_quota_is_new_apis(price: ModelPrice, group_ratio: float, usage: tuple[int, int, int], quota: int) -> None:
    assert gateway_quota(price, group_ratio, *usage) == quota


async def test_cost_in_usd_with_group_ratio_and_cached_tokens() -> None:
    book = ready(GPT41, OPUS, DALLE, groups={"default": 1.0, "vip": 0.8})
    await book.refresh()
    cost = book.cost("gpt-4.1", input_tokens=1000, output_tokens=500, cached_tokens=200)
    assert cost is not None and cost.source == "gateway" and not cost.per_call
    assert cost.quota == 2_850 and cost.usd == pytest.approx(2_850 / 500_000) == pytest.approx(0.0057)
    assert cost.group == "default" and cost.group_ratio == 1.0
    # A million input tokens at model_ratio 1 is $2; output at completion_ratio 4, $8; cached at 0.25, $0.50.
    assert book.cost("gpt-4.1", 1_000_000, 0).usd == pytest.approx(2.0)  # type: ignore[union-attr]
    assert book.cost("gpt-4.1", 0, 1_000_000).usd == pytest.approx(8.0)  # type: ignore[union-attr]
    assert book.cost("gpt-4.1", 1_000_000, 0, 1_000_000).usd == pytest.approx(0.5)  # type: ignore[union-attr]
    assert book.rate("gpt-4.1") == Rate(input=2.0, output=8.0, cached=0.5)
    per_call = book.cost("dall-e-3", 5, 0)
    assert per_call is not None and per_call.per_call and per_call.usd == pytest.approx(0.04)
    vip = Prices(book.source, group="vip")
    await vip.refresh()
    assert vip.cost("claude-opus-4-6", 100_000, 1_000).usd == pytest.approx(0.42)  # type: ignore[union-attr]
    assert vip.rate("claude-opus-4-6") == Rate(input=4.0, output=20.0, cached=4.0)


async def test_cached_tokens_cost_as_input_without_a_cache_ratio_and_never_exceed_the_input() -> None:
    book = ready(OPUS)
    await book.refresh()
    plain = book.cost("claude-opus-4-6", 1000, 0, 0)
    cached = book.cost("claude-opus-4-6", 1000, 0, 400)
    assert plain is not None and cached is not None and plain.quota == cached.quota == 2_500
    # More cached than input (a confused gateway): counted as all cached, never negative input.
    over = Prices(ready(GPT41).source)
    await over.refresh()
    assert over.cost("gpt-4.1", 100, 0, 10_000).quota == 25  # type: ignore[union-attr]
    # Tokens that are not counts are zero, never a crash.
    assert over.cost("gpt-4.1", -5, math.nan, "12").quota == 0  # type: ignore[arg-type,union-attr]


async def test_an_unknown_model_or_group_is_none_with_the_reason_never_a_guess() -> None:
    book = ready(
        GPT41, ModelPrice("tiered", problem="the gateway prices it by tiers (billing_expr), not computed here")
    )
    assert (
        book.cost("gpt-4.1", 10, 10) is None
        and book.why_unpriced("gpt-4.1") == "the gateway's prices are not loaded yet"
    )
    await book.refresh()
    assert book.cost("gpt-9", 10, 10) is None
    assert book.why_unpriced("gpt-9") == "the gateway's price list has no model 'gpt-9'"
    assert book.cost("tiered", 10, 10) is None and "tiers" in (book.why_unpriced("tiered") or "")
    assert book.why_unpriced("gpt-4.1") is None
    other = Prices(book.source, group="svip")
    await other.refresh()
    assert other.cost("gpt-4.1", 10, 10) is None and other.rate("gpt-4.1") is None
    assert (
        other.why_unpriced("gpt-4.1")
        == "the gateway publishes no ratio for group 'svip' (KEY4U_GROUP); it has: default"
    )
    assert Prices().cost("gpt-4.1", 1, 1) is None and Prices().why_unpriced("gpt-4.1") == "no prices are configured"


# --- KEY4U_PRICES -------------------------------------------------------------------------------------


def test_a_json_price_file_wins_over_the_gateway(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"gpt-4.1": {"input": 3, "output": 12, "cached": 0.75}, "flux": {"per_call": 0.05}}))
    settings = Settings(prices=path)
    book = Prices(ready(GPT41).source, file=load_price_file(settings.prices))  # type: ignore[arg-type]
    cost = book.cost("gpt-4.1", 1_000_000, 1_000_000, 200_000)
    # 800,000 x $3/M + 200,000 x $0.75/M + 1,000,000 x $12/M = 2.4 + 0.15 + 12
    assert cost is not None and cost.source == "file" and cost.quota is None
    assert cost.usd == pytest.approx(14.55)
    assert book.cost("flux", 100, 100).usd == pytest.approx(0.05)  # type: ignore[union-attr]
    assert book.rate("flux") == Rate(per_call=0.05, source="file") and book.why_unpriced("flux") is None


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib")
def test_a_toml_price_file_and_cached_defaulting_to_input(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(
        '["claude-sonnet-4-5"]\ninput = 3.0\noutput = 15.0\n\n["o4-mini"]\ninput = 1.1\noutput = 4.4\ncached = 0.275\n'
    )
    rates = load_price_file(path)
    assert rates["claude-sonnet-4-5"] == Rate(input=3.0, output=15.0, cached=3.0, source="file")
    cost = Prices(file=rates).cost("o4-mini", 2_000_000, 1_000_000, 1_000_000)
    assert cost is not None and cost.usd == pytest.approx(1.1 + 0.275 + 4.4)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("p.json", "{not json", "not valid JSON"),
        ("p.toml", "[unclosed", "not valid TOML"),
        ("p.json", "[1, 2]", "must map model names to prices"),
        ("p.json", '{"m": {"input": "2", "output": 8}}', "input must be a non-negative number"),
        ("p.json", '{"m": {"input": -1, "output": 8}}', "input must be a non-negative number"),
        ("p.json", '{"m": {"input": 2}}', "needs input and output"),
        ("p.json", '{"m": {"input": 2, "output": 8, "price": 1}}', "unknown keys ['price']"),
        ("p.json", '{"m": 3}', "must be a table"),
    ],
)
def test_a_bad_price_file_stops_the_settings_naming_what_is_wrong(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValidationError) as caught:
        Settings(prices=path)
    assert message in str(caught.value) and caught.value.errors()[0]["loc"] == ("prices",)


def test_a_missing_price_file_is_named() -> None:
    with pytest.raises(ValidationError, match="cannot read"):
        Settings(prices=Path("no-such-prices.json"))
    assert Settings().prices is None and Settings().group == "default"
    assert Settings(group=" vip ").group == "vip"


# --- parsing new-api's reply ------------------------------------------------------------------------------


def test_the_stand_ins_reply_parses_as_new_apis_shape() -> None:
    parsed = parse_pricing(standin_billing.pricing(Faults(), lambda model, faults: False))
    assert set(parsed.models) == set(standin_billing.TOKEN_PRICED) | set(standin_billing.CALL_PRICED)
    gpt = parsed.models["gpt-4.1"]
    assert (gpt.model_ratio, gpt.completion_ratio, gpt.cache_ratio, gpt.vendor) == (1.0, 4.0, 0.25, "OpenAI")
    assert gpt.endpoint_types == ("openai", "openai-response") and gpt.groups == ("default", "vip")
    assert parsed.models["dall-e-3"].per_call_usd == 0.04 and parsed.models["gemini-2.5-pro"].cache_ratio is None
    assert parsed.group_ratios == {"default": 1.0, "vip": 0.8}


def test_odd_entries_are_kept_unpriced_with_a_problem_or_skipped() -> None:
    reply = {
        "data": [
            {
                "model_name": "tiers",
                "quota_type": 0,
                "model_ratio": 1,
                "completion_ratio": 1,
                "billing_mode": "tiered_expr",
            },
            {"model_name": "weird", "quota_type": 7},
            {"model_name": "boolish", "quota_type": True, "model_price": 1},
            {"model_name": "text", "quota_type": 0, "model_ratio": "1.5", "completion_ratio": 4},
            {"model_name": "bad-cache", "quota_type": 0, "model_ratio": 1, "completion_ratio": 4, "cache_ratio": "x"},
            {"model_name": "free", "quota_type": 1, "model_price": -0.5},
            {"model_name": "", "quota_type": 0},
            {"quota_type": 0},
            "gpt-4.1",
            None,
            {"model_name": "x" * 201, "quota_type": 0, "model_ratio": 1, "completion_ratio": 1},
        ],
        "group_ratio": {"default": "1", "vip": -2, "ok": 0.5, "": 1},
    }
    parsed = parse_pricing(reply)
    assert set(parsed.models) == {"tiers", "weird", "boolish", "text", "bad-cache", "free"}
    assert all(p.problem for p in parsed.models.values())
    assert "tiers" in (parsed.models["tiers"].problem or "") and "quota_type" in (parsed.models["weird"].problem or "")
    assert parsed.group_ratios == {"ok": 0.5}
    # A fork that keys the list by model name.
    keyed = parse_pricing({"data": {"m": {"quota_type": 0, "model_ratio": 2, "completion_ratio": 1}, "n": 4}})
    assert keyed.models["m"].model_ratio == 2 and set(keyed.models) == {"m"}


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ([{"model_name": "gpt-4.1"}], "a JSON list, not an object"),
        ("pricing", "a JSON str"),
        ({"success": False, "message": "无权访问"}, "the gateway refused: 无权访问"),
        ({"success": True, "data": "lots"}, "no list of models"),
        ({}, "no list of models"),
    ],
)
def test_a_reply_that_is_not_a_price_list_is_unavailable(reply: Any, reason: str) -> None:
    with pytest.raises(PricingUnavailable, match=reason):
        parse_pricing(reply)


def test_the_origin_is_the_base_url_without_v1() -> None:
    assert origin_of("https://api.key4u.shop/v1") == "https://api.key4u.shop"
    assert origin_of("https://api.key4u.shop/v1/") == "https://api.key4u.shop"
    assert origin_of("http://127.0.0.1:8765/gateway/v1") == "http://127.0.0.1:8765/gateway"
    assert origin_of("https://example.com") == "https://example.com"


# --- hostile replies, through a real HTTP client --------------------------------------------------------

Handler = Callable[[httpx.Request], Any]


def mock_client(handler: Handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def fetched(handler: Handler, **bounds: Any) -> tuple[Prices, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    async def record(request: httpx.Request) -> Any:
        seen.append(request)
        result = handler(request)
        return await result if hasattr(result, "__await__") else result

    async with mock_client(record) as http:

        async def source() -> PriceTable:
            return await fetch_pricing(http, "https://gw.example/v1", secrets=[FAKE_KEY], **bounds)

        book = Prices(source, secrets=[FAKE_KEY])
        await book.refresh()
    return book, seen


def json_reply(body: Any, status: int = 200) -> Handler:
    return lambda request: httpx.Response(status, json=body)


class Chunks:
    """An endless-looking body, counted as it is read."""

    def __init__(self, total: int, chunk: int = 1024 * 1024) -> None:
        self.total, self.chunk, self.sent = total, chunk, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.sent < self.total:
            self.sent += self.chunk
            yield b"[" * self.chunk


async def slow(request: httpx.Request) -> httpx.Response:
    await anyio.sleep(30)
    return httpx.Response(200, json={})


def timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectTimeout("timed out", request=request)


def key_everywhere(request: httpx.Request) -> httpx.Response:
    entry = {"model_name": FAKE_KEY, "quota_type": FAKE_KEY, "model_ratio": FAKE_KEY, "completion_ratio": 1}
    return httpx.Response(200, json={"success": True, "data": [entry], "group_ratio": {FAKE_KEY: 1}})


HOSTILE: dict[str, Handler] = {
    "not JSON": lambda request: httpx.Response(200, text="<html>pricing</html>"),
    "a list": json_reply([{"model_name": "gpt-4.1", "quota_type": 0, "model_ratio": 1, "completion_ratio": 4}]),
    "strings for numbers": json_reply(
        {
            "data": [{"model_name": "gpt-4.1", "quota_type": "0", "model_ratio": "1", "completion_ratio": "4"}],
            "group_ratio": {"default": "1"},
        }  # fmt: skip
    ),
    "negative and NaN": lambda request: httpx.Response(
        200,
        text='{"data": [{"model_name": "gpt-4.1", "quota_type": 0, "model_ratio": NaN, "completion_ratio": -4}],'
        ' "group_ratio": {"default": Infinity}}',
    ),
    "50 MB": lambda request: httpx.Response(200, content=Chunks(50 * 1024 * 1024)),
    "nested too deep": lambda request: httpx.Response(200, text="[" * 200_000 + "]" * 200_000),
    "404": json_reply({"error": {"message": "Invalid URL (GET /api/pricing)"}}, 404),
    "500 echoing the key": lambda request: httpx.Response(500, text=f"upstream failed for {FAKE_KEY}"),
    "success false echoing the key": json_reply({"success": False, "message": "x" * 190 + f"bad token {FAKE_KEY}"}),
    "not JSON, starting with the key": lambda request: httpx.Response(200, text=f"{FAKE_KEY} {{"),
    "a 500 with the key across the cut": lambda request: httpx.Response(500, text="e" * 1990 + FAKE_KEY),
    "the key as names and numbers": key_everywhere,
    "connect timeout": timeout,
}


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_a_hostile_pricing_reply_gives_no_price_no_crash_and_never_the_key(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    book, seen = await fetched(HOSTILE[name])
    assert book.cost("gpt-4.1", 1000, 1000) is None and book.rate("gpt-4.1") is None
    reason = book.why_unpriced("gpt-4.1") or ""
    said = reason + (book.why_unpriced(FAKE_KEY) or "") + caplog.text + repr(book)
    assert reason and "NEVER-SHOW" not in said  # not the key, nor any part of it
    assert [str(r.url) for r in seen] == ["https://gw.example/api/pricing"]
    assert "authorization" not in seen[0].headers  # the price list is public: no key is sent for it


async def test_a_50_mb_reply_is_refused_after_reading_little_more_than_the_bound() -> None:
    body = Chunks(50 * 1024 * 1024)
    book, _ = await fetched(lambda request: httpx.Response(200, content=body), max_bytes=2 * 1024 * 1024)
    assert not book.loaded and "larger than" in (book.why_unpriced("gpt-4.1") or "")
    assert body.sent <= 3 * 1024 * 1024


async def test_a_stalled_reply_times_out_and_is_retried_sooner_than_an_hour() -> None:
    with anyio.fail_after(10):
        book, _ = await fetched(slow, timeout=0.2)
    assert not book.loaded and "took longer than 0.2 s" in (book.why_unpriced("gpt-4.1") or "")
    assert book._next_at - book._clock() == pytest.approx(book.retry_every, abs=1)


# --- the refresher --------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_refresher_fetches_when_first_asked_then_at_most_hourly() -> None:
    clock = Clock()
    answers: list[PriceTable | Exception] = [
        table(GPT41),
        PricingUnavailable("GET /api/pricing: HTTP 502", transient=True),
        table(ModelPrice("gpt-4.1", model_ratio=2.0, completion_ratio=4.0)),
    ]

    async def source() -> PriceTable:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    book = Prices(source, clock=clock)
    async with anyio.create_task_group() as tg:
        tg.start_soon(book.run)
        await anyio.sleep(0.05)
        assert book.fetches == 0  # nothing is fetched until something asks
        assert book.cost("gpt-4.1", 1_000_000, 0) is None  # not loaded yet: None at once, and a fetch is asked for
        with anyio.fail_after(5):
            assert await book.ready(5)
        assert book.fetches == 1 and book.cost("gpt-4.1", 1_000_000, 0).usd == pytest.approx(2.0)  # type: ignore[union-attr]
        for _ in range(50):
            book.cost("gpt-4.1", 1, 1)
        await anyio.sleep(0.05)
        assert book.fetches == 1  # within the hour: no other fetch
        clock.now += 3601
        book.want()
        await wait_for(lambda: book.fetches == 2)
        assert book.cost("gpt-4.1", 1_000_000, 0).usd == pytest.approx(2.0)  # type: ignore[union-attr]  # kept
        assert book.why_unpriced("gpt-4.1") is None
        clock.now += 60
        book.want()
        await anyio.sleep(0.05)
        assert book.fetches == 2  # a transient failure is retried after retry_every, not at once
        clock.now += 300
        book.want()
        await wait_for(lambda: book.fetches == 3)
        assert book.cost("gpt-4.1", 1_000_000, 0).usd == pytest.approx(4.0)  # type: ignore[union-attr]
        tg.cancel_scope.cancel()


async def test_ready_gives_up_at_its_timeout_when_nothing_answers() -> None:
    async def never() -> PriceTable:
        await anyio.sleep(60)
        raise AssertionError("unreachable")

    book = Prices(never)
    async with anyio.create_task_group() as tg:
        tg.start_soon(book.run)
        with anyio.fail_after(5):
            assert not await book.ready(0.1)
        tg.cancel_scope.cancel()


async def test_a_source_that_breaks_is_caught_and_reported_by_kind() -> None:
    async def broken() -> PriceTable:
        raise KeyError(FAKE_KEY)

    book = Prices(broken, secrets=[FAKE_KEY])
    assert not await book.refresh()
    assert book.why_unpriced("m") == "the gateway's prices are unavailable (KeyError)"


async def wait_for(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not condition():
            await anyio.sleep(0.01)


def test_importing_the_price_book_loads_no_http_client() -> None:
    """The bridge may hold a Prices: importing it must not pull in httpx or the wire modules."""
    code = (
        "import sys, server.upstream.pricing; "
        "print(' '.join(m for m in sys.modules if m.startswith(('server.upstream.gateway', 'httpx'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []


# --- the balance ----------------------------------------------------------------------------------------------


async def test_the_balance_from_the_stand_in() -> None:
    with StandIn(api_key=FAKE_KEY) as upstream:
        async with httpx.AsyncClient() as http:
            balance = await fetch_balance(http, upstream.base_url, FAKE_KEY)
            refused = await fetch_balance(http, upstream.base_url, "sk-wrong-0000000000")
            upstream.faults = Faults(billing_route="missing")
            missing = await fetch_balance(http, upstream.base_url, FAKE_KEY)
    assert balance.limit_usd == 100.0 and balance.used_usd == 12.5 and balance.remaining_usd == 87.5
    assert balance.summary() == "$87.50 left of $100.00 (used $12.50)" and balance.note is None
    assert not refused.known and refused.note == "subscription: HTTP 401; usage: HTTP 401"
    assert missing.remaining_usd is None and missing.summary().startswith("not exposed by this gateway")


@pytest.mark.parametrize(
    ("subscription", "usage", "summary"),
    [
        ({"hard_limit_usd": 100_000_000}, {"total_usage": 250}, "unlimited (used $2.50)"),
        ({"error": {"message": "token not found", "type": "upstream_error"}}, {"total_usage": 250}, "used $2.50"),
        ({"hard_limit_usd": "100"}, {"total_usage": -3}, "not exposed by this gateway"),
        ([1, 2], "cents", "not exposed by this gateway"),
        ({"hard_limit_usd": 40.0}, {"error": {"message": f"bad key {FAKE_KEY}"}}, "limit $40.00"),
    ],
)
async def test_a_hostile_balance_gives_none_where_unusable_and_never_the_key(
    subscription: Any, usage: Any, summary: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {FAKE_KEY}"
        return httpx.Response(200, json=subscription if request.url.path.endswith("subscription") else usage)

    async with mock_client(handler) as http:
        balance = await fetch_balance(http, "https://gw.example/v1", FAKE_KEY)
    assert balance.summary().startswith(summary)
    assert FAKE_KEY not in balance.summary() + repr(balance)


async def test_a_balance_that_stalls_or_echoes_the_key_in_an_error() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("usage"):
            await anyio.sleep(30)
        return httpx.Response(403, text=f"key {FAKE_KEY} may not read billing")

    async with mock_client(handler) as http:
        with anyio.fail_after(5):
            balance = await fetch_balance(http, "https://gw.example/v1", FAKE_KEY, timeout=0.2)
    assert not balance.known and balance.note is not None and FAKE_KEY not in balance.note
    assert balance.note == "subscription: HTTP 403; usage: the reply took longer than 0.2 s"


# --- doctor ---------------------------------------------------------------------------------------------------


async def test_doctor_shows_the_balance_and_the_models_price(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with StandIn(api_key=FAKE_KEY) as upstream:
        code = await run_doctor(settings_for(upstream.base_url, tmp_path, max_retries=0), ["gpt-4.1", "gpt-5-mini"])
        healthy = capsys.readouterr().out
        upstream.faults = Faults(pricing_route="missing", billing_route="missing")
        await run_doctor(settings_for(upstream.base_url, tmp_path, max_retries=0, group="svip"), ["gpt-4.1"])
        bare = capsys.readouterr().out
    assert code == 0, healthy
    assert "ok    balance" in healthy and "$87.50 left of $100.00 (used $12.50)" in healthy
    assert "8 models priced by the gateway (GET /api/pricing); gpt-4.1 $2/$8 (cached $0.5) per 1M tokens" in healthy
    assert "gpt-5-mini: the gateway's price list has no model 'gpt-5-mini'" in healthy
    assert "balance" in bare and "not exposed by this gateway (subscription: HTTP 404; usage: HTTP 404)" in bare
    assert "none from the gateway: the gateway's prices are unavailable (GET /api/pricing: HTTP 404)" in bare
    assert FAKE_KEY not in healthy + bare


async def test_doctor_says_which_group_to_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"o4-mini": {"input": 1, "output": 4}}))
    with StandIn(api_key=FAKE_KEY) as upstream:
        settings = settings_for(upstream.base_url, tmp_path, max_retries=0, group="svip", prices=prices)
        await run_doctor(settings, ["gpt-4.1", "o4-mini"])
    out = capsys.readouterr().out
    assert "prices (group svip)" in out and "no ratio for group 'svip' (KEY4U_GROUP); it has: default, vip" in out
    assert "1 from KEY4U_PRICES (they win)" in out and "o4-mini $1/$4 per 1M tokens" in out
    assert "-> set KEY4U_GROUP to the key's group" in out
