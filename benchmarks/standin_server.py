"""The offline stand-in in its own process, with a control route for the benchmarks:

* ``POST /bench/faults`` with a JSON object of ``Faults`` fields replaces the stand-in's faults;
* ``GET /bench/requests?since=N`` returns ``{"count": total, "bodies": [...]}``: the request bodies the
  stand-in received from the N-th on (what a bridge sent, to replay it as a direct POST);
* ``POST /bench/clear`` forgets the bodies and stored responses (long runs stay small).

Everything else is the stand-in itself (``server.standin.app.create_app``), unchanged.

    python -m benchmarks.standin_server   # prints the base URL on its first line
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import parse_qs

from server.standin.app import create_app
from server.standin.common import Faults, StandInState
from server.transports.asgi_thread import ThreadedServer


def control_app(state: StandInState) -> Any:
    inner = create_app(state)
    offset = 0  # bodies forgotten by /bench/clear, so that indices stay valid across a clear

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal offset
        if scope["type"] != "http" or not scope["path"].startswith("/bench/"):
            await inner(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        reply: dict[str, Any] = {}
        if path == "/bench/faults":
            state.faults = Faults(**json.loads(body or b"{}"))
        elif path == "/bench/requests":
            query = parse_qs(scope.get("query_string", b"").decode())
            since = int(query.get("since", ["0"])[0])
            reply = {"count": offset + len(state.requests), "bodies": state.requests[max(0, since - offset) :]}
        elif path == "/bench/clear":
            offset += len(state.requests)
            state.requests.clear()
            state.stored.clear()
        payload = json.dumps(reply).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return app


def main() -> None:
    state = StandInState()
    server = ThreadedServer(control_app(state), "127.0.0.1", 0).start()
    print(f"Offline stand-in (benchmark control) at {server.url}/v1", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
