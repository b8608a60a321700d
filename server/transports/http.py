"""Serving MCP over Streamable HTTP (``/mcp``), for a shared or remote bridge.

* Loopback by default. Binding elsewhere requires ``KEY4U_MCP_TOKEN``: every request must then
  carry ``Authorization: Bearer <token>``, compared in constant time.
* Host and Origin headers are checked (DNS-rebinding protection): loopback names, plus
  ``KEY4U_MCP_ALLOWED_HOSTS`` / ``KEY4U_MCP_ALLOWED_ORIGINS``.
* Request bodies are capped (``KEY4U_MCP_MAX_REQUEST_BYTES``).
* ``--stateless``: no MCP session; any replica can answer any request. Conversations then live
  in the shared database (``KEY4U_DB_PATH``) or at the gateway (``previous_response_id``).
* ``GET /healthz`` answers without a token, for load balancers.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from typing import Any

import uvicorn
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

from server.config import Settings
from server.errors import ConfigError
from server.surface.app import build_server

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ["127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]"]
LOOPBACK_ORIGINS = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class BearerAuth:
    """Requires ``Authorization: Bearer <token>`` on every HTTP request.

    ``Health``, which wraps it, answers ``/healthz`` without one.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, presented = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(presented.strip(), self._token):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "unauthorized", "error_description": "a valid bearer token is required"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b'Bearer realm="key4u-mcp"'),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class Health:
    """``GET /healthz``: is this replica up."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") == "/healthz":
            body = b'{"status":"ok"}'
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def build_http_app(settings: Settings, host: str, *, stateless: bool, json_response: bool = False) -> Any:
    token = settings.mcp_token.get_secret_value() if settings.mcp_token else None
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"refusing to serve on {host} without a token: set KEY4U_MCP_TOKEN (clients then send "
            "Authorization: Bearer <token>), or bind to 127.0.0.1"
        )
    hosts = [*LOOPBACK_HOSTS, *_split(settings.mcp_allowed_hosts)]
    if not is_loopback(host) and host not in ("0.0.0.0", "::"):
        hosts += [host, f"{host}:*"]
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=[*LOOPBACK_ORIGINS, *_split(settings.mcp_allowed_origins)],
    )
    server = build_server(settings)
    app: ASGIApp = server.streamable_http_app(
        streamable_http_path="/mcp",
        stateless_http=stateless,
        json_response=json_response,
        transport_security=security,
        max_request_body_size=settings.mcp_max_request_bytes,
        host=host,
    )
    if token:
        app = BearerAuth(app, token)
    return Health(app)


async def serve_http(settings: Settings, host: str, port: int, *, stateless: bool, json_response: bool) -> None:
    app = build_http_app(settings, host, stateless=stateless, json_response=json_response)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    logger.info(
        "serving MCP over Streamable HTTP at http://%s:%d/mcp (%s)",
        host,
        port,
        "stateless" if stateless else "stateful",
    )
    await uvicorn.Server(config).serve()
