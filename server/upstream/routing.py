"""Which API reaches which model: ``AutoModel`` chooses Responses or Chat Completions per model.

In ``auto`` style it asks, in order: the API the conversation already uses; what this process or an
earlier one learned for (base URL, model), kept in a small JSON file in the state directory; what the
gateway advertises (new-api's ``supported_endpoint_types`` in ``/v1/models``); and otherwise it tries
Responses and falls back to Chat Completions when the gateway says the route cannot serve the model
(``gateway.route_not_served``: a missing route, or a conversion it has not implemented). Auth, quota
and rate-limit errors never cause a fallback. The style can also be forced (``responses``, ``chat``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anyio
import httpx

from server import errors
from server.config import Settings
from server.upstream.chat import ChatClient, ChatModel
from server.upstream.gateway import Gateway, ReplyLimits, RetryPolicy, route_not_served
from server.upstream.jsonvalues import is_array, is_object
from server.upstream.model import ApiStyle, Model, ModelRequest, ModelResponse, OnEvent
from server.upstream.responses import ResponsesClient, ResponsesModel

logger = logging.getLogger(__name__)

ApiChoice = Literal["auto", "responses", "chat"]
_MAX_REMEMBERED = 2000
_ADVERTISED_TIMEOUT = 5.0


@dataclass
class EndpointMemory:
    """The API each (base URL, model) answered on, for this process and, when ``path`` is set, the next."""

    path: Path | None = None
    _known: dict[str, ApiStyle] = field(default_factory=dict[str, ApiStyle])
    _loaded: bool = False

    @staticmethod
    def _key(base_url: str, model: str) -> str:
        return f"{base_url.rstrip('/')} {model}"

    def get(self, base_url: str, model: str) -> ApiStyle | None:
        self._load()
        return self._known.get(self._key(base_url, model))

    async def remember(self, base_url: str, model: str, api: ApiStyle) -> None:
        self._load()
        key = self._key(base_url, model)
        if self._known.get(key) == api:
            return
        if len(self._known) >= _MAX_REMEMBERED:
            self._known.clear()
        self._known[key] = api
        if self.path is not None:
            await anyio.to_thread.run_sync(self._write, dict(self._known))

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self.path is None:
            return
        try:
            data: object = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:  # unreadable or not JSON: start afresh, say so
            logger.warning("ignoring the endpoint memory %s: %s", self.path, exc)
            return
        if is_object(data):
            for key, value in list(data.items())[:_MAX_REMEMBERED]:
                if value == "responses" or value == "chat":
                    self._known[key] = value

    def _write(self, known: dict[str, ApiStyle]) -> None:
        assert self.path is not None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
            partial.write_text(json.dumps(known, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(partial, self.path)
        except OSError as exc:
            logger.warning("could not save the endpoint memory %s: %s", self.path, exc)


class AutoModel:
    """A ``Model`` that reaches each model over the API that serves it, learning which as it goes.

    It never retries a request on the other API after a reply that could have been billed: a fallback
    happens only on errors that come before any answer (a missing route, an unimplemented conversion).
    """

    def __init__(
        self,
        gateway: Gateway,
        responses: ResponsesModel,
        chat: ChatModel,
        *,
        style: ApiChoice = "auto",
        memory: EndpointMemory | None = None,
    ) -> None:
        self.gateway = gateway
        self.responses = responses
        self.chat = chat
        self.style: ApiChoice = style
        self.memory = memory or EndpointMemory()
        self._advertised: dict[str, ApiStyle] | None = None

    def adapter(self, api: ApiStyle) -> Model:
        return self.responses if api == "responses" else self.chat

    async def choice(self, model: str) -> ApiStyle | None:
        """The API known for ``model`` without trying it, or None when only trying will tell."""
        style = self.style
        if style != "auto":
            return style
        known = self.memory.get(self.gateway.base_url, model)
        if known is not None:
            return known
        return (await self._endpoint_types()).get(model)

    async def respond(self, request: ModelRequest, on_event: OnEvent | None = None) -> ModelResponse:
        api = request.api or await self.choice(request.model)
        if api is not None:
            response = await self.adapter(api).respond(request, on_event)
            await self.memory.remember(self.gateway.base_url, request.model, api)
            return response
        try:
            response = await self.responses.respond(request, on_event)
        except errors.UpstreamError as exc:
            if not route_not_served(exc):
                raise
            return await self._fall_back(request, on_event, exc)
        await self.memory.remember(self.gateway.base_url, request.model, "responses")
        return response

    async def _fall_back(
        self, request: ModelRequest, on_event: OnEvent | None, refused: errors.UpstreamError
    ) -> ModelResponse:
        base = self.gateway.base_url
        logger.info("%s/responses cannot serve %s (%s); trying chat/completions", base, request.model, refused.summary)
        try:
            response = await self.chat.respond(request, on_event)
        except errors.UpstreamError as exc:
            if route_not_served(exc):
                raise errors.NoUsableEndpointError(
                    f"neither POST {self.gateway.base_url}/responses ({refused.summary}) nor POST "
                    f"{self.gateway.base_url}/chat/completions ({exc.summary}) serves model {request.model!r}"
                ) from exc
            raise
        await self.memory.remember(self.gateway.base_url, request.model, "chat")
        response.notes.append(
            f"/v1/responses does not serve {request.model} on this gateway ({refused.summary}); "
            "used /v1/chat/completions, and will from now on"
        )
        return response

    async def _endpoint_types(self) -> dict[str, ApiStyle]:
        """What the gateway advertises per model (new-api's ``supported_endpoint_types``), asked once."""
        if self._advertised is None:
            self._advertised = {}
            with anyio.move_on_after(_ADVERTISED_TIMEOUT):
                try:
                    listing: object = await self.gateway.get_json("/models")
                except errors.UpstreamError as exc:
                    logger.debug("no model listing: %s", exc)
                    listing = None
                self._advertised = advertised_endpoints(listing)
        return self._advertised


def connect(http: httpx.AsyncClient, settings: Settings) -> AutoModel:
    """The model client for ``settings``: both adapters on one HTTP client, chosen per model."""
    assert settings.api_key is not None
    key = settings.api_key.get_secret_value()
    retry = RetryPolicy(
        max_retries=settings.max_retries, max_wait=settings.retry_max_wait, budget=settings.retry_budget
    )
    base, stream = settings.base_url, settings.stream
    limits = ReplyLimits(max_bytes=settings.max_reply_bytes, silence=settings.timeout, total=settings.turn_timeout)
    responses = ResponsesModel(
        ResponsesClient(http, base_url=base, api_key=key, stream=stream, retry=retry, limits=limits),
        conversation_mode=settings.conversation_mode,
    )
    chat = ChatModel(ChatClient(http, base_url=base, api_key=key, stream=stream, retry=retry, limits=limits))
    return AutoModel(
        responses.client.gateway,  # the same gateway (key, retries, reply bounds) for the model listing
        responses,
        chat,
        style=settings.api_style,
        memory=EndpointMemory(settings.endpoint_memory),
    )


def advertised_endpoints(listing: object) -> dict[str, ApiStyle]:
    """Model -> API from a ``/v1/models`` listing whose entries carry ``supported_endpoint_types``."""
    result: dict[str, ApiStyle] = {}
    data: object = listing.get("data") if is_object(listing) else None
    for entry in data if is_array(data) else []:
        if not is_object(entry) or not isinstance(model := entry.get("id"), str):
            continue
        types: object = entry.get("supported_endpoint_types")
        if not is_array(types):
            continue
        if "openai-response" in types:
            result[model] = "responses"
        elif "openai" in types:
            result[model] = "chat"
    return result


__all__ = ["ApiChoice", "AutoModel", "EndpointMemory", "advertised_endpoints", "connect"]
