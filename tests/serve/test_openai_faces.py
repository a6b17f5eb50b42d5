"""The OpenAI-compatible faces of `nanoedit serve` (issue 24), driven by the official `openai`
SDK as chat products drive them: models, chat completions (plain, streamed, a conversation
resent in full that stays one session, an edited earlier message that branches), images
generate and edit, responses chained and branched, errors in OpenAI's shape."""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer
from PIL import Image, ImageChops, ImageDraw

from engine import Engine
from engine.serve import ServeOptions, create_app
from tests.conftest import EmulatorFactory, config_for, png

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")

KEYS = {"alice": ["alice-key-0001"], "bob": ["bob-key-0002"]}


class Face:
    """A gateway, an OpenAI client of it per key, and a plain HTTP client."""

    def __init__(self, base: str, engine: Engine, http: aiohttp.ClientSession) -> None:
        self.base = base
        self.engine = engine
        self.http = http
        self.clients: list[openai.AsyncOpenAI] = []

    def client(self, key: str = "alice-key-0001") -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=self.base + "/v1", api_key=key, max_retries=0)
        self.clients.append(client)
        return client

    async def session(self, session_id: str) -> dict[str, Any]:
        headers = {"Authorization": "Bearer alice-key-0001"}
        async with self.http.get(
            f"{self.base}/v1/sessions/{session_id}?tree=1", headers=headers
        ) as r:
            assert r.status == 200
            doc: dict[str, Any] = await r.json()
            return doc

    async def sessions(self) -> list[dict[str, Any]]:
        headers = {"Authorization": "Bearer alice-key-0001"}
        async with self.http.get(f"{self.base}/v1/sessions", headers=headers) as r:
            doc = await r.json()
            return list(doc["sessions"])


@pytest.fixture
async def face(make_emulator: EmulatorFactory) -> AsyncIterator[Callable[..., Awaitable[Face]]]:
    """Start gateways with tenants; closed afterwards."""
    started: list[tuple[TestServer, Engine, Face]] = []

    async def factory(**options: Any) -> Face:
        emu = await make_emulator()
        engine = Engine(config_for(emu.base_url))
        await engine.start()
        app = create_app(engine, ServeOptions(keys=KEYS, **options))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        made = Face(str(server.make_url("")).rstrip("/"), engine, aiohttp.ClientSession())
        started.append((server, engine, made))
        return made

    yield factory
    for server, engine, made in reversed(started):
        for client in made.clients:
            await client.close()
        await made.http.close()
        await server.close()
        await engine.aclose()


def _images(message: Any) -> list[str]:
    extra = message.model_extra or {}
    return [i["image_url"]["url"] for i in extra.get("images", [])]


def _sha(data_url: str) -> str:
    return hashlib.sha256(base64.b64decode(data_url.split(",", 1)[1])).hexdigest()


async def test_models_list_the_image_models_and_aliases(face: Any) -> None:
    """GET /v1/models in OpenAI's list shape: ids and aliases, no shut-down model."""
    f = await face()
    models = [m.id async for m in f.client().models.list()]
    assert "gemini-nano-banana-2.1" in models and "nano-banana-2.1" in models
    assert "gemini-2.5-flash-image" not in models


async def test_a_conversation_resent_in_full_stays_one_session(face: Any) -> None:
    """Three turns, each request carrying the whole conversation as a chat product sends it
    (assistant images as data URLs): one session with three turns, each continuing the last;
    the answer carries text, an image and the real usage and cost."""
    f = await face()
    client = f.client()
    messages: list[dict[str, Any]] = []
    ids = set()
    for prompt in ("a mug on an oak table", "make the mug blue", "add a eucalyptus sprig"):
        messages.append({"role": "user", "content": prompt})
        answer = await client.chat.completions.create(
            model="nano-banana-2.1",
            messages=messages,
        )
        message = answer.choices[0].message
        images = _images(message)
        assert message.content and len(images) == 1 and images[0].startswith("data:image/")
        usage = answer.usage
        assert usage is not None and usage.prompt_tokens > 0
        assert (usage.model_extra or {})["cost"] > 0
        ids.add((answer.model_extra or {})["nanoedit"]["session_id"])
        messages.append(
            {"role": "assistant", "content": message.content, "images": [
                {"type": "image_url", "image_url": {"url": images[0]}}]}
        )  # fmt: skip
    assert len(ids) == 1
    session = await f.session(ids.pop())
    assert [t["prompt"] for t in session["turns"]] == [
        "a mug on an oak table",
        "make the mug blue",
        "add a eucalyptus sprig",
    ]
    assert len(await f.sessions()) == 1
    # The assistant images the client sent back are the session's own answers.
    assert _sha(images[0]) == session["turns"][-1]["images"][0]["sha256"]


