"""The Interactions API (issue 23): chained turns, branches, the 404 fallback, moving between
APIs, streams resumed after a cut, usage and cost, errors. Against the emulator's Interactions
endpoints, and a canned server for the answers the emulator does not give."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from aiohttp import web

from engine import (
    Engine,
    InteractionIncomplete,
    InvalidRequest,
    NotFound,
    RateLimited,
    RetryPolicy,
    ServerError,
)
from engine.events import TurnRetrying
from engine.policy import settle_cost
from engine.providers import (
    API_REVISION,
    content_of_steps,
    steps_of,
    usage_of,
)
from sessions import Content, MemoryStore, Part, resolve_model
from tests.conftest import EmulatorFactory, config_for, png

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


def _bodies(emu: Any) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in emu.requests if r.endpoint == "interactions"]


async def test_turns_chain_and_send_only_the_new_input(make_emulator: EmulatorFactory) -> None:
    """After the first turn each request names the previous interaction and carries only the
    new user turn: a few hundred bytes however long the session is; streamed and plain alike.
    The Api-Revision header goes with every request."""
    emu = await make_emulator(record_requests=True)
    cfg = config_for(emu.base_url, api="interactions")
    async with Engine(cfg) as engine:
        s = await engine.create_session()
        turns = []
        for i, text in enumerate(["a mug on a table", "make it blue", "add a sprig", "zoom"]):
            turns.append(await s.send(text, stream=i % 2 == 0))
        state = s._state
    bodies = _bodies(emu)
    assert len(bodies) == 4
    assert "previous_interaction_id" not in bodies[0]
    chain = [next(iter(t.record.metadata["interactions"].values())) for t in turns]
    for n, body in enumerate(bodies[1:], start=1):
        assert body["previous_interaction_id"] == chain[n - 1]
        assert body["input"] == [{"type": "text", "text": body["input"][0]["text"]}]
        assert body["store"] is True and body["model"] == "gemini-nano-banana-2.1"
    assert [b.get("stream", False) for b in bodies] == [True, False, True, False]
    sizes = [r.request_bytes for r in state.turns.values()]
    assert max(sizes[1:]) < 1024
    assert all(
        {k.lower(): v for k, v in r.headers.items()}.get("api-revision") == API_REVISION
        for r in emu.requests
    )
    assert all(t.images for t in turns)
    assert emu.stats()["interactions"]["created"] == 4


async def test_a_turn_from_an_older_turn_continues_its_interaction(
    make_emulator: EmulatorFactory,
) -> None:
    """Branching is native: after checking out turn 1, the next turn continues turn 1's
    interaction, and the new branch chains from there."""
    emu = await make_emulator(record_requests=True)
    async with Engine(config_for(emu.base_url, api="interactions")) as engine:
        s = await engine.create_session()
        first = await s.send("a mug")
        await s.send("make it blue")
        await s.checkout(first.id)
        await s.send("make it red")
        first_chain = next(iter(s._state.turns[first.id].metadata["interactions"].values()))
    bodies = _bodies(emu)
    assert bodies[2]["previous_interaction_id"] == first_chain
    assert bodies[2]["input"][0]["text"] == "make it red"


async def test_an_expired_interaction_falls_back_to_the_full_history_once(
    make_emulator: EmulatorFactory,
) -> None:
    """The previous interaction is gone (retention, deletion, another key): the turn sends its
    whole history as steps once, says why in one turn.retrying event, records the new id, and
    the next turn chains again."""
    emu = await make_emulator(record_requests=True)
    async with Engine(config_for(emu.base_url, api="interactions")) as engine:
        s = await engine.create_session()
        await s.send("a mug")
        await s.send("make it blue")
        emu.expire_interactions()
        async with engine.bus.subscribe(session_id=s.id, types=("turn.retrying",)) as sub:
            third = await s.send("add a sprig")
            retrying = await anext(sub)
        await s.send("zoom out")
    assert isinstance(retrying, TurnRetrying) and "whole history" in retrying.error
    bodies = _bodies(emu)
    assert len(bodies) == 5
    refused, full, chained = bodies[2], bodies[3], bodies[4]
    assert "previous_interaction_id" in refused
    assert "previous_interaction_id" not in full
    kinds = [step["type"] for step in full["input"]]
    assert kinds.count("user_input") == 3 and kinds.count("model_output") == 2
    assert "thought" in kinds  # the signatures go back as they came
    assert chained["previous_interaction_id"] == next(
        iter(third.record.metadata["interactions"].values())
    )


async def test_a_session_moves_between_gemini_and_interactions(
    make_emulator: EmulatorFactory,
) -> None:
    """Two turns through generateContent, two through Interactions (the first sends the
    history as steps, the second chains), then back to generateContent: every turn lands."""
    emu = await make_emulator(record_requests=True)
    store = MemoryStore()
    async with Engine(config_for(emu.base_url), store=store) as engine:
        s = await engine.create_session()
        await s.send("a mug")
        await s.send("make it blue")
        sid = s.id
    async with Engine(config_for(emu.base_url, api="interactions"), store=store) as engine:
        s = await engine.open_session(sid)
        await s.send("add a sprig")
        await s.send("zoom out")
    async with Engine(config_for(emu.base_url), store=store) as engine:
        s = await engine.open_session(sid)
        last = await s.send("make it green")
        assert len(s.turns()) == 5 and last.images
    bodies = _bodies(emu)
    assert "previous_interaction_id" not in bodies[0]
    assert [step["type"] for step in bodies[0]["input"]].count("user_input") == 3
    assert "previous_interaction_id" in bodies[1]
    # The Gemini turns' signatures went out as thought steps, exactly as they were stored.
    state = (await store.load(sid)).turns
    sent = {step["signature"] for step in bodies[0]["input"] if step["type"] == "thought"}
    stored = {
        msgspec.json.encode(p.thought_signature).decode().strip('"')
        for t in state.values()
        if t.index <= 2
        for p in t.model.parts
        if p.thought_signature
    }
    assert stored and stored <= sent


async def test_a_stream_cut_after_the_interaction_exists_is_resumed(
    make_emulator: EmulatorFactory,
) -> None:
    """The stream breaks right after interaction.created: the provider resumes it from its last
    event id, nothing is generated (or paid) twice, and the turn is one attempt."""
    emu = await make_emulator(faults="once:cut:1")
    async with Engine(config_for(emu.base_url, api="interactions")) as engine:
        s = await engine.create_session()
        turn = await s.send("a mug", stream=True)
        assert turn.attempts == 1 and turn.images
        assert engine.provider.resumes == 1  # type: ignore[attr-defined]
    stats = emu.stats()
    assert stats["interactions"]["created"] == 1
    assert stats["requests"]["interactions.resume"] == 1


async def test_a_break_before_the_id_is_retried_from_scratch(
    make_emulator: EmulatorFactory,
) -> None:
    """A connection reset before any event: no interaction id, so the runtime retries."""
    emu = await make_emulator(faults="once:reset")
    async with Engine(config_for(emu.base_url, api="interactions")) as engine:
        s = await engine.create_session()
        turn = await s.send("a mug", stream=True)
    assert turn.attempts == 2 and emu.stats()["interactions"]["created"] == 1


async def test_usage_maps_like_usage_metadata_and_costs_the_same(
    make_emulator: EmulatorFactory,
) -> None:
    """An Interactions turn's usage and cost equal the same turn's through generateContent."""
    emu = await make_emulator()
    costs = {}
    for api in ("gemini", "interactions"):
        async with Engine(config_for(emu.base_url, api=api)) as engine:
            s = await engine.create_session()
            turn = await s.send("a mug on a table", stream=False)
            costs[api] = (turn.usage, turn.cost_usd)
    (g_usage, g_cost), (i_usage, i_cost) = costs["gemini"], costs["interactions"]
    assert i_usage.output_image_tokens == g_usage.output_image_tokens == 1120
    assert i_usage.prompt_tokens == g_usage.prompt_tokens
    assert i_cost == pytest.approx(g_cost)
    spec = resolve_model("nano-banana-2.1")
    assert i_cost == pytest.approx(settle_cost(spec, "custom", i_usage, None, 1).total_usd)


def test_usage_of_reads_totals_and_modalities() -> None:
    """Totals and `*_by_modality` lists map onto Usage; output text is the rest of the output."""
    usage = usage_of(
        {
            "total_input_tokens": 1400,
            "total_output_tokens": 1150,
            "total_thought_tokens": 80,
            "total_cached_tokens": 900,
            "total_tokens": 2630,
            "input_tokens_by_modality": [
                {"modality": "text", "tokens": 280},
                {"modality": "image", "tokens": 1120},
            ],
            "output_tokens_by_modality": [{"modality": "image", "tokens": 1120}],
        }
    )
    assert (usage.prompt_tokens, usage.prompt_text_tokens, usage.prompt_image_tokens) == (
        1400,
        280,
        1120,
    )
    assert (usage.output_image_tokens, usage.output_text_tokens) == (1120, 30)
    assert usage.thoughts_tokens == 80 and usage.cached_tokens == 900
    assert usage.total_tokens == 2630


def test_steps_round_trip_exactly() -> None:
    """Output steps become one model Content; sent back, it gives the same steps (signature
    spelling kept, URL-safe and unpadded included)."""
    image = png()
    steps = [
        {"type": "thought", "signature": "c2lnLTE_-w", "summary": [{"type": "text", "text": "hm"}]},
        {
            "type": "model_output",
            "content": [
                {"type": "text", "text": "Here it is."},
                {"type": "image", "data": msgspec.json.encode(image).decode().strip('"'),
                 "mime_type": "image/png"},
            ],
        },
    ]  # fmt: skip
    content = content_of_steps(steps)
    assert content.images()[0].data == image
    again = steps_of([Content(role="user", parts=[Part(text="a mug")]), content])
    assert again[0] == {"type": "user_input", "content": [{"type": "text", "text": "a mug"}]}
    encoded = json.loads(msgspec.json.encode(again[1:]))
    assert encoded == steps


Handler = Callable[[web.Request], Any]


@pytest.fixture
async def canned() -> AsyncIterator[Callable[[Handler], Any]]:
    """A loopback server whose POST /v1beta/interactions runs the given handler."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_post("/v1beta/interactions", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (404, "model_not_found", NotFound),
        (400, "parameter_unknown", InvalidRequest),
        (429, "rate_limit_exceeded", RateLimited),
        (429, "quota_exceeded", RateLimited),
    ],
)
async def test_error_bodies_map_onto_the_typed_tree(
    canned: Callable[[Handler], Any], status: int, code: str, error: type[Exception]
) -> None:
    """`{"error": {"code", "message"}}` answers become the typed errors, code kept."""

    async def handler(request: web.Request) -> web.Response:
        body = {"error": {"code": code, "message": f"{code} happened"}}
        return web.json_response(body, status=status)

    base = await canned(handler)
    cfg = config_for(base, api="interactions", retry=RetryPolicy(max_attempts=1))
    async with Engine(cfg) as engine:
        s = await engine.create_session()
        with pytest.raises(error) as info:
            await s.send("a mug", stream=False)
    assert info.value.code == code and f"{code} happened" in str(info.value)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("status", "error"),
    [("failed", ServerError), ("incomplete", InteractionIncomplete),
     ("budget_exceeded", InteractionIncomplete), ("cancelled", InteractionIncomplete)],
)  # fmt: skip
async def test_a_terminal_status_other_than_completed_is_a_typed_error(
    canned: Callable[[Handler], Any], status: str, error: type[Exception]
) -> None:
    """An interaction that ends failed / incomplete / budget_exceeded / cancelled is not a turn."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"id": "v1_x", "status": status, "steps": []})

    base = await canned(handler)
    cfg = config_for(base, api="interactions", retry=RetryPolicy(max_attempts=1))
    store = MemoryStore()
    async with Engine(cfg, store=store) as engine:
        s = await engine.create_session()
        with pytest.raises(error):
            await s.send("a mug", stream=False)
        assert (await store.load(s.id)).turns == {}


async def test_an_error_event_mid_stream_is_typed(canned: Callable[[Handler], Any]) -> None:
    """An `error` event inside a 200 stream becomes the error its code names."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        created = {"event_type": "interaction.created", "interaction": {"id": "v1_y"}}
        error = {"event_type": "error", "error": {"code": "quota_exceeded", "message": "out"}}
        for doc in (created, error):
            await resp.write(b"data: " + json.dumps(doc).encode() + b"\n\n")
        await resp.write_eof()
        return resp

    base = await canned(handler)
    cfg = config_for(base, api="interactions", retry=RetryPolicy(max_attempts=1))
    async with Engine(cfg) as engine:
        s = await engine.create_session()
        with pytest.raises(RateLimited, match="out"):
            await s.send("a mug", stream=True)


