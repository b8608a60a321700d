"""The floor: the least an MCP bridge to ``/v1/responses`` can do, for the benchmarks to compare against.

One tool, ``respond(prompt)``: POST the prompt (streaming SSE, read with httpx-sse), run the function calls
the model asks for with the four local tools of ``tools/``, send their outputs back, and loop to the
answer. No state, no retries, no checks beyond pydantic's: what any bridge must pay at the least.
Reads ``FLOOR_BASE_URL``, ``FLOOR_API_KEY`` and ``FLOOR_STREAM`` (``0``: plain JSON replies).
"""

from __future__ import annotations

import json
import os
from typing import Any, cast

import httpx
from httpx_sse import aconnect_sse
from mcp.server import MCPServer
from pydantic import BaseModel, TypeAdapter

from tools import LOCAL_TOOLS, ToolInputError

server: MCPServer = MCPServer("floor", log_level="WARNING")  # as the bridge runs: no log line per request
TOOLS = {t.name: (TypeAdapter(cast(Any, t.fn)), t) for t in LOCAL_TOOLS}  # a function: validates its arguments
SPECS = {n: {"type": "function", "name": n, "description": t.description, "parameters": a.json_schema()}
         for n, (a, t) in TOOLS.items()}  # fmt: skip
URL, STREAM = os.environ.get("FLOOR_BASE_URL", "") + "/responses", os.environ.get("FLOOR_STREAM", "1") != "0"
HEADERS = {"Authorization": f"Bearer {os.environ.get('FLOOR_API_KEY', '')}"}
_http: list[httpx.AsyncClient] = []  # made on first use, on the server's event loop


async def _post(body: dict[str, Any]) -> dict[str, Any]:
    if not _http:
        _http.append(httpx.AsyncClient(timeout=120))
    http = _http[0]
    if not STREAM:
        return (await http.post(URL, json=body, headers=HEADERS)).raise_for_status().json()
    async with aconnect_sse(http, "POST", URL, json={**body, "stream": True}, headers=HEADERS) as source:
        async for event in source.aiter_sse():
            if event.event in ("response.completed", "response.incomplete", "response.failed"):
                return json.loads(event.data)["response"]
    raise RuntimeError("the stream ended without a terminal event")


def _run(name: str, arguments: str) -> str:
    try:
        result = TOOLS[name][0].validate_python(json.loads(arguments))
        return json.dumps(result.model_dump(mode="json") if isinstance(result, BaseModel) else result)
    except (KeyError, ValueError, ToolInputError) as exc:
        return f"Error: {type(exc).__name__}: {exc}"


@server.tool()
async def respond(
    prompt: str, tools: list[str] | None = None, max_turns: int = 8, functions: list[dict[str, Any]] | None = None
) -> str:
    """Send ``prompt`` to the model with the local tools (or only ``tools``) and the caller's ``functions``
    (MCP tool definitions, offered as they are); run its calls of local tools; return its answer."""
    items: list[dict[str, Any]] = [{"type": "message", "role": "user", "content": prompt}]
    offered = [SPECS[n] for n in (SPECS if tools is None else tools)]
    offered += [
        {"type": "function", "name": f["name"], "description": f.get("description", ""), "parameters": f["inputSchema"]}
        for f in functions or []
    ]
    for _ in range(max_turns):
        body = {"model": "gpt-4.1", "input": items, "store": False, "parallel_tool_calls": True}
        reply = await _post({**body, "tools": offered} if offered else body)
        calls = [i for i in reply["output"] if i["type"] == "function_call"]
        items += [{k: v for k, v in i.items() if k != "status"} for i in calls]
        if not calls:
            return "".join(p["text"] for i in reply["output"] if i["type"] == "message" for p in i["content"])
        items += [{"type": "function_call_output", "call_id": c["call_id"], "output": _run(c["name"], c["arguments"])}
                  for c in calls]  # fmt: skip
    return f"stopped after max_turns={max_turns}"


if __name__ == "__main__":
    server.run()
