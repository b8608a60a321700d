"""Serving MCP over stdio so that both stdin EOF and a signal end the server promptly.

The SDK reads stdin on an anyio worker thread that cannot be abandoned: on SIGTERM with
the host's pipe still open, shutdown would wait for a line that never comes. Here a
daemon thread reads the wire instead, and fd 0 is pointed at the null device while we
serve, as the SDK does, so that child processes cannot eat protocol input.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
import threading
from typing import Any, BinaryIO

if sys.platform != "win32":
    import fcntl

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server import MCPServer
from mcp.server.stdio import stdio_server

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


async def serve_stdio(server: MCPServer[Any]) -> None:
    """Serve ``server`` on this process's stdin/stdout until EOF or cancellation."""
    lines = StdinLines(_claim_stdin())
    writer = _claim_stdout()
    # stdio_server() annotates stdin/stdout as anyio.AsyncFile[str] but only iterates the one
    # and calls write()/flush() on the other, which is all StdinLines and StdoutWriter offer.
    async with stdio_server(
        stdin=lines,  # pyright: ignore[reportArgumentType] -- duck-typed AsyncFile, see above
        stdout=writer,  # pyright: ignore[reportArgumentType] -- duck-typed AsyncFile, see above
    ) as (read_stream, write_stream):
        # The body of MCPServer.run_stdio_async(), which takes no streams. mcp 2.3.0
        # (importlib.metadata.version("mcp")) has no public hook to run an MCPServer on our own
        # streams: no stdin/stdout parameters on run_stdio_async() and no public accessor for the
        # low-level Server (the SDK's own in-memory transport reads ``_lowlevel_server`` too, with a
        # TODO to make it public). Re-check on SDK upgrades.
        lowlevel = server._lowlevel_server  # noqa: SLF001  # pyright: ignore[reportPrivateUsage]
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
