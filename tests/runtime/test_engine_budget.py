"""Budgets through the Engine against the emulator: reject, drop_oldest, rebase, money, cost."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
import pytest

from engine import Budget, BudgetExceeded, Engine, Session
from engine.emulator import Emulator
from engine.events import (
    BudgetExceededEvent,
    BudgetWarning,
    Event,
    HistoryCompacted,
    TurnFailed,
)
from engine.policy import settle_cost
from sessions import encode_contents
from tests.conftest import EmulatorFactory, config_for

PROMPTS = (
    "alpha: a ceramic mug on an oak table",
    "bravo: add a red circle on the left",
    "charlie: make it grayscale",
    "delta: add a blue square on the right",
)


def sent(emu: Emulator) -> int:
    """Generate requests the emulator has received (streamed or not)."""
    requests = emu.stats()["requests"]
    return int(requests["generateContent"] + requests["streamGenerateContent"])


def bodies(emu: Emulator) -> list[bytes]:
    """Raw bodies of the generate requests the emulator recorded, in arrival order."""
    return [r.body for r in emu.requests if r.endpoint.endswith("enerateContent")]


def b64(data: bytes) -> str:
    """Standard base64, as image bytes appear in a request body."""
    return base64.b64encode(data).decode()


def collect(engine: Engine) -> list[Event]:
    """Every event the engine publishes from now on."""
    seen: list[Event] = []
    engine.bus.on("*", seen.append)
    return seen


def of_turn(events: list[Event], session: Session, turn: int) -> list[Event]:
    """The events of one turn of one session."""
    return [e for e in events if e.session_id == session.id and e.turn == turn]


async def run(session: Session, n: int) -> None:
    """Send the first `n` prompts."""
    for prompt in PROMPTS[:n]:
        await session.send(prompt)


# --- reject ----------------------------------------------------------------------------------


async def test_reject_over_token_budget_sends_nothing(make_emulator: EmulatorFactory) -> None:
    """reject: BudgetExceeded with needed/allowed, no request, events published, history kept."""
    emu = await make_emulator(record_requests=True)
    async with Engine(config_for(emu.base_url)) as e:
        seen = collect(e)
        s = await e.create_session(budget=Budget(max_context_tokens=2000))
        await run(s, 2)
        before = encode_contents(s.contents())
        count = sent(emu)
        with pytest.raises(BudgetExceeded) as info:
            await s.send(PROMPTS[2])
        assert sent(emu) == count == 2
        assert encode_contents(s.contents()) == before
        reopened = await e.open_session(s.id)
        assert encode_contents(reopened.contents()) == before
    exc = info.value
    assert exc.limit == "context_tokens"
    assert exc.allowed == 2000 and exc.needed > 2000
    assert "2,000" in str(exc) and "nothing was sent" in str(exc)
    turn3 = of_turn(seen, s, 3)
    assert [ev.type for ev in turn3] == ["turn.started", "budget.exceeded", "turn.failed"]
    exceeded, failed = turn3[1], turn3[2]
    assert isinstance(exceeded, BudgetExceededEvent) and isinstance(failed, TurnFailed)
    assert (exceeded.limit, exceeded.needed, exceeded.allowed, exceeded.policy) == (
        "context_tokens",
        exc.needed,
        2000,
        "reject",
    )
    assert failed.error_type == "BudgetExceeded"


async def test_reject_over_byte_budget_needs_exactly_the_request_size(
    make_emulator: EmulatorFactory,
) -> None:
    """The bytes BudgetExceeded reports are those of the request that would have been sent."""
    emu = await make_emulator(record_requests=True)
    async with Engine(config_for(emu.base_url)) as e:
        reference = await e.create_session()
        await run(reference, 2)
        size = len(bodies(emu)[-1])  # the emulator answers identical requests identically
        tight = await e.create_session(budget=Budget(max_request_bytes=size - 1))
        await run(tight, 1)
        count = sent(emu)
        with pytest.raises(BudgetExceeded) as info:
            await tight.send(PROMPTS[1])
        assert sent(emu) == count
        exact = await e.create_session(budget=Budget(max_request_bytes=size))
        await run(exact, 2)
        assert len(bodies(emu)[-1]) == size
    assert info.value.limit == "request_bytes"
    assert (info.value.needed, info.value.allowed) == (size, size - 1)


# --- drop_oldest and rebase --------------------------------------------------------------------


async def test_drop_oldest_sends_only_the_newest_turns(make_emulator: EmulatorFactory) -> None:
    """drop_oldest: the request leaves out turn 1, keeps turns 2-3; the store keeps all."""
    emu = await make_emulator(record_requests=True)
    async with Engine(config_for(emu.base_url)) as e:
        seen = collect(e)
        s = await e.create_session(budget=Budget(max_context_tokens=3000, policy="drop_oldest"))
        await run(s, 3)
        t1, t2, t3 = s.turns()
        before = s.contents()
        t4 = await s.send(PROMPTS[3])
        body = bodies(emu)[-1].decode()
        reopened = await e.open_session(s.id)
    request = msgspec.json.decode(body)
    assert len(request["contents"]) == 5
    assert request["contents"][0]["parts"][0]["text"] == PROMPTS[1]
    assert PROMPTS[0] not in body and b64(t1.images[0].data) not in body
    assert b64(t2.images[0].data) in body and b64(t3.images[0].data) in body
    compacted = [ev for ev in of_turn(seen, s, 4) if isinstance(ev, HistoryCompacted)]
    assert len(compacted) == 1
    assert (compacted[0].dropped_turns, compacted[0].kept_turns) == ([1], [2, 3])
    assert compacted[0].policy == "drop_oldest"
    exceeded = [ev for ev in of_turn(seen, s, 4) if isinstance(ev, BudgetExceededEvent)]
    assert len(exceeded) == 1 and exceeded[0].needed > 3000
    assert t4.record.carried == [2, 3] and not t4.record.rebased
    # The stored history is untouched: all four turns, the first three exactly as before.
    assert len(s.contents()) == 8 and s.contents()[:6] == before
    assert encode_contents(reopened.contents()) == encode_contents(s.contents())


async def test_rebase_sends_one_user_content_with_the_latest_image(
    make_emulator: EmulatorFactory,
) -> None:
    """rebase: one user Content (latest image, no signature, then the instruction) is accepted."""
    emu = await make_emulator(record_requests=True)
    async with Engine(config_for(emu.base_url)) as e:
        seen = collect(e)
        s = await e.create_session(budget=Budget(max_context_tokens=2000, policy="rebase"))
        await run(s, 2)
        latest = s.turns()[-1].images[0]
        t3 = await s.send(PROMPTS[2])
        request = msgspec.json.decode(bodies(emu)[-1])
    assert len(request["contents"]) == 1
    content = request["contents"][0]
    assert content["role"] == "user"
    image, text = content["parts"]
    assert image["inlineData"] == {"mimeType": latest.mime_type, "data": b64(latest.data)}
    assert "thoughtSignature" not in image
    assert text == {"text": PROMPTS[2]}
    assert t3.record.rebased and t3.record.carried == []
    assert len(t3.images) == 1 and t3.images[0].sha256 != latest.sha256
    compacted = [ev for ev in of_turn(seen, s, 3) if isinstance(ev, HistoryCompacted)]
    assert [(c.dropped_turns, c.kept_turns) for c in compacted] == [([1, 2], [])]
    assert len(s.contents()) == 6


@pytest.mark.parametrize(("warn_at", "warned"), [(0.8, True), (0.9, False)])
async def test_budget_warning_from_eighty_percent(
    make_emulator: EmulatorFactory, warn_at: float, warned: bool
) -> None:
    """budget.warning comes once a request uses warn_at of a limit (turn 2: ~83% of 1400)."""
    emu = await make_emulator()
    async with Engine(config_for(emu.base_url)) as e:
        seen = collect(e)
        s = await e.create_session(budget=Budget(max_context_tokens=1400, warn_at=warn_at))
        await run(s, 2)
    warnings = [ev for ev in seen if isinstance(ev, BudgetWarning)]
    assert not [w for w in warnings if w.turn == 1]
    turn2 = [w for w in warnings if w.turn == 2]
    assert bool(turn2) is warned
    for w in turn2:
        assert w.limit == "context_tokens" and w.allowed == 1400
        assert 0.8 * 1400 <= w.used <= 1400


async def test_planned_bytes_are_each_request_s_own_when_settings_differ(
    make_emulator: EmulatorFactory,
) -> None:
    """The request framing a session keeps between turns is that of its own settings: two
    sessions with and without a system instruction, interleaved, and a settings object replaced
    under a handle, each plan exactly the bytes then sent (a `budget.warning` on every request
    says what was planned)."""
    emu = await make_emulator(record_requests=True)
    budget = Budget(max_request_bytes=10**9, warn_at=1e-9)
    async with Engine(config_for(emu.base_url)) as e:
        seen = collect(e)
        plain = await e.create_session(budget=budget)
        briefed = await e.create_session(budget=budget, system_instruction="be brief " * 50)
        for prompt in PROMPTS[:2]:
            await plain.send(prompt)
            await briefed.send(prompt)
        # The same session, its settings replaced by ones carrying an instruction.
        state = plain.state
        settings = msgspec.structs.replace(
            state.record.settings,
            system_instruction=briefed.state.record.settings.system_instruction,
        )
        plain._state = type(state)(
            msgspec.structs.replace(state.record, settings=settings), state.turns
        )
        await plain.send(PROMPTS[2])
    planned = [
        ev.used for ev in seen if isinstance(ev, BudgetWarning) and ev.limit == "request_bytes"
    ]
    assert planned == [len(body) for body in bodies(emu)]
    assert len(planned) == 5
    assert b"be brief" in bodies(emu)[-1]


# --- money ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["reject", "drop_oldest", "rebase"])
async def test_money_budget_stops_the_session_before_sending(
    make_emulator: EmulatorFactory, policy: Any
) -> None:
    """max_cost_usd: once spent + this request's reservation would pass it, nothing is sent."""
    emu = await make_emulator()
    async with Engine(config_for(emu.base_url)) as e:
        spec = (await e.create_session()).spec
        cap = 2.5 * spec.image_price(None)  # two 1K turns fit, a third does not
        s = await e.create_session(budget=Budget(max_cost_usd=cap, policy=policy))
        await run(s, 2)
        spent = sum(t.cost_usd for t in s.turns())
        count = sent(emu)
        with pytest.raises(BudgetExceeded) as info:
            await s.send(PROMPTS[2])
        assert sent(emu) == count
        assert e.ledger.spent_for(s.id) == pytest.approx(spent)
        assert e.ledger.reserved_for(s.id) == 0.0
        assert len(s.contents()) == 4
    exc = info.value
    assert exc.limit == "cost_usd" and exc.allowed == cap
    assert spent < cap < exc.needed
    assert exc.needed - spent == pytest.approx(spec.image_price(None), rel=0.05)


