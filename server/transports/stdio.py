"""Serving MCP over stdio: each message parsed once, no thread hop on a pipe, prompt shutdown.

The SDK's ``stdio_server()`` reads stdin on an anyio worker thread that cannot be abandoned (on
SIGTERM with the host's pipe still open, shutdown would wait for a line that never comes), hops
to a worker thread twice per message written, and validates every line as it reads it. Here the
wire is served by ``stdio_wire()`` instead: a pipe or socket is read and written from the event
loop itself (non-blocking, ``StdinPipe`` and ``StdoutWriter``); anything else (a terminal, a file)
is read by a daemon thread (``StdinLines``) and written from a worker thread. fd 0 is pointed at
the null device and fd 1 at stderr while we serve, as the SDK does, so that child processes can
neither eat protocol input nor write onto the wire.

A line that is not a valid JSON-RPC message gets an error reply with its id where the id can
be read (``parse_message``), and every request the SDK answers with a JSON-RPC error is logged
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
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

if sys.platform != "win32":
    import fcntl

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import pydantic_core
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import MCPError
from mcp.server import MCPServer
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.message import SessionMessage
from mcp.types import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    PARSE_ERROR,
    ErrorData,
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
    RequestId,
    jsonrpc_message_adapter,
)
from pydantic import ValidationError

from server.upstream.jsonvalues import writable_escapes

logger = logging.getLogger(__name__)

#: Largest message accepted on stdin; a longer line is read past and dropped, never held in memory.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: How long, at exit, the replies already made may take to reach a host that stopped reading them.
DRAIN_SECONDS = 5.0
#: How long, once stdin has ended, the requests already read may take to be answered before the
#: server stops (a script that writes its requests and closes its end still gets its replies).
EOF_GRACE_SECONDS = 5.0


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


class NonBlockingEnd:
    """A pipe or socket end in non-blocking mode, for the event loop to wait on, until ``release``."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._was_blocking = os.get_blocking(fd)
        os.set_blocking(fd, False)

    def release(self) -> None:
        """Give the pipe back as it came: its mode is shared with every process holding the same end."""
        with contextlib.suppress(OSError):
            os.set_blocking(self._fd, self._was_blocking)


class StdinPipe(NonBlockingEnd):
    """Async iterator over the lines of a pipe or socket, read without blocking from the event loop.

    No thread: a line that arrives is handed on in the same loop iteration. Reads up to 1 MiB at a
    time; a line longer than ``MAX_MESSAGE_BYTES`` is read past and dropped, never held whole.
    """

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self._buffer = bytearray()
        self._start = 0  # where the part of the buffer not yet handed on begins
        self._scanned = 0  # the buffer holds no newline from ``_start`` up to here
        self._dropping = 0  # bytes of an oversized line dropped so far (0: not dropping)
        self._eof = False

    def __aiter__(self) -> StdinPipe:
        return self

    async def __anext__(self) -> str:
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end >= 0:
                line = bytes(self._buffer[self._start : end + 1])
                self._start = self._scanned = end + 1
                if self._start * 2 > len(self._buffer):  # compact now and then, never once per line
                    del self._buffer[: self._start]
                    self._start = self._scanned = 0
                if self._dropping or len(line) > MAX_MESSAGE_BYTES + 1:
                    self._dropped(self._dropping + len(line))
                    self._dropping = 0
                    continue
                return line.decode("utf-8", errors="replace")
            self._scanned = len(self._buffer)
            if self._dropping or self._scanned - self._start > MAX_MESSAGE_BYTES:
                self._dropping += self._scanned - self._start
                self._buffer.clear()
                self._start = self._scanned = 0
            if self._eof:
                rest = bytes(self._buffer[self._start :])
                self._buffer.clear()
                self._start = self._scanned = 0
                if self._dropping:
                    self._dropped(self._dropping + len(rest))
                    self._dropping = 0
                elif rest:
                    return rest.decode("utf-8", errors="replace")
                raise StopAsyncIteration
            await self._fill()

    async def _fill(self) -> None:
        try:
            chunk = os.read(self._fd, 1 << 20)
        except BlockingIOError:
            await anyio.wait_readable(self._fd)
            return
        except OSError:
            chunk = b""  # the host's end is gone: as good as EOF
        if chunk:
            self._buffer += chunk
        else:
            self._eof = True

    @staticmethod
    def _dropped(size: int) -> None:
        logger.warning("discarded a message of %d bytes: over the %d-byte limit", size, MAX_MESSAGE_BYTES)


