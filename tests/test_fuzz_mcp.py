"""A bounded fuzz run of the MCP surface over stdio with the ``mcp-fuzzer`` package: no crash.

The fuzzer sends malformed and hostile requests to every tool and protocol method, then we
check that no tool call crashed the server or broke the transport. (Property-based tests of the translation are in
``tests/server/upstream/test_translation.py``.)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import script

pytestmark = pytest.mark.skipif(
    shutil.which("mcp-fuzzer", path=str(Path(sys.executable).parent)) is None, reason="mcp-fuzzer is not installed"
)


def test_fuzzing_the_mcp_surface_crashes_nothing(tmp_path: Path) -> None:
    fuzzer = shutil.which("mcp-fuzzer", path=str(Path(sys.executable).parent))
    assert fuzzer
    out = tmp_path / "out"
    done = subprocess.run(
        [
            fuzzer,
            "--mode",
            "all",
            "--phase",
            "both",
            "--protocol",
            "stdio",
            "--endpoint",
            script(),
            "--runs",
            "25",
            "--runs-per-type",
            "5",
            "--seed",
            "7",
            "--timeout",
            "15",
            "--tool-timeout",
            "15",
            "--no-network",
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["status"] == "completed"
    tools = summary["tools"]["by_name"]
    assert {"current_time", "system_info", "math_calculator", "random_generator", "key4u_respond"} <= set(tools)
    for name, result in tools.items():
        outcomes = result["outcomes"]
        assert outcomes["crashed"] == 0 and outcomes["anomaly"] == 0 and outcomes["exceptions"] == 0, (name, outcomes)
    assert summary["protocols"]["total_runs"] > 0