async def test_editing_an_earlier_message_makes_a_branch(face: Any) -> None:
    """A chat UI's "edit message": the conversation up to turn 1, then a different prompt,
    continues the same session from turn 1 as a new branch (image_url parts this time)."""
    f = await face()
    client = f.client()
    first = await client.chat.completions.create(
        model="nano-banana-2.1", messages=[{"role": "user", "content": "a mug"}]
    )
    url = _images(first.choices[0].message)[0]
    history: list[Any] = [
        {"role": "user", "content": "a mug"},
        {"role": "assistant", "content": [
            {"type": "text", "text": first.choices[0].message.content or ""},
            {"type": "image_url", "image_url": {"url": url}}]},
    ]  # fmt: skip
    await client.chat.completions.create(
        model="nano-banana-2.1", messages=[*history, {"role": "user", "content": "make it blue"}]
    )
    edited = await client.chat.completions.create(
        model="nano-banana-2.1", messages=[*history, {"role": "user", "content": "make it red"}]
    )
    session_id = (edited.model_extra or {})["nanoedit"]["session_id"]
    session = await f.session(session_id)
    assert len(await f.sessions()) == 1
    branches = session["branches"]
    assert sorted(b[-1]["prompt"] for b in branches) == ["make it blue", "make it red"]
    assert all(b[0]["prompt"] == "a mug" for b in branches)


async def test_a_streamed_chat_completion(face: Any) -> None:
    """stream=True: chat.completion.chunks with the text, then the image in a delta, the usage
    on the last chunk, then [DONE]."""
    f = await face(chat_images="url")
    stream = await f.client().chat.completions.create(
        model="nano-banana-2.1", messages=[{"role": "user", "content": "a mug"}], stream=True
    )
    text, images, usage = "", [], None
    async for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta
            text += delta.content or ""
            images += (delta.model_extra or {}).get("images", [])
        if chunk.usage is not None:
            usage = chunk.usage
    assert text and len(images) == 1 and usage is not None and usage.total_tokens > 0
    url = images[0]["image_url"]["url"]
    assert url.startswith(f.base + "/v1/images/")
    async with f.http.get(url, headers={"Authorization": "Bearer alice-key-0001"}) as r:
        assert r.status == 200 and (await r.read())[:4] == b"\x89PNG"


async def test_an_unknown_conversation_is_imported(face: Any) -> None:
    """A conversation the server never saw (its images are the client's own) starts a new
    session whose first turn is imported from the messages; the new turn follows it."""
    f = await face()
    mine = "data:image/png;base64," + base64.b64encode(png(32, 32)).decode()
    answer = await f.client().chat.completions.create(
        model="nano-banana-2.1",
        messages=[
            {"role": "user", "content": "a red square"},
            {"role": "assistant", "content": f"Here it is ![square]({mine})"},
            {"role": "user", "content": "make it green"},
        ],
    )
    session = await f.session((answer.model_extra or {})["nanoedit"]["session_id"])
    turns = session["turns"]
    assert [t["prompt"] for t in turns] == ["a red square", "make it green"]
    assert turns[0]["images"][0]["sha256"] == hashlib.sha256(png(32, 32)).hexdigest()