async def test_a_wrong_api_revision_and_unknown_parameters_are_refused(
    make_emulator: EmulatorFactory,
) -> None:
    """The emulator answers as documented: another Api-Revision is 400 invalid_request, an
    unknown field 400 parameter_unknown, an unknown previous interaction 404 not_found."""
    import aiohttp

    emu = await make_emulator()
    url = emu.base_url + "/v1beta/interactions"
    body = {"model": "gemini-nano-banana-2.1", "input": "a mug"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=body, headers={"Api-Revision": "2026-05-07"}) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_request"
        async with http.post(url, json={**body, "temperature": 1}) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "parameter_unknown"
        async with http.post(url, json={**body, "previous_interaction_id": "v1_nope"}) as r:
            doc = await r.json()
            assert r.status == 404 and doc["error"]["code"] == "not_found"
            assert "v1_nope" in doc["error"]["message"]


async def test_store_false_sends_the_history_every_turn(make_emulator: EmulatorFactory) -> None:
    """`interactions_store=False`: nothing is kept at Google, so no turn names a previous
    interaction and each sends its whole history as steps."""
    emu = await make_emulator(record_requests=True)
    cfg = config_for(emu.base_url, api="interactions", interactions_store=False)
    async with Engine(cfg) as engine:
        s = await engine.create_session()
        for text in ("a mug", "make it blue", "add a sprig"):
            turn = await s.send(text)
            assert "interactions" not in turn.record.metadata
    bodies = _bodies(emu)
    assert all(b["store"] is False and "previous_interaction_id" not in b for b in bodies)
    assert [sum(s["type"] == "user_input" for s in b["input"]) for b in bodies[1:]] == [2, 3]
