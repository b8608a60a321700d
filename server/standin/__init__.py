"""An offline stand-in of an OpenAI-compatible gateway: a real HTTP server on loopback.

It speaks the wire formats of OpenAI's Responses API (``/v1/responses``) and Chat Completions
(``/v1/chat/completions``), plain JSON and SSE streams, checks requests the way the real
endpoints do, and answers deterministically, labelling every answer as its own (see ``model``).
``Faults`` switches on gateway misbehaviour and gateway personalities (no Responses route, or
Responses only for some models) for tests.

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

    @property
    def paths(self) -> list[str]:
        """Paths (``/v1/responses``, ``/v1/chat/completions``) of the requests past the key check, oldest first."""
        return self.state.paths

    def start(self) -> StandIn:
        super().start()
        return self

    def __enter__(self) -> StandIn:
        return self.start()
