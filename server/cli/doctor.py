"""``key4u-mcp doctor``: does this gateway, key and model support what the bridge needs?

For each model it tries both APIs (plain, streaming, function calling) through the same adapters
the bridge uses, says which one the bridge will use, and tells a chat-only gateway from a wrong base URL.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import httpx

from server import errors
from server.config import Settings
from server.logs import mask, masked_url
from server.toolsets.hub import Hub, load_hub_config
from server.upstream.chat import ChatClient, ChatModel
from server.upstream.gateway import RetryPolicy, route_not_served
from server.upstream.model import Message, Model, ModelRequest, ModelResponse
from server.upstream.pricing import Prices, fetch_balance
from server.upstream.responses import ResponsesClient, ResponsesModel
from server.upstream.translation import to_function_tool

NO_RETRY = RetryPolicy(max_retries=0)

PROBE = to_function_tool(
    "get_magic_number",
    "Returns the magic number. Call it when asked for the magic number.",
    {"type": "object", "properties": {}},
    "get_magic_number",
)
WRONG_BASE = (
    "neither route exists here: KEY4U_BASE_URL is probably wrong; it must be the gateway's OpenAI-compatible "
    "base (e.g. https://api.key4u.shop/v1)"
)


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
    if isinstance(exc, errors.NotFoundError) and (exc.code == "model_not_found" or "model" in exc.message.lower()):
        return f"the gateway does not offer model {model!r} to this key: set KEY4U_MODEL to one it lists"
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

    async def run(self, models: list[str] | None = None) -> list[Check]:
        s = self.settings
        parts = urlsplit(s.base_url)
        self.add(
            "base URL",
            True,
            s.base_url,
            "" if parts.path.rstrip("/").endswith("/v1") else "most gateways need the URL to end in /v1",
        )
        await self._store()
        if s.api_key is None:
            self.add("API key", False, "not set", "set KEY4U_API_KEY (or OPENAI_API_KEY)")
            return self.checks
        key = s.api_key.get_secret_value()
        self.add("API key", True, masked(key))
        await self._models(key)
        await self._prices(models or [s.model])
        self.add("balance", True, (await fetch_balance(self.http, s.base_url, key)).summary())
        for model in models or [s.model]:
            await self._model(model, key)
        return self.checks

    async def _store(self) -> None:
        """The conversation store opens (PostgreSQL: connects and has its schema) and can be read."""
        from server.surface.app import open_store

        store = open_store(self.settings)
        url = self.settings.db_url
        where = masked_url(url.get_secret_value()) if url is not None else str(self.settings.database)
        try:
            count = await store.count()
        except errors.StoreError as exc:
            self.add("conversation store", False, str(exc), exc.hint or "")
        else:
            self.add("conversation store", True, f"{where}: {count} conversation(s)")
        finally:
            with contextlib.suppress(errors.StoreError):
                await store.aclose()

    async def _model(self, model: str, key: str) -> None:
        """Both APIs for ``model``: plain, streaming, function calling; then which one the bridge uses."""

        base = self.settings.base_url

        def responses(stream: bool) -> Model:
            return ResponsesModel(ResponsesClient(self.http, base_url=base, api_key=key, stream=stream, retry=NO_RETRY))

        def chat(stream: bool) -> Model:
            return ChatModel(ChatClient(self.http, base_url=base, api_key=key, stream=stream, retry=NO_RETRY))

        prefix = urlsplit(base).path.rstrip("/")  # the paths as requested, e.g. /v1/responses
        adapters: dict[str, Callable[[bool], Model]] = {
            f"{prefix}/responses": responses,
            f"{prefix}/chat/completions": chat,
        }
        refused: dict[str, errors.UpstreamError] = {}
        for route, make in adapters.items():
            failure = await self._probe(f"{model} {route}", make(False), model)
            if failure is not None:
                refused[route] = failure
                continue
            await self._probe(f"{model} {route}, streaming", make(True), model)
            await self._function_calling(f"{model} {route}, function calling", make(True), model)
        self._verdict(model, refused)

    def _verdict(self, model: str, refused: dict[str, errors.UpstreamError]) -> None:
        prefix = urlsplit(self.settings.base_url).path.rstrip("/")
        responses, chat = refused.get(f"{prefix}/responses"), refused.get(f"{prefix}/chat/completions")
        name = f"{model}: the bridge uses"
        if responses is None:
            self.add(name, True, "/v1/responses" + (" (chat completions works too)" if chat is None else ""))
        elif chat is None and route_not_served(responses):
            self.add(name, True, "/v1/chat/completions (this gateway's /v1/responses does not serve this model)")
        elif chat is None:
            self.add(
                name,
                False,
                f"nothing in auto mode: /v1/responses fails ({responses.summary[:120]})",
                "set KEY4U_API_STYLE=chat to use /v1/chat/completions, which works",
            )
        elif route_not_served(responses) and route_not_served(chat):
            parts = urlsplit(self.settings.base_url)
            guess = f"{parts.scheme}://{parts.netloc}/v1"
            fix = WRONG_BASE + ("" if parts.path.rstrip("/") == "/v1" else f"; try {guess}")
            self.add(name, False, "nothing: neither /responses nor /chat/completions exists at this base URL", fix)
        else:
            self.add(name, False, "nothing: both APIs fail for this model", advice(chat, model))

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
            body = mask(response.text, self.settings.secrets())[:200]  # masked before it is cut
            rejected = response.status_code in (401, 403) or "no connected db" in body.lower()
            self.add(
                "GET /models",
                False,
                f"HTTP {response.status_code}: {body}",
                "the key was rejected: copy it again from the gateway console into KEY4U_API_KEY"
                if rejected
                else "the gateway did not list its models; check KEY4U_BASE_URL",
            )

    async def _prices(self, models: list[str]) -> None:
        """What the gateway publishes (and KEY4U_PRICES sets), and each checked model's price. Informational:
        gateways outside the new-api family publish no prices, and the bridge works without them."""
        s = self.settings
        try:
            prices = Prices.for_settings(s, lambda: self.http)
        except ValueError as exc:
            self.add("prices", False, str(exc), "fix the file KEY4U_PRICES names, or unset it")
            return
        await prices.refresh()
        table = prices.table
        parts = [
            f"{len(table.models)} models priced by the gateway (GET /api/pricing)"
            if table is not None
            else f"none from the gateway: {prices.why_unpriced(models[0])}"
        ]
        if prices.file:
            parts.append(f"{len(prices.file)} from KEY4U_PRICES (they win)")
        fix = ""
        for model in models:
            rate = prices.rate(model)
            parts.append(
                f"{model} {rate.summary()} per 1M tokens" if rate else f"{model}: {prices.why_unpriced(model)}"
            )
            if rate is None and table is not None and s.group not in table.group_ratios:
                fix = "set KEY4U_GROUP to the key's group (see the gateway's pricing page)"
        self.add(f"prices (group {s.group})", True, "; ".join(parts), fix)

    async def _respond(self, name: str, model: Model, request: ModelRequest) -> ModelResponse | errors.UpstreamError:
        t0 = time.perf_counter()
        try:
            response = await model.respond(request)
        except errors.UpstreamError as exc:
            return exc
        self.last_ms = (time.perf_counter() - t0) * 1000
        return response

    async def _probe(self, name: str, model: Model, model_name: str) -> errors.UpstreamError | None:
        """One small request; the error when it fails (reported, with its fix), else None."""
        request = ModelRequest(model=model_name, items=[Message(role="user", text="Reply with the single word OK.")])
        response = await self._respond(name, model, request)
        if isinstance(response, errors.UpstreamError):
            not_served = route_not_served(response)
            detail = response.summary[:200] + (" (this route does not serve it)" if not_served else "")
            self.add(name, not_served, detail, "" if not_served else advice(response, model_name))
            return response
        stateless = "; store:false accepted" if name.endswith("/responses") else ""
        self.add(
            name,
            True,
            f"{response.status} in {self.last_ms:.0f} ms; model reported as {response.model}{stateless}; "
            f"said {response.text[:40]!r}",
        )
        return None

    async def _function_calling(self, name: str, model: Model, model_name: str) -> None:
        request = ModelRequest(
            model=model_name,
            items=[Message(role="user", text="What is the magic number?")],
            tools=[PROBE],
            tool_choice="required",
        )
        response = await self._respond(name, model, request)
        if isinstance(response, errors.UpstreamError):
            self.add(name, False, response.summary[:200], advice(response, model_name))
            return
        calls = response.function_calls
        if calls and calls[0].name == PROBE.api_name:
            self.add(name, True, f"the model called get_magic_number (call_id {calls[0].call_id})")
        else:
            self.add(
                name,
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


async def run_doctor(settings: Settings, models: list[str] | None = None) -> int:
    names = ", ".join(models or [settings.model])
    print(f"key4u-mcp doctor: checking {settings.base_url} with model {names}\n", flush=True)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0)) as http:
        checks = await Doctor(settings, http).run(models)
    checks += await downstream_checks(settings)
    print(mask(table(checks), settings.secrets()))
    failed = [c for c in checks if not c.ok]
    verdict = "All checks passed: the bridge can use this gateway." if not failed else f"{len(failed)} check(s) failed."
    print(f"\n{verdict}")
    return 1 if failed else 0


def run(settings: Settings, args: argparse.Namespace) -> int:
    return anyio.run(run_doctor, settings, getattr(args, "models", None))