async def test_streamed_and_plain_turns_cost_the_same_and_the_ledger_adds_up(
    make_emulator: EmulatorFactory,
) -> None:
    """The same 3-turn script costs the same streamed or not; ledger totals = sum of turns."""
    emu = await make_emulator()
    async with Engine(config_for(emu.base_url)) as e:
        streamed = await e.create_session()
        plain = await e.create_session()
        for prompt in PROMPTS[:3]:
            await streamed.send(prompt, stream=True)
            await plain.send(prompt, stream=False)
        ledger = {s.id: e.ledger.totals(s.id) for s in (streamed, plain)}
        engine_totals = e.ledger.totals()
        provider = e.provider.name
    a, b = streamed.turns(), plain.turns()
    assert [t.usage for t in a] == [t.usage for t in b]
    assert [t.cost_usd for t in a] == [t.cost_usd for t in b]
    assert all(t.cost_usd > 0 for t in a)
    for s in (streamed, plain):
        parts = [settle_cost(s.spec, provider, t.usage, None, len(t.images)) for t in s.turns()]
        totals = ledger[s.id]
        assert totals["text_usd"] == pytest.approx(sum(p.text_usd for p in parts))
        assert totals["image_usd"] == pytest.approx(sum(p.image_usd for p in parts))
        assert totals["thinking_usd"] == pytest.approx(sum(p.thinking_usd for p in parts))
        assert totals["total_usd"] == pytest.approx(sum(t.cost_usd for t in s.turns()))
        assert totals["reserved_usd"] == 0.0
    assert engine_totals["total_usd"] == pytest.approx(sum(t.cost_usd for t in a + b))
    assert engine_totals["reserved_usd"] == 0.0


