"""Images and files into the remote model, and images out of tools: a real MCP client, the bridge, the
stand-in over both APIs (it reports what media it received), and hostile paths, bytes and sizes."""

from __future__ import annotations

import base64
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from openai.types.chat import completion_create_params
from openai.types.responses import response_create_params
from PIL import Image
from pydantic import TypeAdapter

from server.bridge.attachments import MAX_IMAGE_BYTES, sniff
from server.config import Settings
from server.standin import StandIn
from tests.helpers import bridge_client, settings_for, text_of

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[3]
PDF = b"%PDF-1.4\n1 0 obj<< /Type /Catalog >>endobj\ntrailer<< /Root 1 0 R >>\n%%EOF\n"
CHAT_PARAMS = TypeAdapter(completion_create_params.CompletionCreateParamsStreaming)
RESPONSES_PARAMS = TypeAdapter(response_create_params.ResponseCreateParamsStreaming)


def png(size: tuple[int, int] = (8, 8), color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.fixture
def media(tmp_path: Path) -> Path:
    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "red.png").write_bytes(png())
    (folder / "paper.pdf").write_bytes(PDF)
    return folder


def screen_server(tmp_path: Path) -> Path:
    """A servers file naming the downstream fixture server "screen" (its snapshot tool and resources)."""
    servers = tmp_path / "servers.json"
    entry = {"command": sys.executable, "args": ["-m", "tests.fixtures.downstream_server"], "cwd": str(REPO)}
    servers.write_text(json.dumps({"mcpServers": {"screen": entry}}))
    return servers


def settings(standin: StandIn, tmp_path: Path, media: Path, **overrides: Any) -> Settings:
    return settings_for(standin.base_url, tmp_path, file_roots=str(media), **overrides)


async def respond(client: Client, **arguments: Any) -> tuple[dict[str, Any], str, bool]:
    result = await client.call_tool("key4u_respond", {"tools": [], **arguments})
    assert result.structured_content is not None, text_of(result)
    return result.structured_content, text_of(result), bool(result.is_error)


@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_a_png_and_a_pdf_by_path_and_by_data_uri_reach_the_model(
    api: str, standin: StandIn, tmp_path: Path, media: Path
) -> None:
    image, document = png(), PDF
    async with bridge_client(settings(standin, tmp_path, media)) as client:
        by_path, _, _ = await respond(
            client,
            prompt="What is in these?",
            images=[str(media / "red.png")],
            files=[str(media / "paper.pdf")],
            api=api,
        )
        by_data, _, _ = await respond(
            client,
            prompt="And these?",
            images=[data_uri("image/png", image)],
            files=[data_uri("application/pdf", document)],
            api=api,
        )
    for out in (by_path, by_data):
        assert out["status"] == "completed" and out["api"] == api
        assert f"Received 1 image(s): image/png, {len(image)} bytes and 1 file(s): " in out["text"]
        assert f"application/pdf, {len(document)} bytes." in out["text"]
    first, second = standin.requests
    body = json.dumps(first)
    assert base64.b64encode(image).decode() in body and base64.b64encode(document).decode() in body
    if api == "chat":
        (user,) = [m for m in first["messages"] if m["role"] == "user"]
        assert [p["type"] for p in user["content"]] == ["text", "image_url", "file"]
        assert user["content"][2]["file"]["filename"] == "paper.pdf"
        CHAT_PARAMS.validate_python(first)  # the official openai package's types accept the request
    else:
        (user,) = [i for i in first["input"] if i.get("role") == "user"]
        assert [p["type"] for p in user["content"]] == ["input_text", "input_image", "input_file"]
        assert user["content"][1]["image_url"].startswith("data:image/png;base64,")
        RESPONSES_PARAMS.validate_python(first)


async def test_an_https_url_is_passed_by_reference_never_fetched(standin: StandIn, tmp_path: Path, media: Path) -> None:
    async with bridge_client(settings(standin, tmp_path, media)) as client:
        out, _, _ = await respond(client, prompt="Look", images=["https://images.example/cat.png"])
    assert "by URL https://images.example/cat.png" in out["text"]
    (user,) = [i for i in standin.requests[0]["input"] if i.get("role") == "user"]
    assert user["content"][1] == {
        "type": "input_image",
        "image_url": "https://images.example/cat.png",
        "detail": "auto",
    }


async def test_a_document_by_url_over_chat_is_a_clear_error(standin: StandIn, tmp_path: Path, media: Path) -> None:
    async with bridge_client(settings(standin, tmp_path, media)) as client:
        out, _, is_error = await respond(client, prompt="Read", files=["https://docs.example/a.pdf"], api="chat")
    assert is_error and out["status"] == "failed"
    assert "Chat Completions cannot take a document by URL" in out["error"]
    assert not standin.requests  # refused before anything was sent


