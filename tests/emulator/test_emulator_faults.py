"""Fault injection: the spec grammar, every fault kind on the wire, selectors and stats."""

from __future__ import annotations

import json

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import ConfigError
from engine.emulator import Emulator, EmulatorSettings, parse_faults
from engine.emulator._faults import FaultInjector
from tests._emulator_fixtures import (
    JSON,
    body,
    call,
    gemini_url,
    generate,
    parts_of,
    sse_payloads,
    user,
)

# isort: split
# pytest finds these fixtures (named `emu` and `http`) through this import.
from tests._emulator_fixtures import emu_fixture, http_fixture  # noqa: F401

PAYLOAD = body(user("a red apple"))


def _fault(spec: str) -> dict[str, str]:
    return {"x-emulator-fault": spec}


# --- grammar ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "429",
        "429:retry=2",
        "503:retry=1.5",
        "reset",
        "cut",
        "cut:2",
        "malformed",
        "html502",
        "drip",
        "drip:0.01:4096",
        "latency:0.2",
        "block",
        "image_safety",
        "no_image",
        "sig_last",
        "rate=0.1:429,500,cut:1",
        "fail_first=2:429",
        "once:reset",
        "latency:0.1 ; rate=0.05:503",
    ],
)
def test_valid_specs_parse(spec: str) -> None:
    """Every documented form parses; the plan keeps one clause per ';'."""
    plan = parse_faults(spec)
    assert len(plan.clauses) == len([c for c in spec.split(";") if c.strip()])


@pytest.mark.parametrize(
    "spec",
    ["418", "429:wait=2", "cut:x", "drip:a", "latency", "rate=2:429", "rate=x:429", "bogus", ";,"],
)
def test_invalid_specs_raise_config_error(spec: str) -> None:
    """Malformed specs raise ConfigError (a ValueError) naming the problem."""
    with pytest.raises(ConfigError, match="fault spec"):
        parse_faults(spec)


@given(st.text(alphabet="0123456789.:;,=abcdefghijklmnoprstuwxy_ ", max_size=40))
def test_any_text_parses_or_raises_config_error(spec: str) -> None:
    """Arbitrary spec text either parses or raises ConfigError, never anything else."""
    try:
        plan = parse_faults(spec)
    except ConfigError:
        return
    for clause in plan.clauses:
        assert clause.outcomes or clause.shapers


def test_invalid_server_spec_fails_at_construction() -> None:
    """An emulator refuses a bad fault spec before it starts listening."""
    with pytest.raises(ConfigError):
        Emulator(EmulatorSettings(faults="teapot"))


def test_rotation_without_selector() -> None:
    """Several outcomes without a selector take turns, request by request."""
    injector = FaultInjector(seed=0)
    plan = parse_faults("429,500")
    kinds = [injector.decide(plan, b"same").outcome for _ in range(4)]
    assert [k.kind if k else None for k in kinds] == ["429", "500", "429", "500"]


def test_rate_draws_are_seeded() -> None:
    """The same seed and request sequence draw the same faults; about `rate` of them fire."""

    def draws(seed: int) -> list[str | None]:
        injector = FaultInjector(seed=seed)
        plan = parse_faults("rate=0.3:429,500")
        out = []
        for i in range(400):
            outcome = injector.decide(plan, i.to_bytes(4, "big")).outcome
            out.append(outcome.kind if outcome else None)
        return out

    first = draws(7)
    assert first == draws(7)
    assert first != draws(8)
    fired = sum(k is not None for k in first)
    assert 80 < fired < 160
    assert {"429", "500"} <= set(first)


# --- error outcomes -----------------------------------------------------------------------


