"""The stand-in's HTTP side: ``POST /v1/responses`` and ``POST /v1/chat/completions`` (JSON and SSE)
and ``GET /v1/models``, with the real error envelope, request checks, switchable faults, and
gateway personalities (a gateway without the Responses route, or with it only for some models);
and new-api's ``GET /api/pricing`` and the key's ``GET /v1/dashboard/billing/subscription`` and
``/usage``.

The endpoints themselves live in ``responses`` and ``chat``; prices and balance in ``billing``;
what they share, in ``common``.
"""

from __future__ import annotations

import email.utils
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from server.standin import billing, chat, responses
from server.standin.common import CHAT_PATH, RESPONSES_PATH, Faults, RequestError, StandInState
from server.standin.model import is_object
from server.standin.responses import build_response, check_input, check_tools, stream_events

__all__ = [
    "CHAT_PATH",
    "MODEL_IDS",
    "RESPONSES_PATH",
    "Faults",
    "RequestError",
    "StandInState",
    "build_response",
    "check_input",
    "check_tools",
    "create_app",
    "http_date",
    "stream_events",
]

MODEL_IDS = (
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-5",
    "gpt-5-mini",
    "o4-mini",
    "claude-sonnet-4-5",
    "gemini-2.5-pro",
    "deepseek-chat",
    "dall-e-3",
)

Handler = Callable[[dict[str, Any], StandInState], Awaitable[Response]]


def _fault_error(state: StandInState, path: str) -> JSONResponse | None:
    faults = state.faults
    if faults.status is None or (faults.fail_requests is not None and state.count not in faults.fail_requests):
        return None
    defaults = {
        401: ("Incorrect API key provided (offline stand-in fault).", "invalid_request_error", "invalid_api_key"),
        403: ("You are not allowed to use this model (offline stand-in fault).", "permission_error", None),
        404: (f"Invalid URL (POST {path})", "invalid_request_error", None),
        429: ("Rate limit reached for requests (offline stand-in fault).", "requests", "rate_limit_exceeded"),
    }
    message, type_, code = defaults.get(
        faults.status, ("Upstream failure (offline stand-in fault).", "server_error", None)
    )
    headers: dict[str, str] = {}
    if faults.retry_after is not None:
        headers["retry-after"] = faults.retry_after
    if faults.retry_after_ms is not None:
        headers["retry-after-ms"] = faults.retry_after_ms
    error = RequestError(
        faults.status, faults.error_message or message, type_=faults.error_type or type_, code=faults.error_code or code
    )
    return error.response(headers)


def _check_key(request: Request, state: StandInState) -> JSONResponse | None:
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    if token and (state.api_key is None or secrets.compare_digest(token.encode(), state.api_key.encode())):
        return None
    return RequestError(
        401, "Incorrect API key provided. You can find your API key at the gateway console.", code="invalid_api_key"
    ).response()


# --- gateway personalities ------------------------------------------------------------------------


def chat_only(model_name: Any, faults: Faults) -> bool:
    """Whether the gateway serves ``model_name`` through Chat Completions only (no Responses route)."""
    if faults.responses_route != "ok":
        return True
    return isinstance(model_name, str) and any(model_name.startswith(p) for p in faults.chat_only_models)


def _invalid_url(path: str) -> JSONResponse:
    """one-api's answer for a route it does not have."""
    return RequestError(404, f"Invalid URL (POST {path})", param="", code="").response()


def _not_implemented() -> JSONResponse:
    """new-api's answer for a Responses request routed to a channel without the Responses API."""
    request_id = time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(8)
    return RequestError(
        500,
        f"not implemented (request id: {request_id})",
        type_="new_api_error",
        param="",
        code="convert_request_failed",
    ).response()


def _unknown_model(name: str) -> JSONResponse:
    """OpenAI's answer for a model the key cannot use."""
    return RequestError(
        404, f"The model `{name}` does not exist or you do not have access to it.", code="model_not_found"
    ).response()