async def test_hostile_paths_bytes_and_sizes_are_refused_before_any_request(
    standin: StandIn, tmp_path: Path, media: Path
) -> None:
    outside = tmp_path / "secret.png"
    outside.write_bytes(png())
    (media / "escape.png").symlink_to(outside)  # inside the root, pointing out of it
    (media / "fake.png").write_bytes(b"this is not an image at all")
    (media / "renamed.png").write_bytes(PDF)
    huge = media / "huge.png"
    with huge.open("wb") as f:  # 2 GB, sparse: refused from its size, never read
        f.truncate(2 * 1024**3)
    (media / "folder").mkdir()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"images": [str(outside)]}, "outside the folders this server may read"),
        ({"images": [str(media / "escape.png")]}, "outside the folders this server may read"),
        ({"images": [str(media / "missing.png")]}, "no such file"),
        ({"images": [str(media / "folder")]}, "not a file"),
        ({"images": [str(media / "fake.png")]}, "not a PNG, JPEG, GIF or WebP image"),
        ({"images": [str(media / "renamed.png")]}, "it holds application/pdf"),
        ({"images": [str(huge)]}, "is too large"),
        ({"files": [str(media / "red.png")]}, "send images in images"),
        ({"images": ["data:image/png;base64,!!!"]}, "does not decode"),
        ({"images": ["data:text/plain,hello"]}, "data:<type>;base64,<data>"),
        ({"images": ["ftp://example.com/a.png"]}, "only local paths, https:// URLs and data: URIs"),
        ({"images": ["http://example.com/a.png"]}, "only https:// URLs"),
        ({"images": [str(media / "red.png")] * 11}, "at most 10 entries"),
    ]
    async with bridge_client(settings(standin, tmp_path, media)) as client:
        for arguments, expected in cases:
            result = await client.call_tool("key4u_respond", {"prompt": "look", **arguments})
            assert result.is_error and expected in text_of(result), (arguments, text_of(result))
        no_prompt = await client.call_tool("key4u_respond", {"images": [str(media / "red.png")]})
        assert no_prompt.is_error
        ok, _, _ = await respond(client, prompt="look", images=[str(media / "red.png")])  # the next call works
    assert ok["status"] == "completed" and len(standin.requests) == 1


async def test_a_large_image_is_scaled_down_before_it_is_sent(standin: StandIn, tmp_path: Path, media: Path) -> None:
    noisy = Image.frombytes("RGB", (3000, 3000), os.urandom(3000 * 3000 * 3))  # PNG cannot compress noise
    out = io.BytesIO()
    noisy.save(out, format="PNG")
    assert len(out.getvalue()) > MAX_IMAGE_BYTES
    (media / "big.png").write_bytes(out.getvalue())
    async with bridge_client(settings(standin, tmp_path, media)) as client:
        answer, _, _ = await respond(client, prompt="look", images=[str(media / "big.png")])
    assert answer["status"] == "completed" and "Received 1 image(s): image/jpeg" in answer["text"]
    (user,) = [i for i in standin.requests[0]["input"] if i.get("role") == "user"]
    sent = base64.b64decode(user["content"][1]["image_url"].split(",", 1)[1])
    assert len(sent) <= MAX_IMAGE_BYTES and sniff(sent) == "image/jpeg"
    with Image.open(io.BytesIO(sent)) as scaled:
        assert max(scaled.size) == 2048


@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_an_image_a_downstream_tool_returns_reaches_the_next_turn(
    api: str, standin: StandIn, tmp_path: Path, media: Path
) -> None:
    async with bridge_client(settings(standin, tmp_path, media, mcp_servers=screen_server(tmp_path))) as client:
        out, _, _ = await respond(client, prompt="Take a snapshot", tools=["screen__snapshot"], api=api)
    assert out["status"] == "completed" and out["tool_calls"][0]["name"] == "screen__snapshot"
    assert "Received 1 image(s): image/png, " in out["text"]
    second = standin.requests[1]
    messages = second["input"] if api == "responses" else second["messages"]
    last = messages[-1]
    assert last["role"] == "user" and len(last["content"]) == 1  # the images alone, after every output
    assert last["content"][0]["type"] == ("input_image" if api == "responses" else "image_url")
    (CHAT_PARAMS if api == "chat" else RESPONSES_PARAMS).validate_python(second)


async def test_the_transcript_keeps_the_size_not_the_bytes(standin: StandIn, tmp_path: Path, media: Path) -> None:
    async with bridge_client(settings(standin, tmp_path, media)) as client:
        out, _, _ = await respond(client, prompt="look", images=[str(media / "red.png")])
        read = await client.read_resource(out["transcript"])
    document = json.loads(getattr(read.contents[0], "text", ""))
    (attachment,) = document["items"][0]["attachments"]
    assert attachment["size"] == len(png()) and attachment["data"] is None and attachment["mime"] == "image/png"


@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_a_downstream_servers_resources_go_as_an_image_and_a_document(
    api: str, standin: StandIn, tmp_path: Path, media: Path
) -> None:
    async with bridge_client(settings(standin, tmp_path, media, mcp_servers=screen_server(tmp_path))) as client:
        out, _, _ = await respond(
            client,
            prompt="Look",
            images=["mcp:screen:snapshot://blue.png"],
            files=["mcp:screen:notes://paper.pdf"],
            api=api,
        )
        for wrong, expected in (
            ("mcp:nobody:snapshot://blue.png", "no downstream MCP server named 'nobody'"),
            ("mcp:screen:snapshot://missing.png", "could not read it"),
            ("mcp:screen", "mcp:<server>:<uri>"),
        ):
            result = await client.call_tool("key4u_respond", {"prompt": "look", "images": [wrong]})
            assert result.is_error and expected in text_of(result), text_of(result)
    assert out["status"] == "completed", out
    assert "Received 1 image(s): image/png, " in out["text"] and "application/pdf, " in out["text"]
    assert len(standin.requests) == 1


async def test_resources_need_downstream_servers(standin: StandIn, tmp_path: Path, media: Path) -> None:
    async with bridge_client(settings(standin, tmp_path, media)) as client:
        result = await client.call_tool("key4u_respond", {"prompt": "look", "images": ["mcp:fs:file:///a.png"]})
    assert result.is_error and "no downstream MCP servers are configured" in text_of(result)
