"""``key4u-mcp demo``: the whole path, as a new user would see it.

It starts the server as a real stdio subprocess, connects as an MCP client, lists the tools,
calls each local tool, then runs the Key4U "parallel tool call" example through
``key4u_respond``: against the configured gateway when a key is set, else against the
offline stand-in on a free loopback port.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Generator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult

from server.config import Settings
from server.logs import mask
from server.standin import Faults, StandIn

KEY4U_PROMPT = (
    "Please help me do the following tasks at the same time:\n1. Get the current system time\n"
    "2. View system information (operating system, memory, etc.)\n3. Calculate the result of 123.5 + 456.7 for me\n"
    "4. Generate 3 random numbers between 1 and 100\n\n"
    "This is a parallel tool call test, please execute these tasks simultaneously."
)
LOCAL_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("current_time", {}),
    ("system_info", {}),
    ("math_calculator", {"operation": "add", "a": 123.5, "b": 456.7}),
    ("random_generator", {"min": 1, "max": 100, "count": 3}),
]
OFFLINE_KEY = "offline-demo-key"
#: The models step 5 asks at once against the stand-in, and the seconds it waits per request for each, to
#: stand for models of different speeds.
OFFLINE_PANEL = {"gpt-4.1": 0.3, "claude-sonnet-4-5": 0.5}
OFFLINE_SYNTHESIS = "gpt-4.1-mini"


class Printer:
    """Writes the demo's account to stdout with the key masked."""

    def __init__(self, secrets: list[str]) -> None:
        self._secrets = secrets

    def __call__(self, text: str = "") -> None:
        print(mask(text, self._secrets), flush=True)


def server_parameters(env: dict[str, str] | None = None) -> StdioServerParameters:
    """The command an MCP host would run: this interpreter's ``key4u-mcp``."""
    merged = {k: v for k, v in os.environ.items() if k.startswith(("KEY4U_", "OPENAI_"))}
    merged.setdefault("KEY4U_LOG_LEVEL", "WARNING")
    merged.update(env or {})
    return StdioServerParameters(command=sys.executable, args=["-m", "server"], env=merged)


def _text(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", f"[{block.type}]") for block in result.content)


@contextmanager
def upstream_for(settings: Settings) -> Generator[tuple[dict[str, str], str]]:
    """Environment for the server subprocess and a description of the upstream."""
    with ExitStack() as stack:
        state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="key4u-demo-")))
        env = {"KEY4U_DB_PATH": str(state / "conversations.sqlite3")}
        if settings.has_key:
            yield env, f"the configured gateway {settings.base_url} (model {settings.model})"
            return
        standin = stack.enter_context(StandIn())
        standin.faults = Faults(model_latency=dict(OFFLINE_PANEL))
        env.update(KEY4U_API_KEY=OFFLINE_KEY, KEY4U_BASE_URL=standin.base_url, OPENAI_API_KEY="", OPENAI_BASE_URL="")
        yield env, f"the offline stand-in at {standin.base_url} (no API key set; answers are labelled, not a model's)"