def _personality(path: str, body: dict[str, Any] | None, faults: Faults) -> JSONResponse | None:
    if path == RESPONSES_PATH:
        if faults.responses_route == "missing":
            return _invalid_url(path)
        if faults.responses_route == "not_implemented" or chat_only((body or {}).get("model"), faults):
            return _not_implemented()
    if path == CHAT_PATH and faults.chat_route == "missing":
        return _invalid_url(path)
    return None


# --- the app ------------------------------------------------------------------------------------


def create_app(state: StandInState) -> Starlette:
    def endpoint(path: str, handle: Handler) -> Route:
        async def serve(request: Request) -> Response:
            state.count += 1
            state.active += 1
            state.peak_active = max(state.peak_active, state.active)
            streaming = False
            try:
                response = await answer(request, path, handle)
                streaming = isinstance(response, StreamingResponse)
                return response
            finally:
                if not streaming:
                    state.active -= 1  # a stream is counted until its generator ends

        return Route(path, serve, methods=["POST"])

    async def answer(request: Request, path: str, handle: Handler) -> Response:
        if (denied := _check_key(request, state)) is not None:
            return denied
        state.paths.append(path)
        body: dict[str, Any] | None = None
        problem: RequestError | None = None
        try:
            parsed = json.loads(await request.body())
        except ValueError:
            problem = RequestError(400, "We could not parse the JSON body of your request.")
        else:
            if is_object(parsed):
                body = parsed
                state.requests.append(body)
            else:
                problem = RequestError(400, "The request body must be a JSON object.")
        if state.faults.latency:
            await anyio.sleep(state.faults.latency)
        model_name = (body or {}).get("model")
        if isinstance(model_name, str) and (delay := state.faults.model_latency.get(model_name)):
            await anyio.sleep(delay)
        if isinstance(model_name, str) and model_name in state.faults.unknown_models:
            return _unknown_model(model_name)
        if (refusal := _personality(path, body, state.faults)) is not None:
            return refusal
        if problem is not None or body is None:
            return (problem or RequestError(400, "The request body must be a JSON object.")).response()
        if (error := _fault_error(state, path)) is not None:
            return error
        return await handle(body, state)

    async def models(request: Request) -> Response:
        if (denied := _check_key(request, state)) is not None:
            return denied
        data: list[dict[str, Any]] = []
        for name in MODEL_IDS:
            entry: dict[str, Any] = {
                "id": name,
                "object": "model",
                "created": 1_700_000_000,
                "owned_by": "offline-stand-in",
            }
            if state.faults.advertise_endpoints:
                entry["supported_endpoint_types"] = (
                    ["openai"] if chat_only(name, state.faults) else ["openai", "openai-response"]
                )
            data.append(entry)
        return JSONResponse({"object": "list", "data": data})

    async def pricing(request: Request) -> Response:
        if state.faults.pricing_route == "missing":
            return await not_found(request)
        return JSONResponse(billing.pricing(state.faults, chat_only))

    def billed(reply: Callable[[], dict[str, Any]]) -> Callable[[Request], Awaitable[Response]]:
        async def serve(request: Request) -> Response:
            if (denied := _check_key(request, state)) is not None:
                return denied
            if state.faults.billing_route == "missing":
                return await not_found(request)
            return JSONResponse(reply())

        return serve

    async def not_found(request: Request) -> Response:
        return RequestError(404, f"Invalid URL ({request.method} {request.url.path})").response()

    return Starlette(
        routes=[
            endpoint(RESPONSES_PATH, responses.handle),
            endpoint(CHAT_PATH, chat.handle),
            Route("/v1/models", models, methods=["GET"]),
            Route("/api/pricing", pricing, methods=["GET"]),
            Route("/v1/dashboard/billing/subscription", billed(billing.subscription), methods=["GET"]),
            Route("/v1/dashboard/billing/usage", billed(billing.usage), methods=["GET"]),
            Route("/{path:path}", not_found, methods=["GET", "POST", "PUT", "DELETE"]),
        ]
    )


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)
