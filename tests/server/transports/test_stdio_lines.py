"""The stdio transport's own parts: the stdin reader and the non-blocking stdout writer."""

from __future__ import annotations

import io
import os
import sys
import threading
from pathlib import Path

import anyio
import pytest

from server.transports.stdio import MAX_MESSAGE_BYTES, BlockingWriter, StdinLines, StdinPipe, StdoutWriter

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
    os.close(write_fd)
    reader.join(10)
    assert received.decode() == message + "second\n"


async def test_stdin_lines_yields_lines_and_drops_oversized_ones() -> None:
    oversized = b"y" * (MAX_MESSAGE_BYTES + 10) + b"\n"
    source = io.BytesIO(b'{"a": 1}\n' + oversized + b'{"b": 2}\n' + b'{"c": 3}')
    with anyio.fail_after(20):
        lines = [line async for line in StdinLines(source)]
    assert lines == ['{"a": 1}\n', '{"b": 2}\n', '{"c": 3}']


async def piped(chunks: list[bytes]) -> list[str]:
    """What ``StdinPipe`` yields of ``chunks`` written to a pipe one by one (by a thread) until it closes."""
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as pipe:
            for chunk in chunks:
                pipe.write(chunk)
                pipe.flush()

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        with anyio.fail_after(60):
            return [line async for line in StdinPipe(read_fd)]
    finally:
        feeder.join(10)
        os.close(read_fd)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
async def test_stdin_pipe_yields_lines_as_they_come_and_drops_oversized_ones() -> None:
    oversized = b"y" * (MAX_MESSAGE_BYTES + 10) + b"\n"
    chunks = [b'{"a": 1}\n{"b"', b": 2}\n", oversized, '{"é": 3}\n'.encode(), b"\xff\n", b'{"c": 4}']
    lines = await piped(chunks)
    assert lines == ['{"a": 1}\n', '{"b": 2}\n', '{"é": 3}\n', "\ufffd\n", '{"c": 4}']


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
async def test_stdin_pipe_hands_on_a_line_before_the_next_arrives() -> None:
    read_fd, write_fd = os.pipe()
    lines = StdinPipe(read_fd)
    try:
        with anyio.fail_after(10):
            os.write(write_fd, b"first\n")
            assert await anext(lines) == "first\n"  # the pipe stays open: no waiting for more
            os.write(write_fd, b"second\n")
            assert await anext(lines) == "second\n"
            os.close(write_fd)
            with pytest.raises(StopAsyncIteration):
                await anext(lines)
    finally:
        os.close(read_fd)


async def test_blocking_writer_writes_whole_messages_to_a_file(tmp_path: Path) -> None:
    path = tmp_path / "wire.txt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        writer = BlockingWriter(fd)
        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(writer.write, f"{n:02d}" * 5000 + "\n")
    finally:
        os.close(fd)
    lines = path.read_text().splitlines()
    assert sorted(lines) == [f"{n:02d}" * 5000 for n in range(20)]  # none torn or interleaved


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
async def test_stdin_pipe_hands_on_many_small_lines_in_order_and_drops_an_oversized_tail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lines = [f'{{"n": {n}}}\n' for n in range(50_000)]  # far more than one read: the buffer is compacted
    tail = b"z" * (MAX_MESSAGE_BYTES + 5)  # no newline before the end
    got = await piped(["".join(lines).encode(), tail])
    assert got == lines
    assert any("discarded a message" in r.getMessage() for r in caplog.records)
