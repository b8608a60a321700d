"""Serving MCP over stdio so that both stdin EOF and a signal end the server promptly.

The SDK reads stdin on an anyio worker thread that cannot be abandoned: on SIGTERM with
the host's pipe still open, shutdown would wait for a line that never comes. Here a
daemon thread reads the wire instead, and fd 0 is pointed at the null device while we
serve, as the SDK does, so that child processes cannot eat protocol input.

A line that is not a valid JSON-RPC message gets an error reply with its id where the id can
be read (``ScreenedLines``), and every request the SDK answers with a JSON-RPC error is logged
(``RejectionLog``). ``rejection_of`` and ``install_rejection_log`` serve the HTTP transport too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

if sys.platform != "win32":
    import fcntl

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import MCPError
from mcp.server import MCPServer
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp.types import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    PARSE_ERROR,
    ErrorData,
    JSONRPCError,
    RequestId,
    jsonrpc_message_adapter,
)
from pydantic import ValidationError

logger = logging.getLogger(__name__)

#: Largest message accepted on stdin; a longer line is read past and dropped, never held in memory.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class StdinLines:
    """Async iterator over the lines of a binary stream, read by a daemon thread."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._send: MemoryObjectSendStream[str]
        self._receive: MemoryObjectReceiveStream[str]
        self._send, self._receive = anyio.create_memory_object_stream[str](0)
        self._thread: threading.Thread | None = None

    def _pump(self, token: anyio.lowlevel.EventLoopToken) -> None:
        try:
            while raw := self._source.readline(MAX_MESSAGE_BYTES + 1):
                if len(raw) > MAX_MESSAGE_BYTES and not raw.endswith(b"\n"):
                    self._discard_rest()
                    continue
                anyio.from_thread.run(self._send.send, raw.decode("utf-8", errors="replace"), token=token)
        except (RuntimeError, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return  # the loop is gone or the reader stopped listening: nothing left to feed
        finally:
            with contextlib.suppress(RuntimeError):
                anyio.from_thread.run_sync(self._send.close, token=token)

    def _discard_rest(self) -> None:
        size = MAX_MESSAGE_BYTES
        while chunk := self._source.readline(1 << 20):
            size += len(chunk)
            if chunk.endswith(b"\n"):
                break
        logger.warning("discarded a message of %d bytes: over the %d-byte limit", size, MAX_MESSAGE_BYTES)

    def __aiter__(self) -> StdinLines:
        return self

    async def __anext__(self) -> str:
        if self._thread is None:
            token = anyio.lowlevel.current_token()
            self._thread = threading.Thread(target=self._pump, args=(token,), name="mcp-stdin", daemon=True)
            self._thread.start()
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            self._receive.close()
            raise StopAsyncIteration from None


def _claim_stdin() -> BinaryIO:
    """Return a private handle on the wire's stdin and point fd 0 at the null device."""
    try:
        private = os.dup(0)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    except OSError:
        return sys.stdin.buffer
    return os.fdopen(private, "rb", closefd=False)


class StdoutWriter:
    """Writes protocol messages to a non-blocking pipe from the event loop itself.

    The SDK's writer hops to a worker thread twice per message (write, flush); a message to a
    pipe with room in it is written at once here, and a full pipe is waited on without blocking.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        os.set_blocking(fd, False)

    async def write(self, text: str) -> None:
        view = memoryview(text.encode("utf-8"))
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                await anyio.wait_writable(self._fd)

    async def flush(self) -> None:
        return None


def _claim_stdout() -> StdoutWriter | None:
    """A writer on a private copy of the wire's stdout, with fd 1 pointed at stderr; None where
    that cannot be done (Windows, or stdout is not a pipe), leaving the SDK's writer in charge."""
    if sys.platform == "win32":
        return None
    try:
        if not stat.S_ISFIFO(os.fstat(1).st_mode):
            return None
        private = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
        os.dup2(2, 1)
    except OSError:
        return None
    return StdoutWriter(private)


@dataclass(frozen=True)
class Rejection:
    """Why a message is not a valid JSON-RPC message, and the ids (of requests) that can be read from it."""

    error: ErrorData
    ids: tuple[RequestId, ...] = ()

    def replies(self) -> list[JSONRPCError]:
        """One error reply per readable request id; none when no id can be read (nobody waits for one)."""
        return [JSONRPCError(jsonrpc="2.0", id=i, error=self.error) for i in self.ids]

    def __str__(self) -> str:
        ids = ", ".join(f"id {i!r}" for i in self.ids) or "no readable id"
        return f"{ids}: {self.error.message}"


def _readable_id(value: object) -> RequestId | None:
    if isinstance(value, bool):
        return None
    return value if isinstance(value, (int, str)) else None


def _problem(message: Mapping[str, object]) -> ErrorData:
    """What is wrong with ``message``, an object the SDK's JSON-RPC validation refused."""
    if message.get("jsonrpc") != "2.0":
        return ErrorData(code=INVALID_REQUEST, message='Invalid request: jsonrpc must be "2.0"')
    if "id" in message and _readable_id(message["id"]) is None:
        return ErrorData(code=INVALID_REQUEST, message="Invalid request: id must be a string or an integer")
    if "result" in message or "error" in message:
        return ErrorData(code=INVALID_REQUEST, message="Invalid response")
    if not isinstance(message.get("method"), str):
        return ErrorData(code=INVALID_REQUEST, message="Invalid request: method must be a string")
    if message.get("params") is not None and not isinstance(message["params"], dict):
        return ErrorData(code=INVALID_PARAMS, message="Invalid params: params must be an object")
    return ErrorData(code=INVALID_REQUEST, message="Invalid request")


def _request_id(message: Mapping[str, object]) -> RequestId | None:
    """The id of ``message`` if it can be answered: the id is readable and ``message`` is not a response."""
    if "result" in message or "error" in message:
        return None
    return _readable_id(message.get("id"))


def rejection_of(raw: str | bytes) -> Rejection:
    """Why the SDK refused the message ``raw`` (it failed ``jsonrpc_message_adapter``), and whom to tell."""
    try:
        value: object = json.loads(raw)
    except (ValueError, RecursionError):
        return Rejection(ErrorData(code=PARSE_ERROR, message="Parse error: not JSON"))
    if isinstance(value, list):
        error = ErrorData(code=INVALID_REQUEST, message="Invalid request: JSON-RPC batches are not supported")
        items = [cast("dict[str, object]", item) for item in cast("list[object]", value) if isinstance(item, dict)]
        return Rejection(error, tuple(i for i in map(_request_id, items) if i is not None))
    if not isinstance(value, dict):
        return Rejection(ErrorData(code=INVALID_REQUEST, message="Invalid request: not a JSON object"))
    message = cast("dict[str, object]", value)
    rid = _request_id(message)
    return Rejection(_problem(message), () if rid is None else (rid,))


class ScreenedLines:
    """The stdin lines for the SDK's stdio reader, minus those that are not valid JSON-RPC messages.

    mcp 2.3.0's ``stdio_server()`` turns such a line into an exception on its read stream, which the
    dispatcher logs at DEBUG and drops (``on_stream_exception`` would see only the exception, not the
    line, and the server loop offers no way to set it): the client never hears back and waits for
    ever. Here each line is validated first with the SDK's own adapter (a few microseconds); one that
    fails is logged and answered with an error carrying its id, when the id can be read, and is not
    passed on. Blank lines are skipped. The one workaround for this on stdio; re-check on upgrades.
    """

    def __init__(self, lines: AsyncIterator[str]) -> None:
        self._lines = lines
        self._send: Callable[[SessionMessage], Awaitable[None]] | None = None
        self._ready = anyio.Event()

    def reply_with(self, send: Callable[[SessionMessage], Awaitable[None]]) -> None:
        """Where replies go: the write stream ``stdio_server()`` yields."""
        self._send = send
        self._ready.set()

    def __aiter__(self) -> ScreenedLines:
        return self

    async def __anext__(self) -> str:
        while True:
            line = await anext(self._lines)
            if not line.strip():
                continue
            try:
                jsonrpc_message_adapter.validate_json(line, by_name=False)
            except ValidationError:
                await self._reject(line)
                continue
            return line

    async def _reject(self, line: str) -> None:
        rejection = rejection_of(line)
        logger.warning("rejected an invalid JSON-RPC message on stdin (%s)", rejection)
        replies = rejection.replies()
        if not replies:
            return
        await self._ready.wait()
        assert self._send is not None
        try:
            for reply in replies:
                await self._send(SessionMessage(reply))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return  # the server is shutting down: nobody to answer


class RejectionLog:
    """Server middleware (the SDK's public, provisional hook around every request) that logs each request
    answered with a JSON-RPC error: unknown methods, invalid params and errors handlers raise.

    mcp 2.3.0 answers these without a log line at INFO or above.
    """

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        try:
            return await call_next(ctx)
        except MCPError as exc:
            logger.warning("%s with error %d: %s", _answered(ctx), exc.code, exc.message)
            raise
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in exc.errors(include_input=False)
            )
            logger.warning("%s with invalid params: %s", _answered(ctx), problems)
            raise


