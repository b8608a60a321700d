"""The ``key4u-mcp`` command line.

``key4u-mcp`` alone serves MCP over stdio, which is what MCP hosts run. Other commands
are for people at a terminal; they print to stdout, the server never does.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

import anyio
from pydantic import ValidationError

from server import __version__
from server.config import Settings, load_settings
from server.logs import configure_logging

logger = logging.getLogger(__name__)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="key4u-mcp",
        description="MCP server with local tools and a bridge to the Key4U (OpenAI-compatible) /v1/responses API. "
        "With no command it serves MCP over stdio, for Claude Desktop, Claude Code, Cursor and VS Code.",
    )
    parser.add_argument("--version", action="version", version=f"key4u-mcp {__version__}")
    parser.add_argument(
        "--log-level", type=str.upper, choices=LOG_LEVELS, default=None, help="log level (stderr only; default INFO)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="serve MCP over stdio (the default)")
    commands.add_parser("demo", help="start the server as a subprocess and exercise it through a real MCP client")
    return parser


def _settings(log_level: str | None) -> Settings | None:
    try:
        return load_settings(log_level=log_level)
    except ValidationError as exc:
        # Name the variable and the problem, never the value (it may be the key).
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"])
            print(f"key4u-mcp: invalid setting {field}: {error['msg']}", file=sys.stderr)
        return None


async def _serve_stdio(settings: Settings) -> None:
    from server.app import build_server
    from server.stdio import serve_stdio

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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = _settings(args.log_level)
    if settings is None:
        return 2
    configure_logging(settings.log_level, settings.secrets())
    command = args.command or "serve"
    if command == "serve":
        try:
            anyio.run(_serve_stdio, settings)
        except KeyboardInterrupt:  # Ctrl-C on Windows, or before the signal task started
            pass
        return 0
    if command == "demo":
        from server.demo import run_demo

        return anyio.run(run_demo, settings)
    raise AssertionError(f"unhandled command {command}")
