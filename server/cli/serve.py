"""``key4u-mcp`` (or ``key4u-mcp serve``): MCP over stdio, what MCP hosts spawn.

The start-up path: it imports the MCP surface and the stdio transport and nothing a host does not
need before ``initialize`` (no HTTP server, no demo, no stand-in). It stops cleanly on SIGTERM, SIGINT
or when stdin closes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys

import anyio

from server.config import Settings
from server.surface.app import build_server
from server.toolsets.hub import load_hub_config
from server.transports.stdio import serve_stdio

logger = logging.getLogger(__name__)


def run(settings: Settings, args: argparse.Namespace) -> int:
    if not servers_file_ok(settings):
        return 2
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C on Windows, or before the signal task started
        anyio.run(_serve, settings)
    return 0


def servers_file_ok(settings: Settings) -> bool:
    """Refuse to start with a servers file that does not parse: say why on stderr."""
    if settings.servers_file is None:
        return True
    try:
        load_hub_config(settings.servers_file)
    except ValueError as exc:
        print(f"key4u-mcp: {exc}", file=sys.stderr)
        return False
    return True


async def _serve(settings: Settings) -> None:
    server = build_server(settings)
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    logger.info("received %s, shutting down", signal.Signals(signum).name)
                    tg.cancel_scope.cancel()
                    return

        if sys.platform != "win32":
            tg.start_soon(stop_on_signal)
        await serve_stdio(server)
        logger.info("stdin closed, shutting down")
        tg.cancel_scope.cancel()
