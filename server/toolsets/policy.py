"""Which tools the remote model sees, and who runs each one.

A policy has ``allow`` and ``deny`` glob lists and per-tool ``modes`` (keys are globs too):

* ``run``: the bridge runs the tool itself;
* ``return``: the call is handed back to the caller as a pending call (a human in the loop);
* ``ask``: the person is asked to approve the call in the host's own UI (MCP elicitation) before it
  runs; where the host cannot ask, it is handed back as with ``return``;
* ``hidden``: the model never sees the tool.

Deny wins over allow. A downstream tool whose annotations do not say read-only defaults to
``ask`` (``KEY4U_ASK_WRITES``, on by default) or ``return``: nothing with side effects runs unless
a person or the caller said so.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["run", "return", "ask", "hidden"]

#: Joins a downstream server's name and its tool's name: ``<server>__<tool>``.
SEPARATOR = "__"


class Policy(BaseModel):
    """Allow and deny globs and per-tool modes for one set of tools: which the model sees, and who runs them."""

    model_config = ConfigDict(extra="forbid")
    allow: list[str] = Field(default_factory=lambda: ["*"])
    deny: list[str] = Field(default_factory=list)
    modes: dict[str, Mode] = Field(default_factory=dict)

    def mode_for(
        self, tool: str, *, read_only: bool | None, default: Mode | None = None, writes: Mode = "return"
    ) -> Mode:
        """The mode of ``tool``; ``hidden`` when the lists exclude it. ``writes`` is the mode of a tool
        that the policy does not name and that is not read-only, when there is no ``default``."""
        if not any(fnmatchcase(tool, p) for p in self.allow) or any(fnmatchcase(tool, p) for p in self.deny):
            return "hidden"
        if tool in self.modes:
            return self.modes[tool]
        for pattern, mode in self.modes.items():
            if fnmatchcase(tool, pattern):
                return mode
        if default is not None:
            return default
        return "run" if read_only else writes