def _is_pipe(fd: int) -> bool:
    """Whether ``fd`` is a pipe or a socket: what the event loop can wait on, and no terminal whose
    blocking mode a shell shares."""
    if sys.platform == "win32":
        return False
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _claim_stdin() -> AsyncIterator[str]:
    """The lines of a private handle on the wire's stdin, with fd 0 pointed at the null device."""
    try:
        private = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3) if sys.platform != "win32" else os.dup(0)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    except OSError:
        return StdinLines(sys.stdin.buffer)
    if _is_pipe(private):
        return StdinPipe(private)
    return StdinLines(os.fdopen(private, "rb", closefd=False))


class StdoutWriter(NonBlockingEnd):
    """Writes protocol messages to a non-blocking pipe or socket from the event loop itself.

    A message to a pipe with room in it is written at once, and a full pipe is waited on without
    blocking.
    """

    async def write(self, text: str) -> None:
        view = memoryview(text.encode("utf-8"))
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                await anyio.wait_writable(self._fd)


class BlockingWriter:
    """Writes protocol messages to a descriptor the event loop cannot wait on (a terminal, a file),
    from a worker thread, one message at a time."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = anyio.Lock()

    async def write(self, text: str) -> None:
        async with self._lock:
            await anyio.to_thread.run_sync(self._write_all, text.encode("utf-8"))

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]


def _claim_stdout() -> StdoutWriter | BlockingWriter:
    """A writer on a private copy of the wire's stdout, with fd 1 pointed at stderr: written from
    the event loop where it is a pipe or a socket, else from a worker thread."""
    try:
        private = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3) if sys.platform != "win32" else os.dup(1)
    except OSError:
        return BlockingWriter(1)
    try:
        os.dup2(2, 1)
    except OSError:
        logger.debug("could not point fd 1 at stderr; stray output may reach the wire", exc_info=True)
    # Non-blocking mode belongs to the open pipe, not to a descriptor: where stderr is that same pipe
    # (``2>&1``), it would make the log's writes fail with EAGAIN once the pipe is full.
    return StdoutWriter(private) if _is_pipe(private) and not _same_file(private, 2) else BlockingWriter(private)


def _same_file(fd: int, other: int) -> bool:
    try:
        return os.path.sameopenfile(fd, other)
    except OSError:
        return False


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


def parse_message(line: str) -> JSONRPCMessage | Rejection:
    """The JSON-RPC message on ``line``, parsed once; or why it is not one, and whom to tell.

    Parsed as the SDK's own reader does (pydantic's JSON parser, then the SDK's message adapter),
    but in two steps: the adapter checks the parsed object without copying the params, where its
    ``validate_json`` builds them anew for each member of the message union (14 ms against 4 for
    a 400 KB call). Without pydantic's string cache: a large call's strings are nearly all distinct, and
    caching them made its parse a quarter slower (6.7 ms against 5.3 for 1,000 functions), for nothing
    on small messages.
    """
    try:
        value = pydantic_core.from_json(line, cache_strings=False)
    except ValueError:
        # Valid JSON pydantic refuses: a lone surrogate escape, which a host cutting a string mid-emoji
        # sends. Its text is made writable, as the bridge does with every string it is handed.
        writable = writable_escapes(line)
        if writable is line:  # none: refused for another reason
            return rejection_of(line)
        try:
            value = pydantic_core.from_json(writable, cache_strings=False)
        except ValueError:
            return rejection_of(line)
    try:
        return jsonrpc_message_adapter.validate_python(value, by_name=False)
    except ValidationError:
        return rejection_of(line)


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


class Unanswered:
    """The requests read from the wire whose reply has not been written yet."""

    def __init__(self) -> None:
        self._ids: set[RequestId] = set()
        self._none = anyio.Event()
        self._none.set()

    def read(self, message: JSONRPCMessage) -> None:
        if isinstance(message, JSONRPCRequest):
            if not self._ids:
                self._none = anyio.Event()
            self._ids.add(message.id)
        elif isinstance(message, JSONRPCNotification) and message.method == "notifications/cancelled":
            params: object = message.params
            if isinstance(params, dict):  # a cancelled request is not answered
                self._answered(cast("dict[str, object]", params).get("requestId"))

    def written(self, message: JSONRPCMessage) -> None:
        if isinstance(message, JSONRPCResponse | JSONRPCError):
            self._answered(message.id)

    def _answered(self, rid: object) -> None:
        if isinstance(rid, int | str) and rid in self._ids:  # a hostile requestId may be any JSON
            self._ids.discard(rid)
            if not self._ids:
                self._none.set()

    async def all_answered(self) -> None:
        await self._none.wait()


Wire = tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]


@contextlib.asynccontextmanager
async def stdio_wire(lines: AsyncIterator[str], writer: StdoutWriter | BlockingWriter) -> AsyncGenerator[Wire, None]:
    """The read and write streams of a server on ``lines`` (the wire's input) and ``writer``.

    What ``mcp.server.stdio.stdio_server()`` yields, with two differences. Each line is parsed
    once. A line that is not a valid JSON-RPC message is logged and answered with an error carrying
    its id, when the id can be read, and is not passed on: mcp 2.3.0's reader turns it into an
    exception the dispatcher logs at DEBUG and drops, and the client never hears back. Blank lines
    are skipped. When the input ends, the server is told only once the requests read so far are
    answered (for up to ``EOF_GRACE_SECONDS``): mcp 2.3.0 cancels every handler still running at
    end of input, even one whose reply is being written, so ``printf '...' | key4u-mcp`` would
    get no reply to its last requests. On exit, what was sent is still written out (for up to
    ``DRAIN_SECONDS`` to a host that stopped reading). Re-check on SDK upgrades.
    """
    read_send, read_receive = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_send, write_receive = anyio.create_memory_object_stream[SessionMessage](0)
    reading, writing = anyio.CancelScope(), anyio.CancelScope()
    unanswered = Unanswered()

    async def read() -> None:
        with reading:
            async with read_send:
                async for line in lines:
                    if not line.strip():
                        continue
                    message = parse_message(line)
                    if not isinstance(message, Rejection):
                        unanswered.read(message)
                        await read_send.send(SessionMessage(message))
                        continue
                    logger.warning("rejected an invalid JSON-RPC message on stdin (%s)", message)
                    with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                        for reply in message.replies():
                            await write_send.send(SessionMessage(reply))
                with anyio.move_on_after(EOF_GRACE_SECONDS):  # the input has ended
                    await unanswered.all_answered()

    async def write() -> None:
        with writing:
            async with write_receive:
                async for session_message in write_receive:
                    line = session_message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await writer.write(line + "\n")
                    unanswered.written(session_message.message)

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        tg.start_soon(write)
        try:
            yield read_receive, write_send
        finally:
            reading.cancel()
            write_send.close()
            writing.deadline = anyio.current_time() + DRAIN_SECONDS


async def serve_stdio(server: MCPServer[Any]) -> None:
    """Serve ``server`` on this process's stdin/stdout until EOF or cancellation."""
    install_rejection_log(server)
    lines, writer = _claim_stdin(), _claim_stdout()
    try:
        await _serve_on(server, lines, writer)
    finally:
        for end in (lines, writer):
            if isinstance(end, NonBlockingEnd):
                end.release()


async def _serve_on(server: MCPServer[Any], lines: AsyncIterator[str], writer: StdoutWriter | BlockingWriter) -> None:
    async with stdio_wire(lines, writer) as (read_stream, write_stream):
        # The body of MCPServer.run_stdio_async(), which takes no streams. mcp 2.3.0
        # (importlib.metadata.version("mcp")) has no public hook to run an MCPServer on our own
        # streams: no stdin/stdout parameters on run_stdio_async() and no public accessor for the
        # low-level Server (the SDK's own in-memory transport reads ``_lowlevel_server`` too, with a
        # TODO to make it public). Re-check on SDK upgrades.
        lowlevel = server._lowlevel_server  # noqa: SLF001  # pyright: ignore[reportPrivateUsage]
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
