"""key4u-mcp: an MCP server that hosts local tools and bridges to models behind an OpenAI-compatible gateway.

The ``key4u-mcp`` command is ``server.cli.main:main``; the README's "Architecture" section maps the
packages.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("key4u-mcp")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"


__all__ = ["__version__"]
