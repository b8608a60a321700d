"""``key4u-mcp doctor``: does this gateway, key and model support what the bridge needs?"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

from server import errors
from server.config import Settings
from server.logs import mask
from server.toolsets.hub import Hub, load_hub_config
from server.upstream.responses import ResponsesClient, RetryPolicy
from server.upstream.wire import ResponseObject

PROBE_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_magic_number",
    "description": "Returns the magic number. Call it when asked for the magic number.",
    "parameters": {"type": "object", "properties": {}, "required": [], "additionalProperties": False},
    "strict": True,
}


@dataclass
class Check:
    """One line of the doctor's report: what was checked, whether it passed, and how to fix it if not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def masked(key: str) -> str:
    return f"{key[:4]}…{key[-4:]} ({len(key)} characters)" if len(key) >= 12 else "*** (short)"


def advice(exc: errors.UpstreamError, model: str) -> str:
    if isinstance(exc, errors.NotFoundError):
        if exc.code == "model_not_found" or "model" in exc.message.lower():
            return f"the gateway does not offer model {model!r} to this key: set KEY4U_MODEL to one it lists"
        return (
            "this gateway has no /v1/responses route (one-api and older gateways only have /v1/chat/completions): "
            "use a gateway that supports the Responses API, or check KEY4U_BASE_URL ends in /v1"
        )
    if isinstance(exc, errors.AuthenticationError):
        return "the key was rejected: copy it again from the gateway console into KEY4U_API_KEY"
    return exc.hint or "see the error"


class Doctor:
    """Checks the configured gateway, key and model with a few small real requests, without retries.

    Each result is recorded as a ``Check``, with a fix when it fails; ``downstream_checks`` covers the
    downstream servers.
    """

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.http = http
        self.checks: list[Check] = []
        self.last_ms = 0.0

    def add(self, name: str, ok: bool, detail: str, fix: str = "") -> None:
        self.checks.append(Check(name, ok, mask(detail, self.settings.secrets()), fix))

    async def run(self) -> list[Check]:
        s = self.settings
        parts = urlsplit(s.base_url)
        self.add(
            "base URL",
            True,
            s.base_url,
            "" if parts.path.rstrip("/").endswith("/v1") else "most gateways need the URL to end in /v1",
        )
        if s.api_key is None:
            self.add("API key", False, "not set", "set KEY4U_API_KEY (or OPENAI_API_KEY)")
            return self.checks
        key = s.api_key.get_secret_value()
        self.add("API key", True, masked(key))
        client = ResponsesClient(self.http, base_url=s.base_url, api_key=key, retry=RetryPolicy(max_retries=0))
        await self._models(key)
        if not await self._probe("/v1/responses, plain JSON", client, stream=False, store=False):
            return self.checks
        await self._probe("/v1/responses, streaming", client, stream=True, store=False)
        await self._function_calling(client)
        return self.checks

    async def _models(self, key: str) -> None:
        try:
            response = await self.http.get(
                f"{self.settings.base_url}/models", headers={"Authorization": f"Bearer {key}"}
            )
        except httpx.HTTPError as exc:
            self.add(
                "reach the gateway",
                False,
                f"{type(exc).__name__}: {exc}",
                "check KEY4U_BASE_URL, the network and any proxy settings",
            )
            return
        if response.status_code == 200:
            try:
                ids = [m.get("id") for m in response.json().get("data", [])]
            except (ValueError, AttributeError):
                ids = []
            listed = self.settings.model in ids
            self.add(
                "GET /models",
                True,
                f"{len(ids)} models; {self.settings.model} {'listed' if listed else 'not listed'}",
                "" if listed or not ids else "set KEY4U_MODEL to one of the listed models",
            )
        else:
            self.add(
                "GET /models",
                response.status_code not in (401, 403),
                f"HTTP {response.status_code}",
                "the key was rejected" if response.status_code in (401, 403) else "",
            )

    async def _call(self, name: str, call: Callable[[], Awaitable[ResponseObject]]) -> ResponseObject | None:
        t0 = time.perf_counter()
        try:
            result = await call()
        except errors.UpstreamError as exc:
            self.add(name, False, exc.summary[:200], advice(exc, self.settings.model))
            return None
        self.last_ms = (time.perf_counter() - t0) * 1000
        return result

    async def _probe(self, name: str, client: ResponsesClient, *, stream: bool, store: bool) -> bool:
        body = {"model": self.settings.model, "input": "Reply with the single word OK.", "store": store}
        response = await self._call(name, lambda: client.create(body, stream=stream))
        if response is None:
            return False
        self.add(
            name,
            True,
            f"{response.status} in {self.last_ms:.0f} ms; model reported as {response.model}; "
            f"store:false accepted; said {response.text()[:40]!r}",
        )
        return True

    async def _function_calling(self, client: ResponsesClient) -> None:
        body: dict[str, Any] = {
            "model": self.settings.model,
            "input": "What is the magic number?",
            "tools": [PROBE_TOOL],
            "tool_choice": "required",
            "store": False,
        }
        response = await self._call("function calling", lambda: client.create(body))
        if response is None:
            return
        calls = response.function_calls()
        if calls and calls[0].name == "get_magic_number":
            self.add("function calling", True, f"the model called get_magic_number (call_id {calls[0].call_id})")
        else:
            self.add(
                "function calling",
                False,
                "the model answered without calling the tool",
                "this model or gateway channel may not support function calling: try another KEY4U_MODEL",
            )


def table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines: list[str] = []
    for c in checks:
        lines.append(f"{'ok  ' if c.ok else 'FAIL'}  {c.name.ljust(width)}  {c.detail}")
        if c.fix:
            lines.append(f"      {' ' * width}  -> {c.fix}")
    return "\n".join(lines)


async def downstream_checks(settings: Settings) -> list[Check]:
    """Start each configured downstream MCP server once and report whether it answered."""
    try:
        config, path = load_hub_config(settings.mcp_servers)
    except ValueError as exc:
        return [Check("MCP servers file", False, str(exc), "fix the JSON (the mcpServers format of Claude Desktop)")]
    if not config.servers:
        return []
    hub = Hub(config)
    async with anyio.create_task_group() as tg:
        hub.start(tg)
        await hub.wait_ready(max(s.startup_timeout for s in config.servers.values()) + 1)
        tg.cancel_scope.cancel()
    checks = [Check("MCP servers file", True, str(path))]
    for server in hub.servers.values():
        if server.status == "ready":
            checks.append(Check(f"server {server.name}", True, f"{len(server.listed)} tools"))
        elif server.status == "disabled":
            checks.append(Check(f"server {server.name}", True, "disabled"))
        else:
            checks.append(
                Check(
                    f"server {server.name}",
                    False,
                    server.error or server.status,
                    "check its command/url in the servers file; run the command by hand to see why",
                )
            )
    return checks


async def run_doctor(settings: Settings) -> int:
    print(f"key4u-mcp doctor: checking {settings.base_url} with model {settings.model}\n", flush=True)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0)) as http:
        checks = await Doctor(settings, http).run()
    checks += await downstream_checks(settings)
    print(mask(table(checks), settings.secrets()))
    failed = [c for c in checks if not c.ok]
    verdict = "All checks passed: the bridge can use this gateway." if not failed else f"{len(failed)} check(s) failed."
    print(f"\n{verdict}")
    return 1 if failed else 0


def run(settings: Settings, args: argparse.Namespace) -> int:
    return anyio.run(run_doctor, settings)
