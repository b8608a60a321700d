"""Run the fault matrix and rewrite RELIABILITY.md:  python -m benchmarks.reliability"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from benchmarks.common import REPO, machine

sys.path.insert(0, str(REPO))
from tests.test_fault_matrix import HOSTILE_ROWS, MODEL_ROWS, UPSTREAM_ROWS

SPECIAL = {
    "test_client_cancel_mid_turn": ("client cancels mid-turn", "the upstream request is dropped; next call works"),
    "test_connection_refused": ("connection refused", "failed: could not reach the gateway (after 1 retry)"),
    "test_stdin_closed_mid_call": ("stdin closed mid-call", "the server exits 0 and its upstream request ends"),
    "test_a_64_mib_request_line": (
        "a 64 MiB request line",
        "dropped with a warning, never held whole; next call answered",
    ),
    "test_an_unusable_database_is_a_clear_error_and_the_local_tools_still_work": (
        "an unusable database (a directory)",
        "a tool error naming the file and KEY4U_DB_PATH, every call; local tools work",
    ),
    "test_a_corrupt_database_is_moved_aside_with_the_users_knowledge": (
        "a corrupt database file",
        "moved aside to <name>.corrupt-<time>, told in the next result and the log; a new one works",
    ),
}


def _outcomes(junit: Path) -> dict[str, tuple[str, float]]:
    results = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        results[case.get("name", "")] = (
            "fail" if failed else "skipped" if skipped else "pass",
            float(case.get("time", 0)),
        )
    return results


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "tests/test_fault_matrix.py", f"--junitxml={junit}"],
            cwd=REPO,
            check=False,
        )
        seconds = time.perf_counter() - started
        outcomes = _outcomes(junit)
    rows = []
    for name, _, _, status, fragment, requests in UPSTREAM_ROWS:
        expected = f"status {status}" + (f", says “{fragment}”" if fragment else "")
        expected += f", {requests} upstream request(s)" if requests else ""
        rows.append((name, expected, *outcomes.get(f"test_upstream_fault[{name}]", ("missing", 0.0))))
    for name, _, _, status, fragment in MODEL_ROWS:
        expected = f"status {status}; the call outputs or the result say “{fragment}”"
        rows.append((name, expected, *outcomes.get(f"test_model_or_tool_fault[{name}]", ("missing", 0.0))))
    for name, _, _, status, fragment in HOSTILE_ROWS:
        expected = f"status {status}; says “{fragment}”; the key in no result, transcript, log or database file"
        rows.append((name, expected, *outcomes.get(f"test_hostile_input[{name}]", ("missing", 0.0))))
    for test, (name, expected) in SPECIAL.items():
        rows.append((name, expected, *outcomes.get(test, ("missing", 0.0))))
    info = machine()
    passed = sum(r[2] == "pass" for r in rows)
    lines = [
        "# Reliability: the fault matrix",
        "",
        "Each row is a test in `tests/test_fault_matrix.py`, run in CI, against the server as MCP hosts run it (a",
        "stdio subprocess) with the offline stand-in as the gateway and its fault switches, or a misbehaving",
        "downstream MCP server. Besides the expected result, every row checks that the server answers the next",
        "call normally, that nothing is left running (no request in flight at the stand-in, no stray child",
        "process), and that the API key appears in no result and no log line.",
        "",
        f"Latest run: {passed} of {len(rows)} rows pass, in {seconds:.0f} s on {time.strftime('%Y-%m-%d')} "
        f"({info['cpu']}, {info['cores']} cores, Python {info['python']}). Reproduce: "
        "`.venv/bin/python -m benchmarks.reliability`.",
        "",
        "| fault | expected | result | seconds |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {expected} | {result} | {secs:.2f} |" for name, expected, result, secs in rows]
    lines += [
        "",
        "Other failure paths have their own tests: every error class and retry rule of both model APIs",
        "(`tests/server/upstream/test_responses.py`, `test_chat.py`, `test_routing.py`), a hostile gateway byte by",
        "byte and hostile schemas (`tests/server/upstream/test_hostile.py`), downstream servers that never start,",
        "never answer `initialize`, crash mid-call, hang, ignore SIGTERM or read the environment",
        "(`tests/server/toolsets/test_hub.py`, `test_hub_hostile.py`), database faults",
        "(`tests/server/store/test_faults.py`), the HTTP transport's auth, Host/Origin and size checks, slow and",
        "idle clients, health and invalid messages (`tests/server/transports/`), property-based tests of the",
        "translation (`tests/server/upstream/test_translation.py`) and a bounded `mcp-fuzzer` run",
        "(`tests/test_fuzz_mcp.py`).",
    ]
    (REPO / "RELIABILITY.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if passed != len(rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
