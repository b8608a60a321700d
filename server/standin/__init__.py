"""An offline stand-in of the ``/v1/responses`` endpoint: a real HTTP server on loopback.

It speaks the wire format of OpenAI's Responses API (plain JSON and SSE streams), checks
requests the way the real endpoint does, and answers deterministically, labelling every
answer as its own (see ``model``). ``Faults`` switches on gateway misbehaviour for tests.

    with StandIn() as upstream:
        client = OpenAI(base_url=upstream.base_url, api_key="anything")
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from server.standin.app import Faults, StandInState, create_app, http_date
from server.standin.model import LABEL

__all__ = ["LABEL", "Faults", "StandIn", "http_date"]

logger = logging.getLogger(__name__)


class StandIn:
    """Runs the stand-in on ``host:port`` (port 0: a free one) in a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None) -> None:
        self.state = StandInState(api_key=api_key)
        self._host = host
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(create_app(self.state), log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=1)  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}/v1"

    @property
    def faults(self) -> Faults:
        return self.state.faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        self.state.faults = value

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Bodies of the requests received, oldest first."""
        return self.state.requests

    def start(self) -> StandIn:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="standin", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the offline stand-in did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._socket.close()

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
