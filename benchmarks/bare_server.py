"""A bare ``mcp`` server with one tool, started the same way as ours (the start-up baseline).

With ``--paused`` it starts as key4u-mcp does (``server.startup``): no cyclic collection until it
is built. The start-up row's detail compares against that too, which leaves what our own
modules cost.
"""

from __future__ import annotations

import gc
import sys

PAUSED = "--paused" in sys.argv[1:]
if PAUSED:
    gc.disable()

from mcp.server import MCPServer  # noqa: E402  (after the pause, which is what it measures)

server: MCPServer = MCPServer("bare")


@server.tool()
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


if __name__ == "__main__":
    if PAUSED:
        gc.freeze()
        gc.enable()
    server.run()
