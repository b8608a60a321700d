"""The ``key4u-mcp`` command line.

``key4u-mcp`` alone serves MCP over stdio, which is what MCP hosts run. Other commands
are for people at a terminal; they print to stdout, the server never does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

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
    parser.add_argument(
        "--transport",
        choices=["stdio", "http"],
        default="stdio",
        help="stdio (default, for MCP hosts) or http (Streamable HTTP at /mcp)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="HTTP: address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP: port (default 8000)")
    parser.add_argument(
        "--stateless", action="store_true", help="HTTP: no MCP sessions, so any replica can answer any request"
    )
    parser.add_argument("--json-response", action="store_true", help="HTTP: answer with JSON instead of SSE")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="serve MCP over stdio (the default)")
    commands.add_parser(
        "demo",
        help="run the server as a subprocess and exercise it through a real MCP client, including the Key4U "
        "parallel tool call example (against the offline stand-in when no API key is set)",
    )
    commands.add_parser("doctor", help="check that the configured gateway, key and model support the bridge")
    standin = commands.add_parser("stand-in", help="serve the offline stand-in of /v1/responses")
    standin.add_argument("--host", dest="standin_host", default="127.0.0.1", help="address (default 127.0.0.1)")
    standin.add_argument("--port", dest="standin_port", type=int, default=8765, help="port (default 8765; 0: any free)")
    standin.add_argument("--api-key", default=None, help="accept only this key (default: any non-empty key)")
    config = commands.add_parser("config", help="print a ready MCP host entry for this installation")
    config.add_argument("host", choices=["claude"], help="the MCP host (claude: Claude Desktop, Cursor)")
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
    from server.surface.app import build_server
    from server.transports.stdio import serve_stdio

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
    if command == "serve" and settings.servers_file is not None:
        from server.toolsets.hub import load_hub_config

        try:
            load_hub_config(settings.servers_file)
        except ValueError as exc:
            print(f"key4u-mcp: {exc}", file=sys.stderr)
            return 2
    if command == "serve" and args.transport == "http":
        return _serve_http(settings, args)
    if command == "serve":
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C on Windows, or before the signal task started
            anyio.run(_serve_stdio, settings)
        return 0
    if command == "demo":
        from server.cli.demo import run_demo

        return anyio.run(run_demo, settings)
    if command == "doctor":
        from server.cli.doctor import run_doctor

        return anyio.run(run_doctor, settings)
    if command == "stand-in":
        return _serve_stand_in(args.standin_host, args.standin_port, args.api_key)
    if command == "config":
        print(json.dumps(claude_entry(settings), indent=2))
        return 0
    raise AssertionError(f"unhandled command {command}")


def _serve_http(settings: Settings, args: argparse.Namespace) -> int:
    from server.errors import ConfigError
    from server.transports.http import serve_http

    try:
        anyio.run(
            lambda: serve_http(
                settings, args.host, args.port, stateless=args.stateless, json_response=args.json_response
            )
        )
    except ConfigError as exc:
        print(f"key4u-mcp: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def _serve_stand_in(host: str, port: int, api_key: str | None) -> int:
    from server.standin import StandIn

    upstream = StandIn(host=host, port=port, api_key=api_key).start()
    print(f"Offline stand-in of /v1/responses at {upstream.base_url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        upstream.stop()
    return 0


def claude_entry(settings: Settings) -> dict[str, object]:
    """A Claude Desktop ``mcpServers`` entry with absolute paths for this installation."""
    script = shutil.which("key4u-mcp", path=str(Path(sys.executable).parent)) or shutil.which("key4u-mcp")
    command, cmd_args = (script, []) if script else (sys.executable, ["-m", "server"])
    env = {"KEY4U_API_KEY": "sk-your-key4u-key", "KEY4U_BASE_URL": settings.base_url, "KEY4U_MODEL": settings.model}
    return {"mcpServers": {"key4u": {"command": str(Path(command).resolve()), "args": cmd_args, "env": env}}}
