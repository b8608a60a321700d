"""Asking the person in the host to approve a call: an MCP elicitation form on the waiting request.

``HostApprover`` is built for each ``key4u_respond`` request and lives as long as that request waits.
It asks through the request's own channel (``related_request_id``), one form at a time (the members of
a group share it), and bounds each form by ``KEY4U_APPROVAL_TIMEOUT``: no answer is a denial. Where it
cannot ask (the host declared no form elicitation, the connection has no way to carry a request to the
host: stateless JSON HTTP or the 2026-07-28 protocol, whose ``input_required`` results this server
does not use yet), it says so and the call comes back to the caller as a pending call.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from mcp.server.mcpserver import Context
from mcp.shared.exceptions import MCPError, NoBackChannelError
from pydantic import ValidationError

from server.bridge.approval import ApprovalRequest, Verdict, form_message, form_schema, read_answer
from server.surface.budget import Host

logger = logging.getLogger(__name__)


class HostApprover:
    """Approval forms shown by the host of one waiting request."""

    def __init__(self, ctx: Context[Any], host: Host, timeout: float) -> None:
        self.ctx = ctx
        self.host = host
        self.timeout = timeout
        self._one_at_a_time = anyio.Lock()

    def cannot_ask(self) -> str | None:
        """Why this host cannot be shown a form, or None when it can."""
        session = self.ctx.request_context.session
        capabilities = session.client_capabilities
        if capabilities is None:  # stateless HTTP: this request does not carry what the host declared
            return (
                "this connection cannot carry a form to the host (stateless HTTP: the host's capabilities are unknown)"
            )
        elicitation = capabilities.elicitation
        if elicitation is None or (elicitation.form is None and elicitation.url is not None):
            return f"{self.host.name} does not show approval forms (MCP elicitation)"
        if not session.can_send_request:
            return "this connection cannot carry a form to the host (stateless HTTP, or the 2026-07-28 protocol)"
        return None

    async def ask(self, request: ApprovalRequest) -> Verdict:
        if (why := self.cannot_ask()) is not None:
            return Verdict("not asked", why)
        async with self._one_at_a_time:
            session = self.ctx.request_context.session
            try:
                with anyio.fail_after(self.timeout):
                    answer = await session.elicit_form(
                        form_message(request), form_schema(request), related_request_id=self.ctx.request_id
                    )
            except TimeoutError:
                return Verdict("no answer", f"the user in {self.host.name}", f"no answer within {self.timeout:g} s")
            except NoBackChannelError:
                return Verdict("not asked", "this connection cannot carry a form to the host")
            except (MCPError, ValidationError) as exc:  # a host that refuses the form, or answers nonsense
                logger.warning("the approval form for %s failed: %s", request.tool, exc)
                return Verdict("not asked", f"{self.host.name} could not show the approval form")
        return read_answer(request, answer.action, answer.content, f"the user in {self.host.name}")


__all__ = ["HostApprover"]