# --- an image too big to carry (4K, simulated) -----------------------------------------------

# Padding that makes turn 1's user Content weigh ~3 KB: dropping or rebasing it is what decides
# whether the request fits.
LONG_PROMPT = "alpha: a ceramic mug on an oak table. " + "Keep the grain of the wood. " * 110


async def _first_image_size(emu: Emulator) -> int:
    async with Engine(config_for(emu.base_url)) as e:
        s = await e.create_session()
        turn = await s.send(LONG_PROMPT)
    return len(turn.images[0].data)


@pytest.mark.parametrize(
    ("policy", "margin", "outcome"),
    [
        ("reject", 1000, "policy reject"),
        ("drop_oldest", 1000, "even with only the newest turn"),
        ("rebase", 1000, None),
        ("rebase", 0, "even rebased on the latest image"),
    ],
)
async def test_image_too_big_to_carry_under_the_engine_byte_limit(
    make_emulator: EmulatorFactory, policy: Any, margin: int, outcome: str | None
) -> None:
    """A 4K image (~20 MB, ~27 MB as base64) in 20 MB, simulated with a small engine limit.

    The default budget (max_request_bytes 0) uses the engine's limit. Turn 2 carries turn 1's
    image: reject refuses, drop_oldest cannot drop the newest turn, rebase works only if the
    image alone fits. Here the image fits alone when `margin` is 1000 bytes above its base64.
    """
    emu = await make_emulator(record_requests=True)
    image_b64 = len(b64(bytes(await _first_image_size(emu))))
    limit = image_b64 + margin
    async with Engine(config_for(emu.base_url, max_request_bytes=limit)) as e:
        s = await e.create_session(budget=Budget(policy=policy))
        await s.send(LONG_PROMPT)
        count = sent(emu)
        if outcome is None:
            turn = await s.send(PROMPTS[1])
            assert turn.record.rebased
            assert len(bodies(emu)[-1]) <= limit
            return
        with pytest.raises(BudgetExceeded) as info:
            await s.send(PROMPTS[1])
        assert sent(emu) == count
        assert len(s.contents()) == 2
    exc = info.value
    assert exc.limit == "request_bytes" and exc.allowed == limit and exc.needed > limit
    message = str(exc)
    assert f"request bytes, the limit is {limit:,}" in message and outcome in message
