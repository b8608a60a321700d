"""Approving side effects where the user is: ``ask`` tools, MCP elicitation forms through the SDK's real
client (in memory, over stdio and over HTTP), and the pending-call fallback for hosts without forms.

The downstream fixture's ``delete_file`` really deletes a file: a test that denies it checks the file
is still there."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import ElicitRequestParams, ElicitResult

from server.config import Settings
from server.standin import StandIn
from server.surface.app import build_server
from tests.conftest import FAKE_KEY
from tests.helpers import settings_for, text_of
from tests.server.transports.serving import served

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[3]
NOTES = {"command": sys.executable, "args": ["-m", "tests.fixtures.downstream_server"], "cwd": str(REPO)}

Answer = Callable[[ElicitRequestParams], ElicitResult]


class Person:
    """The user in the host: answers each approval form as told, and keeps what the forms said."""

    def __init__(self, *answers: dict[str, Any] | str, delay: float = 0.0) -> None:
        self.answers = list(answers)
        self.delay = delay
        self.forms: list[ElicitRequestParams] = []

    async def __call__(self, context: Any, params: ElicitRequestParams) -> ElicitResult:
        self.forms.append(params)
        await anyio.sleep(self.delay)
        answer = self.answers.pop(0) if self.answers else "decline"
        if isinstance(answer, str):  # "decline" or "cancel": the form closed without a decision
            return ElicitResult(action=answer)  # type: ignore[arg-type]
        return ElicitResult(action="accept", content=answer)

    def schema(self, n: int = 0) -> dict[str, Any]:
        return dict(getattr(self.forms[n], "requested_schema", {}) or {})

    def message(self, n: int = 0) -> str:
        return str(getattr(self.forms[n], "message", ""))


def settings_with_notes(standin: StandIn, tmp_path: Path, **overrides: Any) -> Settings:
    servers = tmp_path / "servers.json"
    servers.write_text(json.dumps({"mcpServers": {"notes": NOTES}}))
    return settings_for(standin.base_url, tmp_path, mcp_servers=servers, **overrides)


@asynccontextmanager
async def host(settings: Settings, person: Person | None) -> AsyncIterator[Client]:
    async with Client(build_server(settings), mode="legacy", elicitation_callback=person) as client:  # type: ignore[arg-type]
        yield client


async def respond(client: Client, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool("key4u_respond", arguments)
    assert result.structured_content is not None, text_of(result)
    return result.structured_content


def victim(tmp_path: Path) -> Path:
    path = tmp_path / "precious.txt"
    path.write_text("keep me")
    return path


def delete_prompt(path: Path) -> dict[str, Any]:
    return {"prompt": f'Please delete the file "{path}"', "tools": ["notes__delete_file"]}


async def test_an_approved_call_runs_and_the_form_shows_tool_server_and_arguments(
    standin: StandIn, tmp_path: Path
) -> None:
    path = victim(tmp_path)
    person = Person({"decision": "approve"})
    async with host(settings_with_notes(standin, tmp_path), person) as client:
        out = await respond(client, **delete_prompt(path))
    assert out["status"] == "completed" and not path.exists()
    (call,) = out["tool_calls"]
    assert call["name"] == "notes__delete_file" and call["ok"] and call["approval"].startswith("approved (the user in")
    (form,) = person.forms
    assert "notes__delete_file" in person.message() and "'notes'" in person.message() and str(path) in person.message()
    schema = person.schema()
    assert schema["properties"]["decision"]["enum"] == ["approve", "deny", "approve for this conversation"]
    assert schema["properties"]["path"] == {"type": "string", "title": "path", "default": str(path)}
    assert schema["required"] == ["decision"]
    assert form.mode in (None, "form")
    assert FAKE_KEY not in json.dumps(out) + person.message()


async def test_a_denied_call_never_runs_and_the_model_hears_why(standin: StandIn, tmp_path: Path) -> None:
    path = victim(tmp_path)
    person = Person({"decision": "deny", "reason": "not this one"})
    async with host(settings_with_notes(standin, tmp_path), person) as client:
        out = await respond(client, **delete_prompt(path))
        transcript = await client.read_resource(out["transcript"])
    assert path.read_text() == "keep me"
    assert out["status"] == "completed"  # the model was told, and answered
    (call,) = out["tool_calls"]
    assert not call["ok"] and "did not approve" in call["output"] and "not this one" in call["output"]
    sent = json.dumps(standin.requests[-1]["input"])
    assert "did not approve this call of notes__delete_file (denied): not this one" in sent
    document = json.loads(getattr(transcript.contents[0], "text", ""))
    (approval,) = document["approvals"]
    assert approval["decision"] == "denied" and approval["reason"] == "not this one"
    assert approval["tool"] == "notes__delete_file" and approval["by"].startswith("the user in")


@pytest.mark.parametrize("closed", ["decline", "cancel"])
async def test_a_form_closed_without_a_decision_denies(closed: str, standin: StandIn, tmp_path: Path) -> None:
    path = victim(tmp_path)
    async with host(settings_with_notes(standin, tmp_path), Person(closed)) as client:
        out = await respond(client, **delete_prompt(path))
    assert path.exists() and not out["tool_calls"][0]["ok"]
    assert "the user" in out["tool_calls"][0]["output"]


async def test_no_answer_within_the_bound_is_a_denial(standin: StandIn, tmp_path: Path) -> None:
    path = victim(tmp_path)
    person = Person({"decision": "approve"}, delay=2.0)  # answers, but too late
    async with host(settings_with_notes(standin, tmp_path, approval_timeout=0.5), person) as client:
        out = await respond(client, **delete_prompt(path))
    assert path.exists()
    (call,) = out["tool_calls"]
    assert not call["ok"] and "(no answer): no answer within 0.5 s" in call["output"]


async def test_approve_for_the_conversation_asks_once(standin: StandIn, tmp_path: Path) -> None:
    person = Person({"decision": "approve for this conversation"})
    async with host(settings_with_notes(standin, tmp_path), person) as client:
        first = await respond(client, prompt='write a note "one"', tools=["notes__write_note"])
        second = await respond(client, conversation_id=first["conversation_id"], prompt='write a note "two"')
        other = await respond(client, prompt='write a note "three"', tools=["notes__write_note"])
    assert len(person.forms) == 2  # the first conversation asked once; the new one asks again
    assert first["tool_calls"][0]["ok"] and "noted: one" in first["tool_calls"][0]["output"]
    assert second["status"] == "completed" and second["tool_calls"][0]["ok"]
    assert "approved for this conversation earlier" in second["tool_calls"][0]["approval"]
    assert other["status"] == "completed" and not other["tool_calls"][0]["ok"]  # the person's answers ran out


async def test_the_person_may_correct_a_simple_argument_before_approving(standin: StandIn, tmp_path: Path) -> None:
    person = Person({"decision": "approve", "text": "buy oat milk"})
    async with host(settings_with_notes(standin, tmp_path), person) as client:
        out = await respond(client, prompt='write a note "buy milk"', tools=["notes__write_note"])
        transcript = await client.read_resource(out["transcript"])
    (call,) = out["tool_calls"]
    assert call["arguments"] == {"text": "buy oat milk"} and "noted: buy oat milk" in call["output"]
    (approval,) = json.loads(getattr(transcript.contents[0], "text", ""))["approvals"]
    assert approval["edited"] == ["text"]


async def test_several_calls_in_one_turn_are_asked_one_after_another(standin: StandIn, tmp_path: Path) -> None:
    path = victim(tmp_path)
    person = Person({"decision": "deny"}, {"decision": "approve"})
    prompt = f'Please delete the file "{path}" and write a note'
    async with host(settings_with_notes(standin, tmp_path), person) as client:
        out = await respond(client, prompt=prompt, tools=["notes__delete_file", "notes__write_note"])
    assert len(person.forms) == 2 and path.exists()
    by_name = {c["name"]: c for c in out["tool_calls"]}
    assert not by_name["notes__delete_file"]["ok"] and by_name["notes__write_note"]["ok"]


async def test_a_host_without_forms_gets_the_call_back_as_pending(standin: StandIn, tmp_path: Path) -> None:
    path = victim(tmp_path)
    async with host(settings_with_notes(standin, tmp_path), None) as client:
        out = await respond(client, **delete_prompt(path))
        assert path.exists() and out["status"] == "requires_action"
        (pending,) = out["pending_calls"]
        assert pending["name"] == "notes__delete_file" and pending["arguments"] == {"path": str(path)}
        assert any("does not show approval forms" in n and "pending call" in n for n in out["notes"])
        done = await respond(
            client,
            conversation_id=out["conversation_id"],
            function_outputs=[{"call_id": pending["call_id"], "output": "the user deleted it by hand"}],
        )
    assert done["status"] == "completed" and path.exists()


async def test_ask_writes_off_keeps_the_pending_call_flow(standin: StandIn, tmp_path: Path) -> None:
    person = Person({"decision": "approve"})
    async with host(settings_with_notes(standin, tmp_path, ask_writes=False), person) as client:
        out = await respond(client, prompt='write a note "x"', tools=["notes__write_note"])
    assert out["status"] == "requires_action" and not person.forms


async def test_approval_over_stdio(standin: StandIn, tmp_path: Path) -> None:
    path = victim(tmp_path)
    servers = tmp_path / "servers.json"
    servers.write_text(json.dumps({"mcpServers": {"notes": NOTES}}))
    env = {
        "KEY4U_API_KEY": FAKE_KEY,
        "KEY4U_BASE_URL": standin.base_url,
        "KEY4U_DB_PATH": str(tmp_path / "db.sqlite3"),
        "KEY4U_MCP_SERVERS": str(servers),
    }
    person = Person({"decision": "approve"})
    params = StdioServerParameters(command=sys.executable, args=["-m", "server"], env=env, cwd=str(REPO))
    with (tmp_path / "err.txt").open("w") as err:
        async with Client(stdio_client(params, errlog=err), mode="legacy", elicitation_callback=person) as client:
            out = await respond(client, **delete_prompt(path))
    assert out["status"] == "completed" and not path.exists() and len(person.forms) == 1


@pytest.mark.parametrize("stateless", [False, True], ids=["stateful", "stateless"])
async def test_approval_over_http(stateless: bool, standin: StandIn, tmp_path: Path) -> None:
    path = victim(tmp_path)
    person = Person({"decision": "approve"})
    with served(settings_with_notes(standin, tmp_path), stateless=stateless) as server:
        async with (
            httpx2.AsyncClient(timeout=30) as http,
            Client(
                streamable_http_client(f"{server.url}/mcp", http_client=http),
                mode="legacy",
                elicitation_callback=person,
            ) as client,
        ):
            out = await respond(client, **delete_prompt(path))
    if person.forms:  # the request's stream carried the form
        assert out["status"] == "completed" and not path.exists()
    else:  # no way to reach the host: the call came back, the file is untouched
        assert out["status"] == "requires_action" and path.exists()
        assert any("cannot carry a form" in n for n in out["notes"]), out["notes"]
    if not stateless:
        assert person.forms, "a stateful HTTP session carries forms"


async def test_the_2026_07_28_protocol_gets_the_call_back_as_pending(standin: StandIn, tmp_path: Path) -> None:
    """That era has no server-to-client requests (elicitation travels as input_required results, which this
    server does not use yet): the call comes back, and the note says why."""
    path = victim(tmp_path)
    person = Person({"decision": "approve"})
    settings = settings_with_notes(standin, tmp_path)
    async with Client(build_server(settings), mode="2026-07-28", elicitation_callback=person) as client:  # type: ignore[arg-type]
        out = await respond(client, **delete_prompt(path))
    assert out["status"] == "requires_action" and path.exists() and not person.forms
    assert any("cannot carry a form" in n for n in out["notes"]), out["notes"]