async def test_images_generate_and_an_edit_continues_the_session(face: Any) -> None:
    """images.generate makes a session; images.edit of its latest image continues it (one
    session, three turns); n=2 gives two sibling variants; a mask confines the edit."""
    f = await face()
    client = f.client()
    made = await client.images.generate(model="nano-banana-2.1", prompt="a mug", size="1024x1024")
    assert made.data and made.data[0].b64_json
    first = base64.b64decode(made.data[0].b64_json)
    edited = await client.images.edit(
        model="nano-banana-2.1", image=("mug.png", first, "image/png"), prompt="make it blue", n=2
    )
    assert edited.data is not None and len(edited.data) == 2
    sessions = await f.sessions()
    assert len(sessions) == 1 and sessions[0]["total_turns"] == 3
    # A mask (transparent where the image may change, as OpenAI's) is a region edit: every
    # pixel outside it (beyond the feather) stays, on an image the server never drew too.
    upload = Image.new("RGB", (640, 480), (30, 90, 160))
    ImageDraw.Draw(upload).rectangle((400, 300, 600, 450), fill=(220, 200, 40))
    mask = Image.new("RGBA", (640, 480), (0, 0, 0, 255))
    ImageDraw.Draw(mask).rectangle((50, 50, 300, 250), fill=(0, 0, 0, 0))
    masked = await client.images.edit(
        model="nano-banana-2.1",
        image=("photo.png", _png(upload), "image/png"),
        mask=("mask.png", _png(mask), "image/png"),
        prompt="add a red circle",
    )
    assert masked.data and masked.data[0].b64_json
    after = Image.open(io.BytesIO(base64.b64decode(masked.data[0].b64_json))).convert("RGB")
    changed = ImageChops.difference(upload, after).getbbox()
    assert changed is not None  # the edit did something, inside the box and its seam only
    assert changed[0] >= 50 - 8 and changed[1] >= 50 - 8
    assert changed[2] <= 301 + 8 and changed[3] <= 251 + 8


def _png(image: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


async def test_responses_chain_and_branch(face: Any) -> None:
    """responses.create with previous_response_id chained three deep is one session of three
    turns; continuing from the first again branches; GET /v1/responses/{id} returns it."""
    f = await face()
    client = f.client()
    one = await client.responses.create(model="nano-banana-2.1", input="a mug")
    two = await client.responses.create(
        model="nano-banana-2.1", input="make it blue", previous_response_id=one.id
    )
    three = await client.responses.create(
        model="nano-banana-2.1", input="add a sprig", previous_response_id=two.id
    )
    kinds = [item.type for item in three.output]
    assert kinds == ["image_generation_call", "message"]
    assert base64.b64decode(three.output[0].result)[:4] == b"\x89PNG"
    other = await client.responses.create(
        model="nano-banana-2.1", input="make it red", previous_response_id=one.id
    )
    again = await client.responses.retrieve(three.id)
    assert again.id == three.id
    sessions = await f.sessions()
    assert len(sessions) == 1 and sessions[0]["total_turns"] == 4
    session = await f.session(sessions[0]["id"])
    assert sorted(b[-1]["prompt"] for b in session["branches"]) == ["add a sprig", "make it red"]
    assert other.id != three.id


async def test_another_tenants_ids_are_404_in_openai_shape(face: Any) -> None:
    """Bob cannot continue Alice's response (404 like an unknown id); a wrong key is 401; an
    unknown model 404; every error in OpenAI's shape."""
    f = await face()
    one = await f.client().responses.create(model="nano-banana-2.1", input="a mug")
    with pytest.raises(openai.NotFoundError) as info:
        await f.client("bob-key-0002").responses.create(
            model="nano-banana-2.1", input="mine now", previous_response_id=one.id
        )
    body = info.value.body
    assert isinstance(body, dict) and {"message", "type", "code", "param"} <= set(body)
    with pytest.raises(openai.NotFoundError):
        await f.client("bob-key-0002").responses.retrieve(one.id)
    with pytest.raises(openai.AuthenticationError):
        await f.client("nope").models.list()
    with pytest.raises(openai.NotFoundError):
        await f.client().chat.completions.create(
            model="dall-e-9", messages=[{"role": "user", "content": "a mug"}]
        )
    with pytest.raises(openai.BadRequestError):
        await f.client().chat.completions.create(model="nano-banana-2.1", messages=[])


async def test_a_streamed_response_sends_the_responses_event_sequence(face: Any) -> None:
    """responses.create(stream=True): response.created, text deltas as they come, each item
    done, then response.completed whose id can be continued."""
    f = await face()
    client = f.client()
    stream = await client.responses.create(model="nano-banana-2.1", input="a mug", stream=True)
    kinds: list[str] = []
    text = ""
    completed: Any = None
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.completed":
            completed = event.response
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds and text
    assert kinds.index("response.output_text.delta") < kinds.index("response.output_item.done")
    assert [item.type for item in completed.output] == ["image_generation_call", "message"]
    follow = await client.responses.create(
        model="nano-banana-2.1", input="make it blue", previous_response_id=completed.id
    )
    assert follow.id != completed.id