class Demo:
    """Runs the demo against a real server subprocess and prints its account, key masked.

    A failed step is recorded in ``failures``, and ``run`` then returns 1.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.out = Printer(settings.secrets())
        self.failures: list[str] = []

    async def run(self) -> int:
        started = time.perf_counter()
        out = self.out
        with upstream_for(self.settings) as (env, upstream):
            out("key4u-mcp demo")
            out(f"Upstream: {upstream}")
            out("Starting the server as a stdio subprocess and connecting as an MCP client...")
            async with Client(server_parameters(env), mode="legacy") as client:
                await self._list_tools(client)
                await self._local_tools(client)
                await self._listing(client, "2. The models this key can use, and their prices (key4u_models):")
                used = await self._respond(client, "3. The Key4U parallel tool call example through key4u_respond:")
                other = "chat" if used != "chat" else "responses"
                await self._respond(
                    client,
                    f"4. The same example over the other model API (api={other!r}):",
                    api=other,
                    required=not self.settings.has_key,  # a real gateway may serve only one API for this model
                )
                await self._panel(client, "5. The same example asked of two models at once, then compared:")
                await self._listing(client, "6. What this server's calls used and cost today (key4u_usage):", days=1)
        out(f"\nTotal time {time.perf_counter() - started:.2f} s. Upstream: {upstream}")
        if self.failures:
            out(f"FAILED: {'; '.join(self.failures)}")
            return 1
        out("All steps succeeded.")
        return 0

    async def _list_tools(self, client: Client) -> None:
        tools = (await client.list_tools()).tools
        self.out(f"\n{len(tools)} tools:")
        for tool in tools:
            self.out(f"  - {tool.name}: {(tool.description or '').splitlines()[0][:110]}")

    async def _local_tools(self, client: Client) -> None:
        self.out("\n1. Calling each local tool directly:")
        for name, arguments in LOCAL_CALLS:
            t0 = time.perf_counter()
            result = await client.call_tool(name, arguments)
            ms = (time.perf_counter() - t0) * 1000
            if result.is_error:
                self.failures.append(f"{name} returned an error")
            self.out(f"\n  {name}({json.dumps(arguments)}) -> {'error' if result.is_error else 'ok'} in {ms:.1f} ms")
            for line in _text(result).splitlines():
                self.out(f"    {line}")

    async def _listing(self, client: Client, title: str, *, days: int | None = None, lines: int = 14) -> None:
        """key4u_models (or key4u_usage, with ``days``), its first ``lines`` lines shown."""
        self.out(f"\n{title}")
        name, arguments = ("key4u_models", {}) if days is None else ("key4u_usage", {"days": days})
        result = await client.call_tool(name, arguments)
        text = _text(result).splitlines()
        if result.is_error:
            self.out(f"  {name} failed: {' '.join(text)[:300]}")
            if not self.settings.has_key:  # the stand-in serves everything these tools ask for
                self.failures.append(f"{name} returned an error")
            return
        for line in text[:lines]:
            self.out(f"  {line}")
        if len(text) > lines:
            self.out(f"  ... {len(text) - lines} more")

    async def _respond(self, client: Client, title: str, *, api: str | None = None, required: bool = True) -> str:
        """Run the example once; returns the model API the bridge used."""
        out = self.out
        out(f"\n{title}")
        out("  Prompt: " + KEY4U_PROMPT.replace("\n", "\n          "))

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            out(f"  ... {message}")

        arguments: dict[str, Any] = {"prompt": KEY4U_PROMPT, "metadata": {"model_id": "32"}}
        if api is not None:
            arguments["api"] = api
        t0 = time.perf_counter()
        result = await client.call_tool("key4u_respond", arguments, progress_callback=on_progress)
        wall = (time.perf_counter() - t0) * 1000
        data: dict[str, Any] = result.structured_content or {}
        if result.is_error or data.get("status") != "completed":
            if required:
                self.failures.append(f"key4u_respond ended with status {data.get('status', 'error')}")
            out(f"\n  key4u_respond {'failed' if required else 'is not available this way'}:\n    {_text(result)}")
            return str(data.get("api") or "")
        self._account(data, wall)
        return str(data.get("api") or "")

    def _panel_models(self) -> tuple[list[str], str]:
        """Two models and a synthesizer: the stand-in's, or the configured model and a second one."""
        if not self.settings.has_key:
            return list(OFFLINE_PANEL), OFFLINE_SYNTHESIS
        other = "gpt-4.1-mini" if self.settings.model != "gpt-4.1-mini" else "gpt-4.1"
        return [self.settings.model, other], self.settings.model

    async def _panel(self, client: Client, title: str) -> None:
        out = self.out
        models, synthesizer = self._panel_models()
        out(f"\n{title}")
        out(f"  models={json.dumps(models)}, synthesize={synthesizer!r}")
        if not self.settings.has_key:
            waits = ", ".join(f"{m} {s:g} s" for m, s in OFFLINE_PANEL.items())
            out(f"  (the stand-in waits per request, to stand for models of different speeds: {waits})")
        arguments = {"prompt": KEY4U_PROMPT, "models": models, "synthesize": synthesizer}
        t0 = time.perf_counter()
        result = await client.call_tool("key4u_respond", arguments)
        wall = time.perf_counter() - t0
        data: dict[str, Any] = result.structured_content or {}
        answers: list[dict[str, Any]] = data.get("answers") or []
        if result.is_error or data.get("status") != "completed" or not answers:
            if not self.settings.has_key:
                self.failures.append(f"asking two models ended with status {data.get('status', 'error')}")
            out(f"\n  key4u_respond with models failed:\n    {_text(result)[:600]}")
            return
        for answer in answers:
            took = f"{answer['seconds']:.2f} s" if answer.get("seconds") is not None else "?"
            cost = _cost(answer["usage"])
            out(f"\n  {answer['asked']}: {answer['status']} in {took}, {answer['turns']} turns, {cost}")
            for line in (answer.get("text") or answer.get("error") or "").splitlines()[:3]:
                out(f"    {line[:140]}")
        out("\n  Synthesis:")
        for line in (data.get("text") or "(none)").splitlines():
            out(f"    {line}")
        notes: list[str] = data.get("notes") or []
        for note in notes:
            out(f"  Note: {note}")
        slowest = max((a.get("seconds") or 0.0) for a in answers)
        out(
            f"\n  Wall time {wall:.2f} s for both models and the synthesis; the slowest model alone took "
            f"{slowest:.2f} s: they ran at the same time. Combined: {_cost(data['usage'])}."
        )

    def _account(self, data: dict[str, Any], wall_ms: float) -> None:
        out = self.out
        calls = data["tool_calls"]
        for turn in range(1, data["turns"] + 1):
            in_turn = [c for c in calls if c["turn"] == turn]
            out(
                f"\n  Turn {turn}: " + (f"the model called {len(in_turn)} tool(s)" if in_turn else "the model answered")
            )
            for call in sorted(in_turn, key=lambda c: c["started_ms"]):
                first_line = call["output"].splitlines()[0] if call["output"] else ""
                out(f"    {call['name']}({json.dumps(call['arguments'])})")
                out(
                    f"      {'ok' if call['ok'] else 'ERROR'}: started at +{call['started_ms']:.1f} ms, "
                    f"took {call['ms']:.1f} ms -> {first_line[:100]}"
                )
            if len(in_turn) > 1:
                starts = [c["started_ms"] for c in in_turn]
                ends = [c["started_ms"] + c["ms"] for c in in_turn]
                overlap = max(starts) < min(ends)
                out(
                    f"    {'All ran at the same time' if overlap else 'Ran concurrently'}: "
                    f"{max(ends) - min(starts):.1f} ms from first start to last finish, "
                    f"against {sum(c['ms'] for c in in_turn):.1f} ms if run one after another."
                )
        if any(not c["ok"] for c in calls):
            self.failures.append("a tool call failed")
        usage = data["usage"]
        out("\n  Final answer:")
        for line in data["text"].splitlines():
            out(f"    {line}")
        route = {"responses": "/v1/responses", "chat": "/v1/chat/completions"}.get(data.get("api") or "", "?")
        out(
            f"\n  Model (as reported): {data['model']} · API {route} · turns {data['turns']} · "
            f"tokens in {usage['input_tokens']} (cached {usage['cached_tokens']}) / out {usage['output_tokens']} "
            f"(reasoning {usage['reasoning_tokens']}) · {_cost(usage)} · {wall_ms:.0f} ms"
        )
        out(f"  Transcript resource: {data['transcript']}")


def _cost(usage: dict[str, Any]) -> str:
    if usage.get("cost_usd") is not None:
        return f"cost ${usage['cost_usd']:.6f}"
    return f"cost unknown ({usage.get('cost_note') or 'no price'})"


async def run_demo(settings: Settings) -> int:
    return await Demo(settings).run()


def run(settings: Settings, args: argparse.Namespace) -> int:
    return anyio.run(run_demo, settings)
