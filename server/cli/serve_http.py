"""``key4u-mcp --transport http``: the server as a Streamable HTTP service (uvicorn, at ``/mcp``)."""

from __future__ import annotations

import argparse
import sys

import anyio

from server.cli.serve import servers_file_ok
from server.config import Settings
from server.errors import ConfigError
from server.transports.http import serve_http


def run(settings: Settings, args: argparse.Namespace) -> int:
    if not servers_file_ok(settings):
        return 2
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
