"""Serving MCP over Streamable HTTP (``/mcp``), for a shared or remote bridge.

* Loopback by default. Binding elsewhere requires ``KEY4U_MCP_TOKEN``: every request must then
  carry ``Authorization: Bearer <token>``, compared in constant time.
* Host and Origin headers are checked (DNS-rebinding protection): loopback names, plus
  ``KEY4U_MCP_ALLOWED_HOSTS`` / ``KEY4U_MCP_ALLOWED_ORIGINS``.
* Request bodies are capped (``KEY4U_MCP_MAX_REQUEST_BYTES``).
* Connections are bounded (``GuardedH11Protocol``): a request head must arrive within
  ``KEY4U_MCP_HEADER_TIMEOUT`` seconds, idle keep-alive connections close after
  ``KEY4U_MCP_KEEP_ALIVE_TIMEOUT``, and at most ``KEY4U_MCP_MAX_CONNECTIONS`` are open.
* ``--stateless``: no MCP session; any replica can answer any request. Conversations then live
  in the shared database (``KEY4U_DB_PATH``) or at the gateway (``previous_response_id``).
* ``GET /healthz`` answers without a token, for load balancers: 200 while MCP requests can be
  served, 503 once the server's lifespan has died, after which the process exits with status 1.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import pydantic_core
import uvicorn
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import INTERNAL_ERROR, ErrorData, JSONRPCError, jsonrpc_message_adapter
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle
from uvicorn.server import ServerState

from server.config import Settings
from server.errors import ConfigError
from server.surface.app import build_server
from server.transports.stdio import install_rejection_log, rejection_of
from server.upstream.jsonvalues import writable_escapes_bytes

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ["127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]"]
LOOPBACK_ORIGINS = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]

#: The exit status of ``serve_http`` once the lifespan has died, for a supervisor to restart on.
LIFESPAN_FAILED_EXIT = 1

_REFUSAL_BODY = b"Service Unavailable: too many connections\n"
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n\r\n" + _REFUSAL_BODY
)
#: Seconds between two warnings that the connection limit was reached.
_LIMIT_WARNING_INTERVAL = 10.0
#: Files the process needs besides its HTTP connections (the database, downstream servers, the gateway).
_FD_RESERVE = 128


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the connection limits uvicorn 0.55 lacks.

    uvicorn arms no timer until a first response has been sent, and any byte cancels its keep-alive
    timer: a client that connects and sends nothing, or half a request head, or a body that never
    ends, holds its socket for ever. ``limit_concurrency`` does not help: it is checked only once a
    complete head has arrived, and it counts the stalled sockets, so they lock real clients out.
    This subclass adds, per connection:

    * a deadline for the request head: ``header_timeout`` seconds from connecting, or from the first
      byte of the next request on a keep-alive connection (uvicorn's ``timeout_keep_alive`` still
      closes a connection that stays silent after a response);
    * a stall timeout while the body arrives: no byte for ``header_timeout`` seconds (while the app
      is ready for more) closes it;
    * a cap of ``max_connections``: a new connection beyond it closes the connection that has been
      idle (no request in flight) the longest, so stalled sockets cannot crowd out a real client;
      when every connection has a request in flight, the new one gets 503 and is closed at once.

    ``guarded_protocol(settings)`` makes the subclass with the configured values.
    """

    header_timeout: float = 10.0
    max_connections: int = 512
    _last_limit_warning: float | None = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        #: Loop time since which no request has been in flight, or None while one is.
        self.waiting_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._phase: str | None = None  # what the timer waits for: "head" or "body"

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.max_connections and not self._make_room():
            self._warn_limit("refusing new connections with 503: every connection has a request in flight")
            transport.write(_REFUSAL)
            transport.close()
            return
        self.waiting_since = self.loop.time()
        self._arm("head")

    def data_received(self, data: bytes) -> None:
        if self._timer is None and self._idle():
            self._arm("head")  # the first byte of the next request head starts its deadline
        super().data_received(data)
        self._update(data_arrived=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._update()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.waiting_since = None
        super().connection_lost(exc)

    def close_idle(self) -> None:
        """Close this connection, which has no request in flight."""
        self._disarm()
        self.waiting_since = None
        if not self.transport.is_closing():
            self.transport.close()

    def _cycle(self) -> RequestResponseCycle | None:
        # uvicorn annotates ``cycle`` as never None, but it is None until the first request head.
        return cast("RequestResponseCycle | None", self.cycle)

    def _idle(self) -> bool:
        cycle = self._cycle()
        return cycle is None or cycle.response_complete

    def _update(self, *, data_arrived: bool = False) -> None:
        cycle = self._cycle()
        if cycle is None or cycle.response_complete:
            if self.waiting_since is None:
                self.waiting_since = self.loop.time()
            if self._phase == "body":
                self._disarm()
            return
        self.waiting_since = None
        if cycle.more_body:
            if self._phase != "body" or data_arrived:
                self._arm("body")
        else:
            self._disarm()

    def _arm(self, phase: str) -> None:
        self._disarm()
        self._phase = phase
        self._timer = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._phase = None

    def _expired(self) -> None:
        phase, self._timer, self._phase = self._phase, None, None
        if self.transport.is_closing():
            return
        cycle = self._cycle()
        if phase == "head" and (cycle is None or cycle.response_complete):
            logger.debug("closing a connection that sent no complete request head in %g s", self.header_timeout)
            self.close_idle()
        elif phase == "body" and cycle is not None and not cycle.response_complete and cycle.more_body:
            if self.flow.read_paused:
                self._arm("body")  # the app is not reading yet: the wait is ours, not the client's
                return
            logger.info("closing a connection whose request body stalled for %g s", self.header_timeout)
            self.transport.close()

    def _make_room(self) -> bool:
        """Close the longest-idle other connection; False when every other one has a request in flight."""
        others = [c for c in _guarded(self.connections) if c is not self and not c.transport.is_closing()]
        if len(others) < self.max_connections:
            return True  # the connections over the cap are already closing
        idle = [c for c in others if c.waiting_since is not None]
        if not idle:
            return False
        self._warn_limit("closing the longest-idle connections to make room")
        min(idle, key=lambda c: c.waiting_since or 0.0).close_idle()
        return True

    def _warn_limit(self, action: str) -> None:
        now = self.loop.time()
        last = GuardedH11Protocol._last_limit_warning
        if last is None or now - last >= _LIMIT_WARNING_INTERVAL:
            GuardedH11Protocol._last_limit_warning = now
            logger.warning("%d HTTP connections open (KEY4U_MCP_MAX_CONNECTIONS): %s", self.max_connections, action)


def _guarded(connections: Iterable[object]) -> Iterator[GuardedH11Protocol]:
    return (c for c in connections if isinstance(c, GuardedH11Protocol))


def guarded_protocol(settings: Settings) -> type[GuardedH11Protocol]:
    """``GuardedH11Protocol`` with the header timeout and connection cap of ``settings``, for uvicorn's ``http``."""

    class Configured(GuardedH11Protocol):
        header_timeout = settings.mcp_header_timeout
        max_connections = settings.mcp_max_connections

    return Configured


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


class InvalidMessageReplies:
    """Gives the error reply to a POST whose body is not a valid JSON-RPC message the request's id.

    mcp 2.3.0's Streamable HTTP transport (``StreamableHTTPServerTransport._handle_post_request``)
    answers such a body with 400 and ``"id": null``, its message the whole pydantic error (which
    echoes the input), and logs nothing; it has no hook for this. So the body is kept while the
    request runs, and a 400 with a null id to a body that fails the SDK's own validation is rewritten:
    the same status, the id read from the body where there is one (``rejection_of``, shared with the
    stdio transport), a one-line reason, and a log line. Any other response passes untouched.
    """

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self._max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        request: list[bytes] = []
        size = 0
        keep = True
        held: Message | None = None
        response: list[bytes] = []

        async def receive_and_keep() -> Message:
            nonlocal size, keep
            message = await receive()
            if keep and message["type"] == "http.request":
                chunk: bytes = message.get("body", b"")
                size += len(chunk)
                if size > self._max_body:
                    keep = False  # the SDK answers 413
                    request.clear()
                else:
                    request.append(chunk)
            return message

        retry: list[bytes] = []  # the body made writable, to serve in place of a refused one

        async def send_or_rewrite(message: Message) -> None:
            nonlocal held, keep
            if message["type"] == "http.response.start":
                if message.get("status") == 400 and keep:
                    held = message
                    return
                keep = False
                request.clear()
            elif held is not None and message["type"] == "http.response.body":
                response.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                start, held = held, None
                body = b"".join(request)
                if writable := _writable_body(body):
                    retry.append(writable)
                    return
                await self._answer(start, b"".join(response), body, send)
                return
            await send(message)

        await self.app(scope, receive_and_keep, send_or_rewrite)
        if retry:
            # Refused before anything ran (the SDK's parse of the body): served again, as the stdio
            # transport serves the same line, with its lone surrogate escapes written as U+FFFD.
            await self.app(scope, _replay(retry[0], receive), send)

    async def _answer(self, start: Message, body: bytes, request: bytes, send: Send) -> None:
        rewritten = _rewrite(body, request)
        if rewritten is not None:
            body = rewritten
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            start = {**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        await send(start)
        await send({"type": "http.response.body", "body": body})


def _writable_body(body: bytes) -> bytes | None:
    """``body`` made writable, if pydantic refused it for lone surrogate escapes alone; else None."""
    writable = writable_escapes_bytes(body)
    if writable is body:  # none: refused for another reason
        return None
    try:
        pydantic_core.from_json(writable)
    except ValueError:
        return None
    return writable


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` as an app sees it with ``body`` for the request's body (which was read already)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _rewrite(response: bytes, request: bytes) -> bytes | None:
    """The reply to ``request`` in place of the SDK's null-id 400 ``response``; None to keep the SDK's."""
    try:
        sent: object = json.loads(response)
    except ValueError:
        return None
    if not isinstance(sent, dict):
        return None
    error_reply = cast("dict[str, object]", sent)
    if error_reply.get("id") is not None or "error" not in error_reply:
        return None
    try:
        jsonrpc_message_adapter.validate_json(request, by_name=False)
    except ValidationError:
        pass
    else:
        return None  # a valid message refused for another reason (session, headers): the SDK's answer stands
    rejection = rejection_of(request)
    logger.warning("rejected an invalid JSON-RPC message over HTTP (%s)", rejection)
    replies = rejection.replies() or [JSONRPCError(jsonrpc="2.0", id=None, error=rejection.error)]
    dumped = [r.model_dump(mode="json", by_alias=True, exclude_unset=True) for r in replies]
    return json.dumps(dumped[0] if len(dumped) == 1 else dumped, separators=(",", ":")).encode()


class Health:
    """``GET /healthz``: 200 while this replica can serve MCP requests, 503 when it cannot.

    It can while the app's lifespan runs: that is what holds the SDK session manager's task group
    and the bridge's (``surface.app``), without which every MCP request fails. uvicorn logs a
    lifespan that ends on its own (a task in one of those groups raised) and keeps serving, so this
    watches the lifespan itself: from then on ``/healthz`` and every other request answer 503, and
    the callbacks given to ``when_lifespan_fails`` run (``serve_http`` stops the server, and the
    process exits with status 1 for its supervisor to restart it).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        #: True from the lifespan's start-up until it ends or shutdown begins.
        self.serving = False
        #: True once the lifespan has ended without being asked to.
        self.lifespan_failed = False
        self._on_failure: list[Callable[[], None]] = []

    def when_lifespan_fails(self, callback: Callable[[], None]) -> None:
        self._on_failure.append(callback)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] == "http" and scope.get("path") == "/healthz":
            if self.serving:
                await _send_json(send, 200, b'{"status":"ok"}')
            else:
                await _send_json(send, 503, b'{"status":"unavailable"}')
            return
        if scope["type"] == "http" and self.lifespan_failed:
            error = ErrorData(code=INTERNAL_ERROR, message="the server can no longer serve MCP requests")
            body = JSONRPCError(jsonrpc="2.0", id=None, error=error).model_dump_json(by_alias=True)
            await _send_json(send, 503, body.encode())
            return
        await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        shutting_down = False

        async def receive_and_watch() -> Message:
            nonlocal shutting_down
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                shutting_down = True
                self.serving = False
            return message

        async def send_and_watch(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self.serving = True
            await send(message)

        try:
            await self.app(scope, receive_and_watch, send_and_watch)
        except BaseException as exc:
            if self.serving and not shutting_down:
                self._failed(exc)
            raise
        if self.serving and not shutting_down:
            self._failed(None)

    def _failed(self, cause: BaseException | None) -> None:
        self.serving = False
        self.lifespan_failed = True
        logger.error(
            "the server's lifespan ended while serving (%s): MCP requests can no longer be served, stopping",
            _summary(cause) if cause is not None else "it returned",
        )
        for callback in self._on_failure:
            callback()


def _summary(exc: BaseException) -> str:
    """``Type: message`` of ``exc``, or of the exceptions an exception group holds."""
    inner: object = getattr(exc, "exceptions", None)  # an exception group's members (no BaseExceptionGroup in 3.10)
    if isinstance(inner, tuple):
        return "; ".join(_summary(e) for e in cast("tuple[object, ...]", inner) if isinstance(e, BaseException))
    return f"{type(exc).__name__}: {exc}"[:500]


async def _send_json(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def build_http_app(settings: Settings, host: str, *, stateless: bool, json_response: bool = False) -> Health:
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
    install_rejection_log(server)
    app: ASGIApp = server.streamable_http_app(
        streamable_http_path="/mcp",
        stateless_http=stateless,
        json_response=json_response,
        transport_security=security,
        max_request_body_size=settings.mcp_max_request_bytes,
        host=host,
    )
    app = InvalidMessageReplies(app, settings.mcp_max_request_bytes)
    if token:
        app = BearerAuth(app, token)
    return Health(app)


def _check_file_limit(max_connections: int) -> None:
    """Warn when the process may run out of file descriptors before it reaches ``max_connections``."""
    if sys.platform == "win32":
        return
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < max_connections + _FD_RESERVE:
        logger.warning(
            "KEY4U_MCP_MAX_CONNECTIONS is %d but this process may open only %d files (ulimit -n): stalled clients "
            "could exhaust them first; raise the limit or lower KEY4U_MCP_MAX_CONNECTIONS",
            max_connections,
            soft,
        )


async def serve_http(
    settings: Settings,
    host: str,
    port: int,
    *,
    stateless: bool,
    json_response: bool,
    sock: socket.socket | None = None,
) -> None:
    """Serve until stopped, on ``sock`` if given (a listening socket shared by worker processes), else on
    ``host``:``port``; raises ``SystemExit(LIFESPAN_FAILED_EXIT)`` if the lifespan dies first."""
    app = build_http_app(settings, host, stateless=stateless, json_response=json_response)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=5,
        http=guarded_protocol(settings),
        ws="none",
        timeout_keep_alive=settings.mcp_keep_alive_timeout,
    )
    server = uvicorn.Server(config)

    def stop() -> None:
        server.should_exit = True

    app.when_lifespan_fails(stop)
    _check_file_limit(settings.mcp_max_connections)
    logger.info(
        "serving MCP over Streamable HTTP at http://%s:%d/mcp (%s)",
        host,
        sock.getsockname()[1] if sock is not None else port,
        "stateless" if stateless else "stateful",
    )
    await server.serve(sockets=[sock] if sock is not None else None)
    if app.lifespan_failed:
        logger.error("exiting with status %d so that a supervisor restarts the server", LIFESPAN_FAILED_EXIT)
        raise SystemExit(LIFESPAN_FAILED_EXIT)
