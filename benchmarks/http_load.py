"""A lean load generator for the HTTP transport in stateless JSON mode: raw HTTP/1.1 over keep-alive
connections, one ``tools/call`` of ``key4u_respond`` (the Key4U example) per request, so that the load
costs a small fraction of what the server spends on each request.

    python -m benchmarks.http_load PORT CONNECTIONS START_AT PER_CLIENT ARGUMENTS_FILE

Each connection (a client) runs ``PER_CLIENT`` examples back to back from ``START_AT`` (a ``time.time()``,
so that several load processes start together), with the ``key4u_respond`` arguments read from
``ARGUMENTS_FILE`` (JSON; this process imports nothing of the server, so it starts fast). Prints one JSON
object: ``completed``, ``errors`` (a non-200, a tool error, a status other than ``completed``, a dropped
connection), the latencies in ms, when the last example ``ended`` (``time.time()``), and this process's
CPU seconds from the start.
"""

from __future__ import annotations

import json
import sys
import time

import anyio
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

HOST = "127.0.0.1"


def request_bytes(port: int, arguments: dict[str, object]) -> bytes:
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "key4u_respond", "arguments": arguments},
    }
    body = json.dumps(call).encode()
    head = (
        f"POST /mcp HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        "Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-06-18\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_reply(reader: BufferedByteReceiveStream) -> tuple[int, bytes]:
    head = await reader.receive_until(b"\r\n\r\n", 65536)
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    if b"content-length" in headers:
        return status, await reader.receive_exactly(int(headers[b"content-length"]))
    body = b""  # chunked
    while True:
        size = int((await reader.receive_until(b"\r\n", 1024)).split(b";")[0], 16)
        chunk = await reader.receive_exactly(size + 2)
        if size == 0:
            return status, body
        body += chunk[:-2]


def _ok(status: int, body: bytes) -> bool:
    if status != 200:
        return False
    try:
        result = json.loads(body)["result"]
    except (ValueError, KeyError, TypeError):
        return False
    return not result.get("isError") and (result.get("structuredContent") or {}).get("status") == "completed"


async def run(port: int, connections: int, start_at: float, per_client: int, payload: bytes) -> dict[str, object]:
    latencies: list[float] = []
    errors = 0
    last_end = start_at

    async def client() -> None:
        nonlocal errors, last_end
        stream: SocketStream | None = None
        reader: BufferedByteReceiveStream | None = None
        for _ in range(per_client):
            t0 = time.perf_counter()
            try:
                if stream is None or reader is None:
                    stream = await anyio.connect_tcp(HOST, port)
                    reader = BufferedByteReceiveStream(stream)
                await stream.send(payload)
                status, body = await _read_reply(reader)
                ok = _ok(status, body)
            except (OSError, anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, ValueError):
                ok = False
                if stream is not None:
                    await stream.aclose()
                stream = reader = None
            last_end = max(last_end, time.time())
            if ok:
                latencies.append((time.perf_counter() - t0) * 1000)
            else:
                errors += 1
        if stream is not None:
            await stream.aclose()

    await anyio.sleep(max(0.0, start_at - time.time()))
    cpu = time.process_time()
    async with anyio.create_task_group() as tg:
        for _ in range(connections):
            tg.start_soon(client)
    cpu = time.process_time() - cpu
    return {"completed": len(latencies), "errors": errors, "latencies": latencies, "ended": last_end, "cpu": cpu}


def main() -> None:
    port, connections = int(sys.argv[1]), int(sys.argv[2])
    start_at, per_client = float(sys.argv[3]), int(sys.argv[4])
    with open(sys.argv[5]) as f:
        payload = request_bytes(port, json.load(f))
    print(json.dumps(anyio.run(run, port, connections, start_at, per_client, payload)))


if __name__ == "__main__":
    main()
