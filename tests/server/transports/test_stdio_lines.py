"""The stdio transport's own parts: the stdin reader and the non-blocking stdout writer."""

from __future__ import annotations

import io
import os
import sys
import threading

import anyio
import pytest

from server.transports.stdio import MAX_MESSAGE_BYTES, StdinLines, StdoutWriter

pytestmark = pytest.mark.anyio


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
async def test_stdout_writer_waits_for_a_full_pipe_and_loses_nothing() -> None:
    read_fd, write_fd = os.pipe()
    message = "x" * (3 * 1024 * 1024) + "\n"  # far more than a pipe holds
    received = bytearray()

    def drain() -> None:
        with os.fdopen(read_fd, "rb") as reader:
            while chunk := reader.read(65536):
                received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    writer = StdoutWriter(write_fd)
    with anyio.fail_after(20):
        await writer.write(message)
        await writer.write("second\n")
        await writer.flush()
    os.close(write_fd)
    reader.join(10)
    assert received.decode() == message + "second\n"


async def test_stdin_lines_yields_lines_and_drops_oversized_ones() -> None:
    oversized = b"y" * (MAX_MESSAGE_BYTES + 10) + b"\n"
    source = io.BytesIO(b'{"a": 1}\n' + oversized + b'{"b": 2}\n' + b'{"c": 3}')
    with anyio.fail_after(20):
        lines = [line async for line in StdinLines(source)]
    assert lines == ['{"a": 1}\n', '{"b": 2}\n', '{"c": 3}']
