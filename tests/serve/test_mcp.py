"""The MCP face (issue 24), driven by the official `mcp` SDK: over stdio as MCP clients launch
`nanoedit mcp` (an empty environment: the embedded emulator), and over Streamable HTTP at
`/mcp` on `nanoedit serve` with tenant keys (a wrong key is refused)."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
from aiohttp.test_utils import TestServer
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from engine import Engine
from engine.serve import ServeOptions, create_app
from tests.conftest import EmulatorFactory, config_for

TOOLS = {
    "create_session",
    "edit",
    "undo",
    "redo",
    "fork",
    "list_sessions",
    "get_session",
    "get_image",
}


async def _workflow(session: ClientSession) -> dict[str, Any]:
    """List tools, create, edit twice (with progress), undo, fork, get_image."""
    await session.initialize()
    tools = {t.name: t for t in (await session.list_tools()).tools}
    assert set(tools) >= TOOLS
    assert tools["edit"].description and "prompt" in tools["edit"].input_schema["properties"]
    created = await session.call_tool("create_session", {"title": "mug"})
    assert not created.is_error, created.content
    sid = created.structured_content["id"]
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    first = await session.call_tool(
        "edit",
        {"session_id": sid, "prompt": "a mug on an oak table"},
        progress_callback=on_progress,
    )
    assert not first.is_error, first.content
    kinds = [c.type for c in first.content]
    assert kinds.count("image") == 1 and "text" in kinds
    image = next(c for c in first.content if c.type == "image")
    data = base64.b64decode(image.data)
    assert data[:4] == b"\x89PNG" and image.mime_type == "image/png"
    turn = first.structured_content
    assert turn is not None and turn["index"] == 1
    assert turn["images"][0]["sha256"] == hashlib.sha256(data).hexdigest()
    assert seen and any(m == "image ready" for _, _, m in seen)
    second = await session.call_tool("edit", {"session_id": sid, "prompt": "make it blue"})
    assert second.structured_content["index"] == 2
    undone = await session.call_tool("undo", {"session_id": sid})
    assert len(undone.structured_content["turns"]) == 1
    forked = await session.call_tool("fork", {"session_id": sid, "at": 1})
    assert forked.structured_content["id"] != sid
    got = await session.call_tool("get_image", {"sha256": turn["images"][0]["sha256"]})
    assert base64.b64decode(next(c for c in got.content if c.type == "image").data) == data
    listed = await session.call_tool("list_sessions", {})
    assert len(listed.structured_content["sessions"]) == 2
    missing = await session.call_tool("get_session", {"session_id": "nope"})
    assert missing.is_error
    return {"sid": sid, "sha": turn["images"][0]["sha256"]}


def _readme_entry() -> dict[str, Any]:
    """The MCP client config entry the README gives."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    line = next(x for x in readme.splitlines() if x.startswith('{"mcpServers"'))
    entry: dict[str, Any] = json.loads(line)["mcpServers"]["nanoedit"]
    return entry


async def test_mcp_over_stdio_with_an_empty_environment(tmp_path: Any) -> None:
    """`nanoedit mcp` launched as the README's MCP client config launches it, with an empty
    environment (but the data directory): the embedded emulator; the whole workflow over
    stdio."""
    entry = _readme_entry()
    command = shutil.which(entry["command"], path=str(Path(sys.executable).parent))
    assert command is not None and entry["args"] == ["mcp"]
    params = StdioServerParameters(
        command=command,
        args=entry["args"],
        env={"NANOEDIT_HOME": str(tmp_path / "home")},
        cwd=str(tmp_path),
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await _workflow(session)


@asynccontextmanager
async def _http_session(url: str, key: str) -> AsyncIterator[ClientSession]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as http,
        streamable_http_client(url, http_client=http) as (read, write, *_),
        ClientSession(read, write) as session,
    ):
        yield session


async def test_mcp_over_streamable_http_on_serve(make_emulator: EmulatorFactory) -> None:
    """/mcp on `nanoedit serve`: the workflow with a tenant key; another tenant cannot read the
    first one's image; a wrong key is refused with 401 before any MCP session."""
    emu = await make_emulator()
    engine = Engine(config_for(emu.base_url))
    await engine.start()
    keys = {"alice": ["alice-key-0001"], "bob": ["bob-key-0002"]}
    server = TestServer(create_app(engine, ServeOptions(keys=keys)), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("/mcp"))
    try:
        async with _http_session(url, "alice-key-0001") as session:
            found = await _workflow(session)
        async with _http_session(url, "bob-key-0002") as session:
            await session.initialize()
            theirs = await session.call_tool("get_image", {"sha256": found["sha"]})
            assert theirs.is_error
            listed = await session.call_tool("list_sessions", {})
            assert listed.structured_content == {"sessions": []}
        async with httpx2.AsyncClient() as http:
            refused = await http.post(
                url, json={}, headers={"Authorization": "Bearer wrong", "Accept": "*/*"}
            )
            assert refused.status_code == 401
    finally:
        await server.close()
        await engine.aclose()
