"""Start-up runs without the cyclic collector; the built server freezes what it made and collects again."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from mcp import Client

from server import startup
from server.cli.main import main
from server.config import Settings
from server.surface.app import build_server

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    yield
    startup._paused = False  # pyright: ignore[reportPrivateUsage]
    gc.enable()
    gc.unfreeze()


async def test_the_server_resumes_the_collection_start_up_paused() -> None:
    startup.pause()
    assert not gc.isenabled()
    server = build_server(Settings())
    assert not gc.isenabled()  # building it is start-up too
    async with Client(server) as client:
        assert gc.isenabled() and gc.get_freeze_count() > 0
        result = await client.call_tool("math_calculator", {"operation": "add", "a": 2, "b": 3})
        assert not result.is_error
        garbage: list[object] = []
        garbage.append(garbage)  # a cycle: only the collector frees it
        del garbage
        assert gc.collect() >= 1


async def test_a_collector_turned_off_elsewhere_stays_off() -> None:
    gc.disable()
    startup.pause()  # not its pause: nothing to undo
    async with Client(build_server(Settings())) as client:
        await client.list_tools()
        assert not gc.isenabled()


def test_commands_other_than_serving_resume_it_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "claude"]) == 0
    assert "key4u" in capsys.readouterr().out
    assert gc.isenabled()
