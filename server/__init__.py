"""key4u-mcp: an MCP server that hosts local tools and bridges to OpenAI-compatible /v1/responses."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("key4u-mcp")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"


def main() -> None:
    """Console-script entry point."""
    from server.cli.main import main as cli_main

    raise SystemExit(cli_main())


__all__ = ["__version__", "main"]
