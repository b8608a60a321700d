"""The ``key4u-mcp`` command line: arguments, settings, logging, then one command's module.

``key4u-mcp`` alone serves MCP over stdio, which is what MCP hosts run. Other commands
are for people at a terminal; they print to stdout, the server never does.

Each command is a module of this package with ``run(settings, args) -> int``, named in ``COMMANDS``
and imported when that command runs: the one place where the CLI chooses what to load, so serving
over stdio never imports the HTTP server, the demo, the doctor or the stand-in.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from server import __version__, startup
from server.config import Settings, load_settings
from server.logs import configure_logging

#: Command name -> the module that runs it.
COMMANDS = {
    "serve": "server.cli.serve",
    "serve-http": "server.cli.serve_http",
    "demo": "server.cli.demo",
    "doctor": "server.cli.doctor",
    "stand-in": "server.cli.standin",
    "config": "server.cli.hostconfig",
}

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _workers(text: str) -> int:
    count = int(text)
    if not 1 <= count <= 64:
        raise argparse.ArgumentTypeError("--workers must be from 1 to 64")
    return count


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="key4u-mcp",
        description="MCP server with local tools and a bridge to models behind the Key4U (OpenAI-compatible) gateway. "
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
    parser.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="HTTP: server processes sharing the port, for more than one core (POSIX; default 1)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="serve MCP over stdio (the default)")
    commands.add_parser(
        "demo",
        help="run the server as a subprocess and exercise it through a real MCP client, including the Key4U "
        "parallel tool call example (against the offline stand-in when no API key is set)",
    )
    doctor = commands.add_parser("doctor", help="check that the configured gateway, key and model support the bridge")
    doctor.add_argument("--model", dest="models", action="append", help="check this model instead (repeat for several)")
    standin = commands.add_parser(
        "stand-in", help="serve the offline stand-in of the model API (/v1/responses and /v1/chat/completions)"
    )
    standin.add_argument("--host", dest="standin_host", default="127.0.0.1", help="address (default 127.0.0.1)")
    standin.add_argument("--port", dest="standin_port", type=int, default=8765, help="port (default 8765; 0: any free)")
    standin.add_argument("--api-key", default=None, help="accept only this key (default: any non-empty key)")
    config = commands.add_parser("config", help="print a ready MCP host entry for this installation")
    config.add_argument(
        "host",
        choices=["claude", "claude-code", "codex", "gemini", "cursor", "vscode"],
        help="the MCP host (claude: Claude Desktop)",
    )
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


def main(argv: Sequence[str] | None = None) -> int:
    startup.pause()  # until the server is built (server.startup); the other commands resume it at once
    args = _parser().parse_args(argv)
    settings = _settings(args.log_level)
    if settings is None:
        return 2
    configure_logging(settings.log_level, settings.secrets())
    command = args.command or "serve"
    if command == "serve" and args.transport == "http":
        command = "serve-http"
    run: Callable[[Settings, argparse.Namespace], int] = importlib.import_module(COMMANDS[command]).run
    if command not in ("serve", "serve-http"):  # the servers settle once built (their lifespan)
        startup.settle()
    return run(settings, args)
