"""Serving MCP over stdio so that both stdin EOF and a signal end the server promptly.

The SDK reads stdin on an anyio worker thread that cannot be abandoned: on SIGTERM with
the host's pipe still open, shutdown would wait for a line that never comes. Here a
daemon thread reads the wire instead, and fd 0 is pointed at the null device while we
serve, as the SDK does, so that child processes cannot eat protocol input.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any, BinaryIO

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
            try:
                anyio.from_thread.run_sync(self._send.close, token=token)
            except RuntimeError:
                pass

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


async def serve_stdio(server: MCPServer[Any]) -> None:
    """Serve ``server`` on this process's stdin/stdout until EOF or cancellation."""
    lines = StdinLines(_claim_stdin())
    async with stdio_server(stdin=lines) as (read_stream, write_stream):  # type: ignore[arg-type]
        # MCPServer.run_stdio_async() offers no way to pass our stdin; this is its body.
        lowlevel = server._lowlevel_server  # noqa: SLF001
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
