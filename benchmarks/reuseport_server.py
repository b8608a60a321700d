"""``key4u-mcp`` (the unmodified command line) with SO_REUSEPORT on its listening socket, so that N processes
can serve one port, the kernel spreading connections among them: a stand-in for the ``--workers`` option the
HTTP transport does not have (uvicorn's single-process bind sets only SO_REUSEADDR).

    python -m benchmarks.reuseport_server --transport http --stateless --json-response --port 8600
"""

from __future__ import annotations

import asyncio.base_events
import sys
from typing import Any

_create_server = asyncio.base_events.BaseEventLoop.create_server


async def _create_server_reuse_port(self: Any, *args: Any, **kwargs: Any) -> Any:
    if kwargs.get("sock") is None:
        kwargs.setdefault("reuse_port", True)
    return await _create_server(self, *args, **kwargs)


asyncio.base_events.BaseEventLoop.create_server = _create_server_reuse_port  # type: ignore[method-assign]

if __name__ == "__main__":
    from server.cli.main import main

    sys.exit(main(sys.argv[1:]))