async def test_429_with_retry_info_and_retry_after(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """429:retry=2 answers RESOURCE_EXHAUSTED with RetryInfo "2s" and Retry-After: 2."""
    status, raw, headers = await call(http, gemini_url(emu), PAYLOAD, _fault("429:retry=2"))
    assert status == 429
    assert headers["Retry-After"] == "2"
    error = json.loads(raw)["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED" and error["code"] == 429
    assert error["details"] == [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"}
    ]


@pytest.mark.parametrize(
    ("spec", "status", "google", "retry_after"),
    [
        ("500", 500, "INTERNAL", None),
        ("503:retry=1", 503, "UNAVAILABLE", "1"),
        ("504", 504, "DEADLINE_EXCEEDED", None),
        ("429", 429, "RESOURCE_EXHAUSTED", None),
    ],
)
async def test_status_faults(
    http: aiohttp.ClientSession,
    emu: Emulator,
    spec: str,
    status: int,
    google: str,
    retry_after: str | None,
) -> None:
    """Numeric faults answer that status in Google's shape, Retry-After only with retry=."""
    got, raw, headers = await call(http, gemini_url(emu), PAYLOAD, _fault(spec))
    assert got == status
    assert json.loads(raw)["error"]["status"] == google
    assert headers.get("Retry-After") == retry_after


async def test_server_wide_faults_apply_without_header(http: aiohttp.ClientSession) -> None:
    """A spec in the settings applies to every request; an empty header turns it off."""
    async with Emulator(EmulatorSettings(flat=True, faults="503")) as emulator:
        assert (await call(http, gemini_url(emulator), PAYLOAD))[0] == 503
        assert (await call(http, gemini_url(emulator), PAYLOAD, _fault("")))[0] == 200
        assert (await call(http, gemini_url(emulator), PAYLOAD, _fault("429")))[0] == 429
        assert emulator.stats()["faults"] == {"503": 1, "429": 1}


async def test_invalid_fault_header_is_400(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """A fault header that does not parse answers 400 naming the header."""
    status, raw, _ = await call(http, gemini_url(emu), PAYLOAD, _fault("teapot"))
    assert status == 400
    assert "x-emulator-fault" in json.loads(raw)["error"]["message"]


async def test_reset_closes_before_headers(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """reset drops the connection before any response header."""
    with pytest.raises((aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)):
        await call(http, gemini_url(emu), PAYLOAD, _fault("reset"))
    assert emu.stats()["faults"] == {"reset": 1}


async def test_html502_is_a_gateway_page(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """html502 answers a text/html 502 page, as a gateway would."""
    status, raw, headers = await call(http, gemini_url(emu), PAYLOAD, _fault("html502"))
    assert status == 502
    assert headers["Content-Type"].startswith("text/html")
    assert b"<h1>502 Bad Gateway</h1>" in raw


# --- delivery faults ----------------------------------------------------------------------


async def test_cut_stream_after_two_events(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """cut:2 sends exactly two SSE events, then the connection dies without a finish."""
    url = gemini_url(emu, method="streamGenerateContent")
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(url, json=PAYLOAD, headers=_fault("cut:2")) as response:
            assert response.status == 200
            async for chunk in response.content.iter_any():
                received += chunk
    events = sse_payloads(received)
    assert len(events) == 2
    assert all("finishReason" not in json.loads(e)["candidates"][0] for e in events)


async def test_cut_plain_body(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """cut on a plain answer sends headers and half the body, then drops the connection."""
    with pytest.raises(aiohttp.ClientPayloadError):
        await call(http, gemini_url(emu), PAYLOAD, _fault("cut"))


async def test_malformed_stream_event(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """malformed truncates the second event's JSON; the others still parse."""
    url = gemini_url(emu, method="streamGenerateContent")
    status, raw, _ = await call(http, url, PAYLOAD, _fault("malformed"))
    assert status == 200
    events = sse_payloads(raw)
    with pytest.raises(json.JSONDecodeError):
        json.loads(events[1])
    json.loads(events[0])
    assert json.loads(events[-1])["candidates"][0]["finishReason"] == "STOP"


async def test_malformed_plain_body(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """malformed on a plain answer is a 200 whose JSON body is truncated."""
    status, raw, headers = await call(http, gemini_url(emu), PAYLOAD, _fault("malformed"))
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)


@pytest.mark.parametrize("method", ["generateContent", "streamGenerateContent"])
async def test_drip_delivers_the_same_bytes(
    http: aiohttp.ClientSession, emu: Emulator, method: str
) -> None:
    """drip sends the body in small delayed pieces; what arrives equals the normal answer."""
    url = gemini_url(emu, method=method)
    normal = await call(http, url, PAYLOAD)
    dripped = await call(http, url, PAYLOAD, _fault("drip:0.001:8192"))
    assert dripped[0] == 200 and dripped[1] == normal[1]
    assert emu.stats()["faults"] == {"drip": 1}


async def test_latency_fault_is_counted(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """latency:S delays the answer (not timed here) and is counted in stats."""
    status, _, _ = await call(http, gemini_url(emu), PAYLOAD, _fault("latency:0.05"))
    assert status == 200
    assert emu.stats()["faults"] == {"latency": 1}


# --- content outcomes ---------------------------------------------------------------------


async def test_block_has_prompt_feedback_and_no_candidates(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """block answers promptFeedback.blockReason SAFETY and no candidates."""
    status, answer = await generate(http, emu, PAYLOAD, headers=_fault("block"))
    assert status == 200
    assert answer["promptFeedback"]["blockReason"] == "SAFETY"
    assert "candidates" not in answer


async def test_image_safety_has_no_image(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """image_safety finishes with IMAGE_SAFETY and no image."""
    status, answer = await generate(http, emu, PAYLOAD, headers=_fault("image_safety"))
    assert status == 200
    candidate = answer["candidates"][0]
    assert candidate["finishReason"] == "IMAGE_SAFETY"
    assert "inlineData" not in json.dumps(candidate)


async def test_no_image_answers_text_only(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """no_image finishes with NO_IMAGE and text but no image."""
    status, answer = await generate(http, emu, PAYLOAD, headers=_fault("no_image"))
    assert status == 200
    assert answer["candidates"][0]["finishReason"] == "NO_IMAGE"
    visible = [p for p in parts_of(answer) if not p.get("thought")]
    assert visible and all("text" in p for p in visible)


@pytest.mark.parametrize("spec", ["block", "image_safety", "no_image"])
async def test_content_outcomes_stream_a_finish(
    http: aiohttp.ClientSession, emu: Emulator, spec: str
) -> None:
    """Content outcomes stream too, ending with their finish reason or block, without image."""
    url = gemini_url(emu, method="streamGenerateContent")
    status, raw, _ = await call(http, url, PAYLOAD, _fault(spec))
    assert status == 200
    last: JSON = json.loads(sse_payloads(raw)[-1])
    if spec == "block":
        assert last["promptFeedback"]["blockReason"] == "SAFETY"
    else:
        assert last["candidates"][0]["finishReason"] == spec.upper()
    assert b"inlineData" not in raw


# --- selectors ----------------------------------------------------------------------------


async def test_fail_first_then_identical_retry_passes(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """fail_first=2:429 fails an identical request twice, then lets it through."""
    header = _fault("fail_first=2:429")
    statuses = [(await call(http, gemini_url(emu), PAYLOAD, header))[0] for _ in range(3)]
    assert statuses == [429, 429, 200]
    other = body(user("a different request"))
    assert (await call(http, gemini_url(emu), other, header))[0] == 429
    assert emu.stats()["faults"] == {"429": 3}


async def test_once_with_several_outcomes_cycles(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """fail_first=3 with three outcomes fails with each in turn, then passes."""
    header = _fault("fail_first=3:500,503,html502")
    statuses = [(await call(http, gemini_url(emu), PAYLOAD, header))[0] for _ in range(4)]
    assert statuses == [500, 503, 502, 200]


async def test_rate_over_http_counts_match_stats(http: aiohttp.ClientSession) -> None:
    """rate=0.5 fails some requests and not others; stats count exactly the failures."""
    settings = EmulatorSettings(flat=True, faults="rate=0.5:429,500", seed=3)
    async with Emulator(settings) as emulator:
        statuses = [(await call(http, gemini_url(emulator), PAYLOAD))[0] for _ in range(30)]
        faults = emulator.stats()["faults"]
    assert 200 in statuses and (429 in statuses or 500 in statuses)
    assert faults.get("429", 0) == statuses.count(429)
    assert faults.get("500", 0) == statuses.count(500)
    assert statuses.count(200) + statuses.count(429) + statuses.count(500) == 30


async def test_rate_zero_and_one(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """rate=0 never fires; rate=1 always does."""
    never = [(await call(http, gemini_url(emu), PAYLOAD, _fault("rate=0:500")))[0] for _ in "ab"]
    always = [(await call(http, gemini_url(emu), PAYLOAD, _fault("rate=1:500")))[0] for _ in "ab"]
    assert never == [200, 200] and always == [500, 500]


async def test_faults_come_after_validation(http: aiohttp.ClientSession, emu: Emulator) -> None:
    """An invalid request answers its 400 even when a fault is set, and counts no fault."""
    payload = body(user("a cat"), imageConfig={"imageSize": "1k"})
    status, _, _ = await call(http, gemini_url(emu), payload, _fault("500"))
    assert status == 400
    assert emu.stats()["faults"] == {}


async def test_rejected_requests_are_counted(http: aiohttp.ClientSession) -> None:
    """Stats count auth failures and faulted requests per endpoint."""
    async with Emulator(EmulatorSettings(flat=True, api_key="k")) as emulator:
        await call(http, gemini_url(emulator), PAYLOAD)
        await call(http, gemini_url(emulator), PAYLOAD, {"x-goog-api-key": "k", **_fault("429")})
        stream_url = gemini_url(emulator, method="streamGenerateContent")
        await call(http, stream_url, PAYLOAD, {"x-goog-api-key": "bad"})
        stats = emulator.stats()
    assert stats["requests"]["generateContent"] == 2
    assert stats["requests"]["streamGenerateContent"] == 1
    assert stats["faults"] == {"429": 1}


async def test_openai_family_faults_use_openai_shape(
    http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """Faults on OpenAI endpoints answer OpenAI's error shape with Retry-After."""
    url = f"{emu.base_url}/v1/images/generations"
    status, raw, headers = await call(http, url, {"prompt": "a cat"}, _fault("429:retry=3"))
    assert status == 429
    assert headers["Retry-After"] == "3"
    error = json.loads(raw)["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    with pytest.raises((aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)):
        await call(http, url, {"prompt": "a cat"}, _fault("reset"))
    assert emu.stats()["requests"]["images.generations"] == 2


# --- hostile input ----------------------------------------------------------------------------

_NEST = b"[" * 5000 + b"]" * 5000


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        (
            "/v1beta/models/gemini-3.1-flash-image:generateContent",
            b'{"contents": [{"role": "user", "parts": [{"text": "a", "x": ' + _NEST + b"}]}]}",
        ),
        (
            "/v1beta/models/gemini-3.1-flash-image:streamGenerateContent?alt=sse",
            b'{"contents": [{"role": "user", "parts": [{"text": "a", "x": ' + _NEST + b"}]}]}",
        ),
        (
            "/v1beta/models/gemini-3.1-flash-image:countTokens",
            b'{"contents": [{"role": "user", "parts": [{"text": "a", "x": ' + _NEST + b"}]}]}",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "nano-banana-2", "messages": [{"role": "user", "content": "a", "x": '
            + _NEST
            + b"}]}",
        ),
        (
            "/v1/images/generations",
            b'{"model": "nano-banana-2", "prompt": "a", "x": ' + _NEST + b"}",
        ),
    ],
    ids=["generate", "stream", "count", "chat", "images"],
)
async def test_deeply_nested_json_is_a_400(
    http: aiohttp.ClientSession, emu: Emulator, path: str, payload: bytes
) -> None:
    """JSON nested 5,000 deep on every POST endpoint: a 400, never a 500 or a hang."""
    status, raw, _ = await call(http, emu.base_url + path, payload)
    assert status == 400, raw[:200]


@pytest.mark.parametrize("spec", ["429:retry=1e309", "latency:1e309", "drip:1e309", "latency:inf"])
async def test_endless_fault_numbers_are_a_400(
    http: aiohttp.ClientSession, emu: Emulator, spec: str
) -> None:
    """A fault asking to wait forever (or overflowing a header) is refused with a 400."""
    status, doc = await generate(http, emu, PAYLOAD, headers=_fault(spec))
    assert status == 400
    assert "fault" in doc["error"]["message"]


@pytest.mark.parametrize("spec", ["429:retry=1e309", "latency:1e309"])
def test_endless_server_faults_are_refused(spec: str) -> None:
    """The same specs as server-wide faults are a ConfigError at start."""
    with pytest.raises(ConfigError):
        parse_faults(spec)
    with pytest.raises(ConfigError):
        EmulatorSettings(latency=float("inf"))


def test_a_huge_prompt_does_bounded_work() -> None:
    """A 200 KB prompt draws at most MAX_OBJECTS objects, and an edit applies at most
    MAX_CLAUSES instructions (what keeps rendering linear in the prompt's length)."""
    from engine.emulator.render import render_edit, render_scene
    from engine.emulator.render._vocabulary import MAX_OBJECTS

    prompt = "add a red circle on the left and a blue square, then " * 4000
    scene = render_scene(prompt, 128, 128, seed=1, grain=False)
    assert 0 < len(scene.applied) <= MAX_OBJECTS + 2
    edit = render_edit(scene.data, prompt, 128, 128, seed=1, grain=False)
    assert any("ignored" in line for line in edit.applied)


async def test_a_render_failure_mid_stream_ends_the_stream(
    http: aiohttp.ClientSession, emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An emulator bug after the headers went out: the stream ends with an error event
    instead of hanging (and the plain endpoint answers a JSON 500)."""
    import engine.emulator._generate as generate_module

    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("render broke")

    monkeypatch.setattr(generate_module, "render_scene", broken)
    # includeThoughts: the thought summary goes out (with the headers) before the render fails.
    thinking = body(user("a red apple"), thinkingConfig={"includeThoughts": True})
    status, raw, _ = await call(http, gemini_url(emu, method="streamGenerateContent"), thinking)
    assert status == 200
    assert json.loads(sse_payloads(raw)[-1])["error"]["code"] == 500
    status, raw, _ = await call(http, gemini_url(emu), PAYLOAD)
    assert status == 500