def _answered(ctx: ServerRequestContext[Any, Any]) -> str:
    if ctx.request_id is None:
        return f"dropped notification {ctx.method}"
    return f"answered request {ctx.request_id!r} ({ctx.method})"


def install_rejection_log(server: MCPServer[Any]) -> None:
    """Put ``RejectionLog`` first (outermost) in ``server``'s middleware, once."""
    if not any(isinstance(m, RejectionLog) for m in server.middleware):
        server.middleware.insert(0, RejectionLog())


async def serve_stdio(server: MCPServer[Any]) -> None:
    """Serve ``server`` on this process's stdin/stdout until EOF or cancellation."""
    install_rejection_log(server)
    lines = ScreenedLines(StdinLines(_claim_stdin()))
    writer = _claim_stdout()
    # stdio_server() annotates stdin/stdout as anyio.AsyncFile[str] but only iterates the one
    # and calls write()/flush() on the other, which is all ScreenedLines and StdoutWriter offer.
    async with stdio_server(
        stdin=lines,  # pyright: ignore[reportArgumentType] -- duck-typed AsyncFile, see above
        stdout=writer,  # pyright: ignore[reportArgumentType] -- duck-typed AsyncFile, see above
    ) as (read_stream, write_stream):
        lines.reply_with(write_stream.send)
        # The body of MCPServer.run_stdio_async(), which takes no streams. mcp 2.3.0
        # (importlib.metadata.version("mcp")) has no public hook to run an MCPServer on our own
        # streams: no stdin/stdout parameters on run_stdio_async() and no public accessor for the
        # low-level Server (the SDK's own in-memory transport reads ``_lowlevel_server`` too, with a
        # TODO to make it public). Re-check on SDK upgrades.
        lowlevel = server._lowlevel_server  # noqa: SLF001  # pyright: ignore[reportPrivateUsage]
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
