"""A lifespan that dies while serving: a task in the bridge's task group raises once a trigger fires.

``install(trigger)`` patches ``server.bridge.service.Bridge`` (in this process) so that every bridge
made afterwards starts that task, and ``server.surface.app.AppState`` so that the bridge is made at
start-up rather than on first use. Run as a module it is ``key4u-mcp`` with the patches, the trigger
being a file:

    python -m tests.server.transports.broken_lifespan TRIGGER_FILE --transport http --port N
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

import server.bridge.service as service_module
import server.surface.app as app_module
from server.bridge.service import Bridge

MESSAGE = "a component of the lifespan failed (broken_lifespan)"


def install(trigger: Callable[[], bool]) -> None:
    def broken_bridge(*args: Any, **kwargs: Any) -> Bridge:
        bridge = Bridge(*args, **kwargs)
        task_group = next(a for a in [*args, *kwargs.values()] if isinstance(a, TaskGroup))

        async def explode() -> None:
            while not trigger():
                await anyio.sleep(0.02)
            raise RuntimeError(MESSAGE)

        task_group.start_soon(explode)
        return bridge

    class MadeAtOnce(app_module.AppState):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.made = self.make_bridge()

    service_module.Bridge = broken_bridge  # type: ignore[assignment,misc]
    app_module.AppState = MadeAtOnce  # type: ignore[misc]


if __name__ == "__main__":
    trigger_file = Path(sys.argv[1])
    install(trigger_file.exists)
    from server.cli.main import main

    sys.exit(main(sys.argv[2:]))
