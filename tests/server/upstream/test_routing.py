"""Choosing the API per model: fall back to chat where the gateway says Responses cannot serve, remember
it (in the process and on disk), follow what the gateway advertises, and never fall back on auth or quota."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from server import errors
from server.upstream.chat import ChatClient, ChatModel
from server.upstream.gateway import Gateway, RetryPolicy
from server.upstream.model import Message, ModelRequest
from server.upstream.responses import ResponsesClient, ResponsesModel
from server.upstream.routing import ApiChoice, AutoModel, EndpointMemory
from tests.conftest import FAKE_KEY

pytestmark = pytest.mark.anyio

BASE = "https://gw.test/v1"
ONE_API_404 = (404, {"error": {"message": "Invalid URL (POST /v1/responses)", "type": "invalid_request_error"}})
NEW_API_500 = (
    500,
    {
        "error": {
            "message": "not implemented (request id: 2026120200000)",
            "type": "new_api_error",
            "code": "convert_request_failed",
        }
    },
)


@dataclass
class FakeGateway:
    """Answers both routes: ``responses``/``chat``/``models`` are None for a normal answer, or (status, body)."""

    responses: tuple[int, dict[str, Any]] | None = None
    chat: tuple[int, dict[str, Any]] | None = None
    models: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    hits: Counter[str] = field(default_factory=Counter[str])

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/v1")
        self.hits[path] += 1
        if path == "/models":
            return httpx.Response(200, json={"object": "list", "data": self.models})
        if path == "/responses":
            if self.responses is not None:
                return httpx.Response(self.responses[0], json=self.responses[1])
            message = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "r"}]}
            return httpx.Response(200, json={"id": "resp_1", "status": "completed", "output": [message]})
        if self.chat is not None:
            return httpx.Response(self.chat[0], json=self.chat[1])
        choice = {"message": {"role": "assistant", "content": "c"}, "finish_reason": "stop"}
        return httpx.Response(200, json={"id": "chatcmpl-1", "choices": [choice]})


def auto(gateway: FakeGateway, memory: EndpointMemory | None = None, style: ApiChoice = "auto") -> AutoModel:
    http = httpx.AsyncClient(transport=httpx.MockTransport(gateway))
    retry = RetryPolicy(max_retries=2, max_wait=0.01, budget=5)
    kwargs: dict[str, Any] = {"base_url": BASE, "api_key": FAKE_KEY, "stream": False, "retry": retry}
    return AutoModel(
        Gateway(http, base_url=BASE, api_key=FAKE_KEY),
        ResponsesModel(ResponsesClient(http, **kwargs)),
        ChatModel(ChatClient(http, **kwargs)),
        style=style,
        memory=memory,
    )


def ask(model: str = "claude-sonnet-4-5", **kwargs: Any) -> ModelRequest:
    return ModelRequest(model=model, items=[Message(role="user", text="hi")], **kwargs)


@pytest.mark.parametrize("refusal", [ONE_API_404, NEW_API_500], ids=["one-api 404", "new-api 500"])
async def test_falls_back_once_then_goes_straight_to_chat(refusal: tuple[int, dict[str, Any]], tmp_path: Path) -> None:
    gateway = FakeGateway(responses=refusal)
    memory = EndpointMemory(tmp_path / "endpoints.json")
    model = auto(gateway, memory)
    first = await model.respond(ask())
    assert first.api == "chat" and first.text == "c" and any("used /v1/chat/completions" in n for n in first.notes)
    assert gateway.hits["/responses"] == 1  # an unserved route is not retried
    second = await model.respond(ask())
    assert second.api == "chat" and not second.notes and gateway.hits["/responses"] == 1
    # A new process reads what this one learned.
    restarted = auto(gateway, EndpointMemory(tmp_path / "endpoints.json"))
    assert (await restarted.respond(ask())).api == "chat" and gateway.hits["/responses"] == 1
    # Other models are still tried on Responses first.
    gateway.responses = None
    assert (await restarted.respond(ask("gpt-4.1"))).api == "responses"


@pytest.mark.parametrize(
    ("status", "body", "raised"),
    [
        (401, {"error": {"message": "Invalid token", "code": "invalid_api_key"}}, errors.AuthenticationError),
        (403, {"error": {"message": "model not allowed for this token"}}, errors.PermissionDeniedError),
        (429, {"error": {"message": "quota exhausted", "code": "insufficient_quota"}}, errors.QuotaExceededError),
        (404, {"error": {"message": "The model does not exist", "code": "model_not_found"}}, errors.NotFoundError),
    ],
)
async def test_never_falls_back_on_auth_quota_or_an_unknown_model(
    status: int, body: dict[str, Any], raised: type[Exception]
) -> None:
    gateway = FakeGateway(responses=(status, body))
    with pytest.raises(raised):
        await auto(gateway).respond(ask())
    assert gateway.hits["/chat/completions"] == 0


async def test_a_gateway_that_serves_neither_names_both_routes() -> None:
    gateway = FakeGateway(responses=ONE_API_404, chat=(404, {"error": {"message": "Invalid URL"}}))
    with pytest.raises(errors.NoUsableEndpointError) as caught:
        await auto(gateway).respond(ask())
    text = str(caught.value)
    assert f"{BASE}/responses" in text and f"{BASE}/chat/completions" in text and "KEY4U_BASE_URL" in text


async def test_what_the_gateway_advertises_is_followed_without_trying() -> None:
    gateway = FakeGateway(
        responses=NEW_API_500,
        models=[
            {"id": "claude-sonnet-4-5", "supported_endpoint_types": ["openai", "anthropic"]},
            {"id": "gpt-4.1", "supported_endpoint_types": ["openai", "openai-response"]},
        ],
    )
    model = auto(gateway)
    assert (await model.respond(ask())).api == "chat"
    assert gateway.hits["/responses"] == 0 and gateway.hits["/models"] == 1
    gateway.responses = None
    assert (await model.respond(ask("gpt-4.1"))).api == "responses"
    assert gateway.hits["/models"] == 1  # asked once


async def test_a_conversations_api_and_a_forced_style_win() -> None:
    gateway = FakeGateway()
    assert (await auto(gateway).respond(ask(api="chat"))).api == "chat"
    assert (await auto(gateway, style="chat").respond(ask())).api == "chat"
    assert gateway.hits["/responses"] == 0


async def test_an_unreadable_memory_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.json"
    path.write_bytes(b"\xff{not json")
    gateway = FakeGateway(responses=ONE_API_404)
    assert (await auto(gateway, EndpointMemory(path)).respond(ask())).api == "chat"
    assert EndpointMemory(path).get(BASE, "claude-sonnet-4-5") == "chat"  # rewritten, readable again
    path.write_text('{"https://gw.test/v1 m": "telnet", "x": 5, "https://gw.test/v1 n": "chat"}')
    memory = EndpointMemory(path)
    assert memory.get(BASE, "m") is None and memory.get(BASE, "n") == "chat"
