"""An offline stand-in of the ``/v1/responses`` endpoint: a real HTTP server on loopback.

It speaks the wire format of OpenAI's Responses API (plain JSON and SSE streams), checks
requests the way the real endpoint does, and answers deterministically, labelling every
answer as its own (see ``model``). ``Faults`` switches on gateway misbehaviour for tests.

    with StandIn() as upstream:
        client = OpenAI(base_url=upstream.base_url, api_key="anything")
"""

from __future__ import annotations

from typing import Any

from server.standin.app import Faults, StandInState, create_app, http_date
from server.standin.model import LABEL
from server.transports.asgi_thread import ThreadedServer

__all__ = ["LABEL", "Faults", "StandIn", "http_date"]


class StandIn(ThreadedServer):
    """The stand-in on ``host:port`` (port 0: a free one), served from a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None) -> None:
        self.state = StandInState(api_key=api_key)
        super().__init__(create_app(self.state), host, port)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

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
        super().start()
        return self

    def __enter__(self) -> StandIn:
        return self.start()
