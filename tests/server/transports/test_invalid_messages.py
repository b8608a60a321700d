"""Requests that fail validation get a JSON-RPC error with their id (where it can be read) and a log line, on
both transports, and the next valid request is still answered."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.standin import StandIn
from tests.conftest import FAKE_KEY
from tests.helpers import INITIALIZE, raw_session, settings_for, stdio_exchange
from tests.server.transports.serving import served

pytestmark = pytest.mark.anyio
MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND = -32602, -32600, -32601

#: (message, the error code its reply carries): each request is answered with its own id.
INVALID: list[tuple[dict[str, Any] | list[Any], int]] = [
    ({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": 5}}, INVALID_PARAMS),
    ({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": [1, 2]}, INVALID_PARAMS),
    ({"jsonrpc": "2.0", "id": "seven", "method": "tools/call", "params": "x"}, INVALID_PARAMS),
    ({"jsonrpc": "2.0", "id": 8, "method": "no/such/method"}, METHOD_NOT_FOUND),
    ({"jsonrpc": "2.0", "id": 9}, INVALID_REQUEST),
    ({"id": 10, "method": "ping"}, INVALID_REQUEST),
    ({"jsonrpc": "2.0", "id": 11, "method": 42}, INVALID_REQUEST),
    ([{"jsonrpc": "2.0", "id": 12, "method": "ping"}], INVALID_REQUEST),
]
CALL = {"jsonrpc": "2.0", "id": 20, "method": "tools/call", "params": {"name": "system_info", "arguments": {}}}


def handshake(url: str, stateless: bool) -> dict[str, str]:
    """Initialize an MCP session over HTTP; the headers its next requests carry."""
    opened = httpx.post(url, json=INITIALIZE, headers=MCP_HEADERS)
    headers = {**MCP_HEADERS, "mcp-protocol-version": "2025-06-18"}
    if not stateless:
        headers["mcp-session-id"] = opened.headers["mcp-session-id"]
    httpx.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    return headers


def ids_of(message: dict[str, Any] | list[Any]) -> list[Any]:
    return [m["id"] for m in message] if isinstance(message, list) else [message["id"]]


async def test_stdio_answers_invalid_requests_with_their_ids_and_keeps_serving(tmp_path: Path) -> None:
    session = raw_session(
        INITIALIZE,
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        *(message for message, _ in INVALID),  # type: ignore[misc]
    )
    # Lines with no id to read, then a valid request: logged, not answered.
    session += b"not json\n\n" + b'{"jsonrpc": "2.0", "method": "ping", "params": 7}\n' + raw_session(CALL)
    expected = {i: code for message, code in INVALID for i in ids_of(message)}
    env = {**os.environ, "KEY4U_API_KEY": FAKE_KEY, "KEY4U_DB_PATH": str(tmp_path / "db.sqlite3")}
    errlog = tmp_path / "err.txt"
    wanted = {1, 20, *expected}
    messages = await stdio_exchange(session, env, errlog, until=lambda got: wanted <= {m.get("id") for m in got})
    replies = {m.get("id"): m for m in messages}
    for request_id, code in expected.items():
        assert replies[request_id]["error"]["code"] == code, replies[request_id]
    assert replies[20]["result"]["isError"] is False  # the next valid request is answered
    assert None not in replies  # nothing answered with a null id
    stderr = errlog.read_text()
    for request_id in expected:
        assert f"request {request_id!r}" in stderr or f"id {request_id!r}" in stderr, request_id
    assert stderr.count("rejected an invalid JSON-RPC message on stdin (no readable id") == 2


@pytest.mark.parametrize("stateless", [False, True], ids=["stateful", "stateless"])
def test_http_answers_invalid_requests_with_their_ids_and_keeps_serving(
    stateless: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with served(settings_for("http://127.0.0.1:9/v1", tmp_path), stateless=stateless) as server:
        url = f"{server.url}/mcp"
        headers = handshake(url, stateless)
        for message, code in INVALID:
            reply = httpx.post(url, json=message, headers=headers)
            assert reply.status_code in (200, 400), reply.text
            errors = [reply.json()] if reply.status_code == 400 else [event_data(reply.text)]
            errors = errors[0] if isinstance(errors[0], list) else errors
            assert [e["id"] for e in errors] == ids_of(message), reply.text
            assert {e["error"]["code"] for e in errors} == {code}, reply.text
            assert "input_value" not in reply.text  # the SDK's pydantic dump is not echoed
        unparsable = httpx.post(url, content=b"not json", headers=headers)
        assert unparsable.status_code == 400 and unparsable.json()["id"] is None
        answered = httpx.post(url, json=CALL, headers=headers)
        assert event_data(answered.text)["result"]["isError"] is False
    for message, _ in INVALID:
        for request_id in ids_of(message):
            assert f"request {request_id!r}" in caplog.text or f"id {request_id!r}" in caplog.text, request_id


def event_data(sse: str) -> Any:
    """The JSON of the one ``data:`` line of an SSE reply."""
    return json.loads(next(line[5:] for line in sse.splitlines() if line.startswith("data:")))


#: A prompt cut in the middle of an emoji, as a JavaScript host may send it: valid JSON, whose string no
#: UTF-8 writer accepts (pydantic's parser refuses it).
CUT = b'{"jsonrpc": "2.0", "id": 30, "method": "tools/call", "params": {"name": "key4u_respond", '
CUT += b'"arguments": {"prompt": "caf\\u00e9 \\ud83d", "tools": []}}}'


def sent_prompts(standin: StandIn) -> list[str]:
    return [json.dumps(r["input"], ensure_ascii=False) for r in standin.requests]


async def test_stdio_serves_a_call_with_a_lone_surrogate_escape(standin: StandIn, tmp_path: Path) -> None:
    session = raw_session(INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    session += CUT + b"\n" + raw_session(CALL)
    env = {**os.environ, "KEY4U_API_KEY": FAKE_KEY, "KEY4U_BASE_URL": standin.base_url}
    env.update(KEY4U_DB_PATH=str(tmp_path / "db.sqlite3"), KEY4U_API_STYLE="responses")
    messages = await stdio_exchange(session, env, tmp_path / "err.txt", until=lambda got: len(got) >= 3)
    replies = {m.get("id"): m for m in messages}
    assert replies[30]["result"]["structuredContent"]["status"] == "completed", replies[30]
    assert replies[20]["result"]["isError"] is False
    assert any("café \ufffd" in p for p in sent_prompts(standin))


@pytest.mark.parametrize("stateless", [False, True], ids=["stateful", "stateless"])
def test_http_serves_a_call_with_a_lone_surrogate_escape(standin: StandIn, tmp_path: Path, stateless: bool) -> None:
    settings = settings_for(standin.base_url, tmp_path, api_style="responses")
    with served(settings, stateless=stateless) as server:
        url = f"{server.url}/mcp"
        headers = handshake(url, stateless)
        reply = httpx.post(url, content=CUT, headers=headers, timeout=30)
        assert reply.status_code == 200, reply.text
        answer = event_data(reply.text)
        assert answer["id"] == 30 and answer["result"]["structuredContent"]["status"] == "completed"
        broken = httpx.post(url, content=CUT.replace(b"}}}", b"}}"), headers=headers)  # not JSON even then
        assert broken.status_code == 400 and broken.json()["error"]["code"] == -32700
    assert any("café \ufffd" in p for p in sent_prompts(standin))
