"""``key4u-mcp config <host>``: the set-up snippet for one MCP host, with this installation's absolute path.

The snippets are the ones the README's host guides give (each tested in that host). The key is a
placeholder, never the configured one; the base URL and model are this installation's settings.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

from server.config import Settings

HOSTS = ("claude", "claude-code", "codex", "gemini", "cursor", "vscode")
PLACEHOLDER = "sk-your-key4u-key"


def command() -> tuple[str, list[str]]:
    """How to start this installation: its ``key4u-mcp`` script, or this interpreter with ``-m server``."""
    script = shutil.which("key4u-mcp", path=str(Path(sys.executable).parent)) or shutil.which("key4u-mcp")
    if script:
        return str(Path(script).resolve()), []
    return str(Path(sys.executable).resolve()), ["-m", "server"]


def environment(settings: Settings) -> dict[str, str]:
    return {"KEY4U_API_KEY": PLACEHOLDER, "KEY4U_BASE_URL": settings.base_url, "KEY4U_MODEL": settings.model}


def claude_entry(settings: Settings) -> dict[str, object]:
    """A Claude Desktop (or Cursor) ``mcpServers`` entry."""
    cmd, args = command()
    return {"mcpServers": {"key4u": {"command": cmd, "args": args, "env": environment(settings)}}}


def snippet(host: str, settings: Settings) -> str:
    cmd, args = command()
    env = environment(settings)
    line = shlex.join([cmd, *args])
    if host in ("claude", "cursor"):
        return json.dumps(claude_entry(settings), indent=2)
    if host == "vscode":
        entry = {"type": "stdio", "command": cmd, "args": args, "env": env}
        return json.dumps({"servers": {"key4u": entry}}, indent=2)
    if host == "claude-code":
        flags = " ".join(f"-e {shlex.quote(f'{k}={v}')}" for k, v in env.items())
        return f"claude mcp add key4u {flags} -- {line}"
    if host == "gemini":
        flags = " ".join(f"-e {shlex.quote(f'{k}={v}')}" for k, v in env.items())
        return f"gemini mcp add -s user --trust key4u {line} {flags}"
    toml_env = "\n".join(f"{k} = {json.dumps(v)}" for k, v in env.items())
    return (
        f"[mcp_servers.key4u]\ncommand = {json.dumps(cmd)}\nargs = {json.dumps(args)}\nrequired = true\n"
        f"startup_timeout_sec = 20\ntool_timeout_sec = 120\n\n[mcp_servers.key4u.env]\n{toml_env}\n\n"
        '[mcp_servers.key4u.tools.key4u_respond]\napproval_mode = "approve"'
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    print(snippet(args.host, settings))
    return 0
