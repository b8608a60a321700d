"""The Streamable HTTP transport: auth, Host/Origin checks, size limits, stateless replicas."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.config import Settings
from server.errors import ConfigError
from server.standin import Faults, StandIn
from server.transports.http import build_http_app, is_loopback
from tests.conftest import FAKE_KEY
from tests.helpers import INITIALIZE, settings_for, text_of
from tests.server.transports.serving import http_client, served

pytestmark = pytest.mark.anyio
TOKEN = "mcp-token-for-tests-0123456789"
MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


@contextmanager
def http_bridge(settings: Settings, *, stateless: bool = False, host: str = "127.0.0.1") -> Iterator[str]:
    with served(settings, stateless=stateless, host=host) as server:
        yield f"{server.url}/mcp"


async def test_tools_over_http(standin: StandIn, tmp_path: Path) -> None:
    with http_bridge(settings_for(standin.base_url, tmp_path)) as url:
        async with http_client(url) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            calc = await client.call_tool("math_calculator", {"operation": "add", "a": 123.5, "b": 456.7})
            answer = await client.call_tool("key4u_respond", {"prompt": "Calculate 2 + 3"})
    assert "key4u_respond" in names and calc.structured_content["result"] == 580.2  # type: ignore[index]
    assert answer.structured_content["status"] == "completed"  # type: ignore[index]


async def test_a_token_is_required_when_set_and_checked(standin: StandIn, tmp_path: Path) -> None:
    with http_bridge(settings_for(standin.base_url, tmp_path, mcp_token=TOKEN)) as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            reply = httpx.post(url, json=INITIALIZE, headers={**MCP_HEADERS, **headers})
            assert reply.status_code == 401 and reply.headers["www-authenticate"].startswith("Bearer")
            assert TOKEN not in reply.text
        assert httpx.get(url.replace("/mcp", "/healthz")).json() == {"status": "ok"}
        async with http_client(url, TOKEN) as client:
            assert (await client.call_tool("current_time", {"timezone": "UTC"})).is_error is False


def test_non_loopback_binding_requires_a_token(tmp_path: Path) -> None:
    settings = settings_for("http://127.0.0.1:9/v1", tmp_path)
    with pytest.raises(ConfigError, match="KEY4U_MCP_TOKEN"):
        build_http_app(settings, "0.0.0.0", stateless=False)
    assert build_http_app(settings_for("http://127.0.0.1:9/v1", tmp_path, mcp_token=TOKEN), "0.0.0.0", stateless=False)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("10.0.0.1")


def test_host_origin_and_size_checks(tmp_path: Path) -> None:
    settings = settings_for("http://127.0.0.1:9/v1", tmp_path, mcp_max_request_bytes=2048)
    with http_bridge(settings) as url:
        assert httpx.post(url, json=INITIALIZE, headers={**MCP_HEADERS, "Host": "evil.example"}).status_code == 421
        assert (
            httpx.post(url, json=INITIALIZE, headers={**MCP_HEADERS, "Origin": "http://evil.example"}).status_code
            == 403
        )
        assert (
            httpx.post(url, json=INITIALIZE, headers={**MCP_HEADERS, "Origin": "http://localhost:3000"}).status_code
            == 200
        )
        big = {**INITIALIZE, "params": {**INITIALIZE["params"], "padding": "x" * 10_000}}  # type: ignore[dict-item]
        assert httpx.post(url, json=big, headers=MCP_HEADERS).status_code == 413
        assert httpx.post(url, json=INITIALIZE, headers=MCP_HEADERS).status_code == 200  # still serving


async def test_stateless_replicas_share_one_conversation(standin: StandIn, tmp_path: Path) -> None:
    settings = settings_for(standin.base_url, tmp_path)  # one database for both replicas
    weather = {
        "name": "get_weather",
        "inputSchema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
    with http_bridge(settings, stateless=True) as first, http_bridge(settings, stateless=True) as second:
        async with http_client(first) as client:
            asked = await client.call_tool(
                "key4u_respond", {"prompt": 'weather in "Rome"', "functions": [weather], "tools": []}
            )
        data: dict[str, Any] = asked.structured_content or {}
        assert data["status"] == "requires_action", text_of(asked)
        call_id = data["pending_calls"][0]["call_id"]
        async with http_client(second) as client:
            done = await client.call_tool(
                "key4u_respond",
                {
                    "conversation_id": data["conversation_id"],
                    "function_outputs": [{"call_id": call_id, "output": "22 C, clear"}],
                },
            )
    assert done.structured_content["status"] == "completed"  # type: ignore[index]
    assert "22 C, clear" in text_of(done)


@pytest.mark.parametrize("stateless", [False, True])
async def test_hostile_replies_over_http_leave_the_service_healthy(
    standin: StandIn, tmp_path: Path, stateless: bool
) -> None:
    """The faults that used to leave the HTTP service answering 500 (with /healthz still ok): each gets a
    clear result, the next call is served, and the key shows nowhere."""
    settings = settings_for(standin.base_url, tmp_path, mcp_token=TOKEN)
    with http_bridge(settings, stateless=stateless) as url:
        async with http_client(url, TOKEN) as client:
            seen = ""
            for faults in (
                Faults(answer_text=f"bad \ud800 {FAKE_KEY}", model_alias=FAKE_KEY),
                Faults(bad_arguments='{"a": ' + "[" * 300 + "]" * 300 + "}"),
                Faults(same_call_ids=True),
            ):
                standin.faults = faults
                result = await client.call_tool("key4u_respond", {"prompt": "Calculate 2 + 3 and 4 + 5"})
                seen += text_of(result) + str(result.structured_content)
            standin.faults = Faults()
            after = await client.call_tool("key4u_respond", {"prompt": "Calculate 1 + 1"})
        health = httpx.get(url.replace("/mcp", "/healthz"))
    assert "bad \ufffd ***" in seen and "nest deeper than 64" in seen and FAKE_KEY not in seen
    assert after.structured_content["status"] == "completed"  # type: ignore[index]
    assert health.status_code == 200
    assert FAKE_KEY.encode() not in (tmp_path / "conversations.db").read_bytes()
