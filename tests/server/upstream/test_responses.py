"""The Responses client against httpx.MockTransport and the real stand-in: errors, retries, SSE quirks."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from server import errors
from server.standin import Faults, StandIn, http_date
from server.upstream.responses import ResponsesClient, RetryPolicy, parse_retry_after
from tests.conftest import FAKE_KEY

pytestmark = pytest.mark.anyio

BODY = {"model": "gpt-4.1", "input": "hello", "store": False}
FAST = RetryPolicy(max_retries=2, max_wait=5.0, budget=30.0)


def mock_client(
    handler: Callable[[httpx.Request], httpx.Response], *, stream: bool = False, retry: RetryPolicy = FAST
) -> ResponsesClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return ResponsesClient(http, base_url="https://gw.test/v1", api_key=FAKE_KEY, stream=stream, retry=retry)


class Counted:
    """A MockTransport handler that counts requests and answers the n-th (from 1) with ``reply(n)``."""

    def __init__(self, reply: Callable[[int], httpx.Response]) -> None:
        self.reply = reply
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return self.reply(self.calls)


def envelope(message: str, code: str | None = None, type_: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": "", "code": code}}


def ok_response(text: str = "hi", model: str = "gpt-4.1-2025-04-14") -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "status": "completed",
        "model": model,
        "output": [
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4},
        "extra_field": {"kept": True},
    }


def sse(*events: dict[str, Any] | str) -> bytes:
    chunks = []
    for event in events:
        if isinstance(event, str):
            chunks.append(event)
        else:
            chunks.append(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n")
    return "".join(chunks).encode()


async def test_sends_bearer_key_and_parses_leniently() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=ok_response())

    response = await mock_client(handler).create(BODY)
    assert seen[0].url == "https://gw.test/v1/responses"
    assert seen[0].headers["authorization"] == f"Bearer {FAKE_KEY}"
    assert json.loads(seen[0].content)["stream"] is False
    assert response.text() == "hi" and response.model == "gpt-4.1-2025-04-14"
    assert FAKE_KEY not in repr(mock_client(handler))


@pytest.mark.parametrize(
    ("status", "body", "error_class", "fragment"),
    [
        (
            401,
            envelope("Incorrect API key provided: sk-test-NEVER-SHOW-0123456789abcdef"),
            errors.AuthenticationError,
            "Incorrect API key",
        ),
        (403, envelope("model not allowed for this token"), errors.PermissionDeniedError, "not allowed"),
        (404, envelope("Invalid URL (POST /v1/responses)"), errors.NotFoundError, "Invalid URL"),
        (400, envelope("No tool output found for function call call_X."), errors.BadRequestError, "No tool output"),
        (422, {"detail": "unprocessable"}, errors.BadRequestError, "unprocessable"),
        (429, envelope("You exceeded your current quota", "insufficient_quota"), errors.QuotaExceededError, "quota"),
        (429, envelope("用户额度不足", "insufficient_user_quota", "new_api_error"), errors.QuotaExceededError, "额度"),
    ],
)
async def test_non_retryable_statuses_map_to_typed_errors_once(
    status: int, body: dict[str, Any], error_class: type[errors.UpstreamError], fragment: str
) -> None:
    handler = Counted(lambda n: httpx.Response(status, json=body))

    with pytest.raises(error_class) as caught:
        await mock_client(handler).create(BODY)
    assert handler.calls == 1
    assert fragment in str(caught.value)
    assert FAKE_KEY not in str(caught.value)
    assert caught.value.hint


async def test_request_id_suffix_is_split_off() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json=envelope("bad input (request id: 2025abc)"))

    with pytest.raises(errors.BadRequestError) as caught:
        await mock_client(handler).create(BODY)
    assert caught.value.message == "bad input" and caught.value.request_id == "2025abc"


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
async def test_retryable_statuses_are_retried_then_succeed(status: int) -> None:
    handler = Counted(
        lambda n: (
            httpx.Response(status, json=envelope("try later"), headers={"retry-after-ms": "10"})
            if n < 3
            else httpx.Response(200, json=ok_response())
        )
    )

    assert (await mock_client(handler).create(BODY)).text() == "hi"
    assert handler.calls == 3


async def test_retries_stop_after_max_retries() -> None:
    handler = Counted(
        lambda n: httpx.Response(503, text="<html>Service Unavailable</html>", headers={"retry-after": "0.01"})
    )

    with pytest.raises(errors.ServerError, match="Service Unavailable"):
        await mock_client(handler).create(BODY)
    assert handler.calls == 3


async def test_x_should_retry_header_overrides_the_status_rule() -> None:
    handler = Counted(lambda n: httpx.Response(500, json=envelope("no"), headers={"x-should-retry": "false"}))

    with pytest.raises(errors.ServerError):
        await mock_client(handler).create(BODY)
    assert handler.calls == 1


async def test_a_retry_after_longer_than_the_cap_is_reported_not_waited() -> None:
    handler = Counted(
        lambda n: httpx.Response(429, json=envelope("Rate limit reached"), headers={"retry-after": "3600"})
    )

    with pytest.raises(errors.RateLimitError) as caught:
        await mock_client(handler).create(BODY)
    assert handler.calls == 1 and caught.value.retry_after == 3600


def test_retry_after_parses_milliseconds_seconds_and_http_dates() -> None:
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "250"})) == 0.25
    assert parse_retry_after(httpx.Headers({"retry-after": "1.5"})) == 1.5
    wait = parse_retry_after(httpx.Headers({"retry-after": http_date(30)}))
    assert wait is not None and 25 < wait <= 31
    assert parse_retry_after(httpx.Headers({"retry-after": "soon"})) is None
    assert parse_retry_after(httpx.Headers({})) is None


async def test_connection_errors_are_retried_and_then_reported() -> None:
    def refuse(n: int) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    handler = Counted(refuse)

    with pytest.raises(errors.UpstreamConnectionError, match="refused"):
        await mock_client(handler, retry=RetryPolicy(max_retries=1, max_wait=1, budget=10)).create(BODY)
    assert handler.calls == 2


async def test_timeouts_map_to_upstream_timeout() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(errors.UpstreamTimeout):
        await mock_client(handler, retry=RetryPolicy(max_retries=0)).create(BODY)


async def test_the_time_budget_bounds_retries() -> None:
    handler = Counted(lambda n: httpx.Response(503, json=envelope("busy"), headers={"retry-after": "2"}))

    with pytest.raises(errors.ServerError):
        await mock_client(handler, retry=RetryPolicy(max_retries=5, max_wait=5, budget=1.0)).create(BODY)
    assert handler.calls == 1


async def test_malformed_json_and_200_with_error_object() -> None:
    with pytest.raises(errors.MalformedResponseError, match="not JSON"):
        await mock_client(lambda r: httpx.Response(200, text="{oops")).create(BODY)
    with pytest.raises(errors.MalformedResponseError, match="bad_response_body"):
        await mock_client(lambda r: httpx.Response(200, json=envelope("upstream broke", "bad_response_body"))).create(
            BODY
        )
    with pytest.raises(errors.QuotaExceededError):
        await mock_client(lambda r: httpx.Response(200, json=envelope("余额不足", "insufficient_user_quota"))).create(
            BODY
        )


# --- streaming ---------------------------------------------------------------------------------

CALL_ITEM = {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "math_calculator", "arguments": ""}


def sse_response(*events: dict[str, Any] | str) -> httpx.Response:
    return httpx.Response(200, content=sse(*events), headers={"content-type": "text/event-stream"})


def stream_reply(*events: dict[str, Any] | str) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: sse_response(*events)


async def test_stream_accumulates_items_by_output_index_and_survives_gateway_habits() -> None:
    handler = stream_reply(
        ": PING\n\n",
        {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress", "output": []}},
        {"type": "response.output_item.added", "output_index": 0, "item": CALL_ITEM},
        "data: "
        + json.dumps(
            {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 0, "delta": '{"a":1'}
        )
        + "\n\n",  # no event: line
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 0, "delta": "}"},
        ": PING\n\n",
        {
            "type": "response.completed",
            "response": {
                "id": "resp_1",
                "status": "completed",
                "model": "renamed-4.1",
                "output": [],
                "usage": {"input_tokens": 5},
            },
        },
        "data: [DONE]\n\n",
    )
    response = await mock_client(handler, stream=True).create(BODY)
    calls = response.function_calls()
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [("call_1", "math_calculator", '{"a":1}')]
    assert response.model == "renamed-4.1"


async def test_output_item_done_is_authoritative() -> None:
    handler = stream_reply(
        {"type": "response.output_item.added", "output_index": 0, "item": CALL_ITEM},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 0, "delta": '{"a"'},
        {"type": "response.output_item.done", "output_index": 0, "item": {**CALL_ITEM, "arguments": '{"a":2}'}},
        {"type": "response.completed", "response": {"status": "completed", "output": []}},
    )
    response = await mock_client(handler, stream=True).create(BODY)
    assert response.function_calls()[0].arguments == '{"a":2}'


async def test_stream_without_terminal_event_is_a_failure_and_not_retried() -> None:
    handler = Counted(
        lambda n: sse_response({"type": "response.output_item.added", "output_index": 0, "item": CALL_ITEM})
    )

    with pytest.raises(errors.MalformedResponseError, match="without a terminal event"):
        await mock_client(handler, stream=True).create(BODY)
    assert handler.calls == 1


async def test_error_event_mid_stream_is_a_stream_error() -> None:
    handler = stream_reply(
        {"type": "response.created", "response": {"status": "in_progress", "output": []}},
        {"type": "error", "code": "server_error", "message": "boom", "param": None},
    )
    with pytest.raises(errors.StreamError, match="boom"):
        await mock_client(handler, stream=True).create(BODY)
    gateway = stream_reply("data: " + json.dumps({"error": {"message": "upstream quota", "code": "x"}}) + "\n\n")
    with pytest.raises(errors.StreamError, match="upstream quota"):
        await mock_client(gateway, stream=True).create(BODY)


async def test_a_non_json_stream_event_is_malformed() -> None:
    with pytest.raises(errors.MalformedResponseError, match="not JSON"):
        await mock_client(stream_reply("data: {broken\n\n"), stream=True).create(BODY)


async def test_a_json_reply_to_a_stream_request_is_accepted() -> None:
    response = await mock_client(lambda r: httpx.Response(200, json=ok_response()), stream=True).create(BODY)
    assert response.text() == "hi"


# --- against the real stand-in over HTTP ---------------------------------------------------------


def real_client(
    upstream: StandIn, *, stream: bool = True, key: str = FAKE_KEY, retry: RetryPolicy = FAST
) -> tuple[ResponsesClient, httpx.AsyncClient]:
    http = httpx.AsyncClient(timeout=10)
    return ResponsesClient(http, base_url=upstream.base_url, api_key=key, stream=stream, retry=retry), http


@pytest.mark.parametrize("stream", [True, False])
async def test_stand_in_round_trip(standin: StandIn, stream: bool) -> None:
    client, http = real_client(standin, stream=stream)
    async with http:
        response = await client.create({"model": "gpt-4.1", "input": "hello", "store": False})
    assert response.status == "completed" and "offline stand-in" in response.text()
    assert response.usage is not None and response.usage["input_tokens"] > 0


@pytest.mark.parametrize(
    ("faults", "error_class"),
    [
        (Faults(status=401), errors.AuthenticationError),
        (Faults(status=403), errors.PermissionDeniedError),
        (Faults(status=404), errors.NotFoundError),
        (Faults(status=429, retry_after="7200"), errors.RateLimitError),
        (
            Faults(status=429, error_code="insufficient_quota", error_message="You exceeded your current quota"),
            errors.QuotaExceededError,
        ),
        (Faults(status=502), errors.ServerError),
        (Faults(cut_stream_after=4), errors.MalformedResponseError),
        (Faults(reset_stream_after=4), errors.UpstreamConnectionError),
        (Faults(error_event_after=3), errors.StreamError),
        (Faults(malformed_json=True), errors.MalformedResponseError),
        (Faults(ok_with_error=True), errors.MalformedResponseError),
    ],
)
async def test_stand_in_faults_map_to_errors(standin: StandIn, faults: Faults, error_class: type[Exception]) -> None:
    standin.faults = faults
    client, http = real_client(standin, retry=RetryPolicy(max_retries=2, max_wait=0.05, budget=5))
    async with http:
        with pytest.raises(error_class):
            await client.create({"model": "gpt-4.1", "input": "hello"})


async def test_stand_in_nth_request_failure_is_retried(standin: StandIn) -> None:
    standin.faults = Faults(status=503, fail_requests={1}, retry_after_ms="20")
    client, http = real_client(standin)
    async with http:
        response = await client.create({"model": "gpt-4.1", "input": "hello"})
    assert response.status == "completed" and standin.state.count == 2


async def test_stand_in_ping_done_and_missing_event_lines_are_survived(standin: StandIn) -> None:
    standin.faults = Faults(ping=True, done_marker=True, no_event_lines=True, model_alias="gpt-4.1-2025-04-14")
    client, http = real_client(standin)
    async with http:
        response = await client.create({"model": "gpt-4.1", "input": "hello"})
    assert response.model == "gpt-4.1-2025-04-14"


async def test_connection_refused_is_a_connection_error() -> None:
    with StandIn() as upstream:
        url = upstream.base_url
    http = httpx.AsyncClient(timeout=2)
    client = ResponsesClient(http, base_url=url, api_key=FAKE_KEY, retry=RetryPolicy(max_retries=1, max_wait=0.1))
    async with http:
        with pytest.raises(errors.UpstreamConnectionError):
            await client.create(BODY)
