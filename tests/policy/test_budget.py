"""Tests for engine.policy._budget: token and byte accounting, policies, pricing, the ledger."""

from __future__ import annotations

import io
from collections.abc import Callable

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image as PILImage
from PIL import features

from engine import BudgetExceeded, ConfigError
from engine.policy import (
    Budget,
    Compaction,
    CostBreakdown,
    CostLedger,
    NearLimit,
    Overflow,
    RequestPlan,
    content_tokens,
    estimate_cost,
    history_tokens,
    image_dimensions,
    overflow_of,
    plan_request,
    reply_tokens,
    settle_cost,
    turn_tokens,
)
from sessions import Blob, Content, Part, TurnRecord, Usage, encode_contents, wire_contents
from sessions._catalog import MODELS, ModelSpec

PRO = MODELS["gemini-3-pro-image"]
FLASH31 = MODELS["gemini-3.1-flash-image"]
FLASH25 = MODELS["gemini-2.5-flash-image"]

MB = 20 * 1024 * 1024


def image_bytes(w: int, h: int, fmt: str = "PNG", color: int = 0, **save: object) -> bytes:
    """A real image file made with Pillow."""
    buf = io.BytesIO()
    PILImage.new("RGB", (w, h), (color, 100, 50)).save(buf, fmt, **save)
    return buf.getvalue()


def img_part(data: bytes, signature: bytes | None = None) -> Part:
    """An inline PNG part."""
    return Part(inline_data=Blob(mime_type="image/png", data=data), thought_signature=signature)


def user(text: str, *images: bytes) -> Content:
    """A user Content: text, then images."""
    return Content(role="user", parts=[Part(text=text), *(img_part(i) for i in images)])


def model(text: str, *images: bytes) -> Content:
    """A model Content as Gemini 3 sends it: signed text, then signed images."""
    parts = [Part(text=text, thought_signature=b"sig-text")]
    parts += [img_part(i, b"sig-image") for i in images]
    return Content(role="model", parts=parts)


def turn(
    index: int,
    u: Content,
    m: Content,
    usage: Usage | None = None,
    carried: list[int] | None = None,
    rebased: bool = False,
) -> TurnRecord:
    """A committed turn on a straight branch."""
    return TurnRecord(
        id=f"t{index}",
        parent=f"t{index - 1}" if index > 1 else None,
        index=index,
        user=u,
        model=m,
        model_id=PRO.id,
        usage=usage or Usage(),
        carried=carried,
        rebased=rebased,
    )


# Three turns on 3 Pro, 572 estimated tokens each: user text 10, model text 2 + a 1K image 560.
IMAGES = [image_bytes(1024, 1024, color=c) for c in (10, 20, 30)]
TURNS = [turn(i + 1, user("a" * 40), model("b" * 8, IMAGES[i])) for i in range(3)]
DRAFT = user("c" * 40)  # 10 tokens


def encoded_size(contents: list[Content]) -> int:
    """What a provider would send: the contents inside a request body."""
    body = {
        "contents": wire_contents(contents),
        "generationConfig": {"responseModalities": ["IMAGE"]},
    }
    return len(msgspec.json.encode(body))


def plan(
    budget: Budget,
    turns: list[TurnRecord] = TURNS,
    draft: Content = DRAFT,
    spent: float = 0.0,
    encode: Callable[[list[Content]], int] = encoded_size,
    engine_bytes: int = MB,
    spec: ModelSpec = PRO,
) -> RequestPlan:
    """plan_request with this file's defaults."""
    return plan_request(
        spec=spec,
        budget=budget,
        engine_max_request_bytes=engine_bytes,
        turns=turns,
        draft=draft,
        encode_size=encode,
        provider="google",
        image_size="1K",
        spent_usd=spent,
    )


# --- image sizes ---------------------------------------------------------------------------


def test_image_dimensions_png_and_jpeg() -> None:
    """PNG IHDR and JPEG SOF (baseline and progressive) give the pixel size without decoding."""
    assert image_dimensions(image_bytes(37, 23)) == (37, 23)
    assert image_dimensions(image_bytes(640, 480, "JPEG")) == (640, 480)
    assert image_dimensions(image_bytes(300, 500, "JPEG", progressive=True)) == (300, 500)
    exif = PILImage.Exif()
    exif[0x0112] = 6  # an EXIF segment before the frame header
    assert image_dimensions(image_bytes(64, 32, "JPEG", exif=exif.tobytes())) == (64, 32)


def test_image_dimensions_gif_webp_and_garbage() -> None:
    """GIF and WebP headers are read too; unknown or truncated data gives None."""
    assert image_dimensions(image_bytes(17, 9, "GIF")) == (17, 9)
    if features.check("webp"):
        assert image_dimensions(image_bytes(33, 21, "WEBP")) == (33, 21)
        assert image_dimensions(image_bytes(33, 21, "WEBP", lossless=True)) == (33, 21)
    assert image_dimensions(b"not an image") is None
    assert image_dimensions(image_bytes(10, 10)[:20]) is None
    assert image_dimensions(b"\xff\xd8\xff\xe0\x00") is None


# --- token accounting ------------------------------------------------------------------------


def test_content_tokens_estimates_text_and_images_per_model() -> None:
    """Text is bytes/4; images cost the model's input price (2.5 Flash by 768px tiles)."""
    content = user("a" * 40, image_bytes(1000, 800))
    assert content_tokens(content, PRO) == 10 + 560
    assert content_tokens(content, FLASH31) == 10 + 1120
    assert content_tokens(content, FLASH25) == 10 + 4 * 258
    assert content_tokens(user("", image_bytes(300, 300)), FLASH25) == 258
    # Unreadable image: priced as a default-size output image of the model.
    broken = Content(parts=[img_part(b"garbage")])
    assert content_tokens(broken, PRO) == 560
    assert content_tokens(broken, FLASH25) == 4 * 258


def test_history_tokens_estimates_without_usage() -> None:
    """With no reported usage, every turn is estimated."""
    assert history_tokens(TURNS, PRO) == 3 * 572
    assert turn_tokens(TURNS, PRO) == [572, 572, 572]


def test_history_tokens_from_last_reported_prompt_and_reply() -> None:
    """The last full request's promptTokenCount plus its reply, then estimates for later turns."""
    usage = Usage(prompt_tokens=3000, output_text_tokens=7, output_image_tokens=1120)
    turns = [TURNS[0], turn(2, user("a" * 40), model("b" * 8, IMAGES[1]), usage), TURNS[2]]
    # The reply's image counts at its input price (560), not its output count (1120).
    assert reply_tokens(turns[1], PRO) == 7 + 560
    assert history_tokens(turns, PRO) == 3000 + 567 + 572
    costs = turn_tokens(turns, PRO)
    assert sum(costs) == 3000 + 567 + 572
    assert costs[2] == 572 and costs[0] > costs[1] - 567


def test_reply_without_breakdown_is_estimated_and_thoughts_are_left_out() -> None:
    """No output breakdown: the model Content is estimated; thoughts_tokens never count."""
    m = Content(
        role="model",
        parts=[Part(text="t" * 400, thought=True), Part(text="b" * 8), img_part(IMAGES[0], b"s")],
    )
    t = turn(
        1, user("a" * 40), m, Usage(prompt_tokens=100, output_tokens=1130, thoughts_tokens=900)
    )
    assert reply_tokens(t, PRO) == 100 + 2 + 560
    broken_down = turn(1, user("a"), m, Usage(prompt_tokens=100, output_text_tokens=3))
    assert reply_tokens(broken_down, PRO) == 3 + 100 + 560  # thought text still estimated


@pytest.mark.parametrize(
    ("carried", "rebased"), [([2], False), ([], True)], ids=["carried", "rebased"]
)
def test_partial_request_falls_back_to_the_last_full_one(carried: list[int], rebased: bool) -> None:
    """A turn whose request carried only some turns is not a base for the whole history."""
    full = Usage(prompt_tokens=3000, output_text_tokens=7, output_image_tokens=1120)
    partial = Usage(prompt_tokens=900, output_text_tokens=7, output_image_tokens=1120)
    turns = [
        TURNS[0],
        turn(2, user("a" * 40), model("b" * 8, IMAGES[1]), full),
        turn(3, user("a" * 40), model("b" * 8, IMAGES[2]), partial, carried, rebased),
    ]
    assert history_tokens(turns, PRO) == 3000 + 567 + 572
    # With no full request at all, estimates throughout.
    turns[1] = turn(2, user("a" * 40), model("b" * 8, IMAGES[1]), full, carried=[])
    assert history_tokens(turns, PRO) == 3 * 572


def test_explicit_full_carried_list_counts_as_full() -> None:
    """carried == every earlier turn is the same as carried None."""
    usage = Usage(prompt_tokens=2000, output_text_tokens=2, output_image_tokens=1120)
    turns = [TURNS[0], turn(2, user("a" * 40), model("b" * 8, IMAGES[1]), usage, carried=[1])]
    assert history_tokens(turns, PRO) == 2000 + 2 + 560


_USAGES = st.one_of(
    st.just(Usage()),
    st.builds(
        Usage,
        prompt_tokens=st.integers(0, 50_000),
        output_text_tokens=st.integers(0, 500),
        output_image_tokens=st.sampled_from([0, 1120]),
    ),
)


@given(
    shapes=st.lists(
        st.tuples(
            _USAGES, st.integers(0, 200), st.sampled_from(["full", "listed", "partial", "rebased"])
        ),
        max_size=8,
    )
)
def test_history_total_is_the_sum_of_the_turn_shares(
    shapes: list[tuple[Usage, int, str]],
) -> None:
    """history_tokens (the total a plan uses) equals the sum of turn_tokens (the shares a
    drop uses) for any mix of reported usage, estimates and partial requests."""
    turns = []
    for i, (usage, chars, how) in enumerate(shapes, start=1):
        carried = {"full": None, "listed": list(range(1, i)), "partial": [i - 1], "rebased": []}
        turns.append(
            turn(
                i,
                user("a" * chars),
                model("b" * (chars // 2), IMAGES[i % len(IMAGES)]),
                usage,
                carried[how],
                rebased=how == "rebased",
            )
        )
    assert history_tokens(turns, PRO) == sum(turn_tokens(turns, PRO))


# --- policies --------------------------------------------------------------------------------


def test_fits_carries_everything() -> None:
    """Under every limit: all turns plus the draft, no decisions."""
    result = plan(Budget())
    assert result.carried is None and not result.rebased
    assert result.contents == [c for t in TURNS for c in (t.user, t.model)] + [DRAFT]
    assert result.tokens == 3 * 572 + 10
    assert result.decisions == []


def test_reject_raises_with_needed_and_allowed() -> None:
    """Policy reject: BudgetExceeded naming the limit, with needed and allowed."""
    with pytest.raises(BudgetExceeded) as info:
        plan(Budget(max_context_tokens=1000))
    assert (info.value.limit, info.value.needed, info.value.allowed) == (
        "context_tokens",
        1726,
        1000,
    )
    assert "context tokens" in str(info.value) and "1,726" in str(info.value)
    event = overflow_of(info.value, "reject")
    assert (event.limit, event.needed, event.policy) == ("context_tokens", 1726, "reject")


def test_model_window_is_the_default_token_limit() -> None:
    """max_context_tokens 0 means the model's context window."""
    big = user("x" * 4 * PRO.context_window)
    with pytest.raises(BudgetExceeded) as info:
        plan(Budget(), draft=big)
    assert info.value.allowed == PRO.context_window


def test_drop_oldest_keeps_newest_and_drops_oldest_whole_turns() -> None:
    """drop_oldest leaves out the fewest oldest turns that make it fit; decisions say so."""
    result = plan(Budget(max_context_tokens=1200, policy="drop_oldest"))
    assert result.carried == [2, 3]
    assert result.contents == [TURNS[1].user, TURNS[1].model, TURNS[2].user, TURNS[2].model, DRAFT]
    assert result.tokens == 2 * 572 + 10
    exceeded, compacted, warning = result.decisions
    assert isinstance(exceeded, Overflow)
    assert (exceeded.policy, exceeded.needed, exceeded.allowed) == ("drop_oldest", 1726, 1200)
    assert isinstance(compacted, Compaction)
    assert (compacted.dropped_turns, compacted.kept_turns) == ([1], [2, 3])
    assert isinstance(warning, NearLimit) and warning.used == 1154


def test_drop_oldest_refuses_when_newest_turn_and_draft_do_not_fit() -> None:
    """The newest turn always stays; if it and the draft are too big, BudgetExceeded."""
    with pytest.raises(BudgetExceeded) as info:
        plan(Budget(max_context_tokens=500, policy="drop_oldest"))
    assert (info.value.needed, info.value.allowed) == (582, 500)


def test_rebase_sends_latest_image_and_draft_as_one_user_content() -> None:
    """rebase: one user Content, the newest model image (unsigned) then the draft's parts."""
    result = plan(Budget(max_context_tokens=1000, policy="rebase"))
    assert result.rebased and result.carried == []
    (content,) = result.contents
    assert content.role == "user"
    ref = content.parts[0]
    assert ref.inline_data is not None and ref.inline_data.data == IMAGES[2]
    assert ref.thought_signature is None
    assert content.parts[1:] == DRAFT.parts
    assert result.tokens == 560 + 10
    assert result.request_bytes == encoded_size(result.contents)
    compacted = result.decisions[1]
    assert isinstance(compacted, Compaction)
    assert (compacted.policy, compacted.dropped_turns, compacted.kept_turns) == (
        "rebase",
        [1, 2, 3],
        [],
    )


def test_rebase_falls_back_to_the_newest_user_image() -> None:
    """Without a model image, the newest image the user sent is the reference."""
    turns = [
        turn(1, user("a" * 40, IMAGES[0]), model("no image")),
        turn(2, user("a" * 40, IMAGES[1]), model("still no image")),
    ]
    result = plan(Budget(max_context_tokens=700, policy="rebase"), turns=turns)
    ref = result.contents[0].parts[0].inline_data
    assert ref is not None and ref.data == IMAGES[1]


def test_warning_at_eighty_percent_of_the_token_limit() -> None:
    """budget.warning at warn_at of a limit, not below it."""
    at = plan(Budget(max_context_tokens=2000))
    assert [(d.limit, d.used, d.allowed) for d in at.decisions if isinstance(d, NearLimit)] == [
        ("context_tokens", 1726, 2000)
    ]
    below = plan(Budget(max_context_tokens=2200))
    assert below.decisions == []


def test_request_bytes_are_exact_and_no_image_is_encoded() -> None:
    """Bytes match the real encoding; encode_size never sees image bytes; byte limits apply."""
    draft = user("c" * 40, image_bytes(200, 100))
    seen_images: list[int] = []
    calls = 0

    def encode(contents: list[Content]) -> int:
        nonlocal calls
        calls += 1
        seen_images.extend(
            len(p.inline_data.data) for c in contents for p in c.parts if p.inline_data is not None
        )
        return encoded_size(contents)

    full = plan(Budget(), draft=draft, encode=encode)
    assert full.request_bytes == encoded_size(full.contents)
    assert set(seen_images) == {0}
    assert calls == 1 + 1 + 3  # the history at once, the draft, the framing

    limit = full.request_bytes - 10
    with pytest.raises(BudgetExceeded) as info:
        plan(Budget(max_request_bytes=limit), draft=draft, encode=encode)
    assert (info.value.limit, info.value.needed) == ("request_bytes", full.request_bytes)

    dropped = plan(Budget(max_request_bytes=limit, policy="drop_oldest"), draft=draft)
    assert dropped.carried == [2, 3]
    assert dropped.request_bytes == encoded_size(dropped.contents)
    # The engine's limit applies when the budget sets none.
    with pytest.raises(BudgetExceeded, match="request bytes"):
        plan(Budget(), draft=draft, engine_bytes=limit)


def test_byte_sizes_match_plain_encode_contents() -> None:
    """The additive byte model holds for a bare JSON array encoder too."""
    result = plan(
        Budget(max_context_tokens=1200, policy="drop_oldest"),
        encode=lambda cs: len(encode_contents(cs)),
    )
    assert result.request_bytes == len(encode_contents(result.contents))


def test_money_limit_applies_whatever_the_policy() -> None:
    """Spent plus this request's price over max_cost_usd raises, even with drop_oldest."""
    expected = 1726 * 2.0 / 1e6 + 0.134
    with pytest.raises(BudgetExceeded) as info:
        plan(Budget(max_cost_usd=1.0, policy="drop_oldest"), spent=0.9)
    assert info.value.limit == "cost_usd"
    assert info.value.needed == pytest.approx(0.9 + expected)
    warned = plan(Budget(max_cost_usd=1.0), spent=0.7)
    assert warned.reserved_usd == pytest.approx(expected)
    assert [d.limit for d in warned.decisions if isinstance(d, NearLimit)] == ["cost_usd"]


def test_no_history_and_too_big_draft_raises_for_every_policy() -> None:
    """With nothing to leave out, an oversized draft raises whatever the policy."""
    for policy in ("reject", "drop_oldest", "rebase"):
        with pytest.raises(BudgetExceeded):
            plan(Budget(max_context_tokens=5, policy=policy), turns=[])


# --- pricing ---------------------------------------------------------------------------------


def test_settle_cost_by_modality_from_google_usage() -> None:
    """Input at the input rate, images at the image price, text and thinking at the text rate."""
    usage = Usage(
        prompt_tokens=1000,
        prompt_image_tokens=560,
        output_tokens=1130,
        output_image_tokens=1120,
        output_text_tokens=10,
        thoughts_tokens=200,
    )
    cost = settle_cost(PRO, "google", usage, "1K", 1)
    assert cost.text_usd == pytest.approx(440 * 2e-6 + 10 * 12e-6)
    assert cost.image_usd == pytest.approx(560 * 2e-6 + 0.134)
    assert cost.thinking_usd == pytest.approx(200 * 12e-6)
    assert cost.total_usd == pytest.approx(0.13852)
    # Without the breakdown, output text is what the images do not account for.
    bare = Usage(prompt_tokens=1000, output_tokens=1130, thoughts_tokens=200)
    assert settle_cost(PRO, "google", bare, "1K", 1).total_usd == pytest.approx(0.13852)


@given(
    st.builds(
        Usage,
        prompt_tokens=st.integers(0, 200_000),
        output_tokens=st.integers(0, 5000),
        thoughts_tokens=st.integers(0, 5000),
        prompt_image_tokens=st.integers(0, 20_000),
        output_image_tokens=st.integers(0, 3000),
        output_text_tokens=st.integers(0, 3000),
    ),
    st.sampled_from(["google", "local", "custom", "wisdom-gate"]),
    st.integers(0, 2),
)
def test_cost_is_a_function_of_usage_streamed_or_not(usage: Usage, provider: str, n: int) -> None:
    """The same usage, whether from the last stream chunk or a plain response, costs the same."""
    streamed = msgspec.json.decode(msgspec.json.encode(usage), type=Usage)
    a = settle_cost(FLASH31, provider, usage, "2K", n)
    b = settle_cost(FLASH31, provider, streamed, "2K", n)
    assert a == b
    assert a.total_usd == pytest.approx(a.text_usd + a.image_usd + a.thinking_usd)
    assert min(a.text_usd, a.image_usd, a.thinking_usd) >= 0


def test_wisdom_gate_is_a_flat_price_per_request() -> None:
    """Wisdom Gate costs its per-request price whatever the tokens and size."""
    assert estimate_cost(FLASH31, "wisdom-gate", prompt_tokens=10**6, image_size="4K") == 0.058
    assert estimate_cost(PRO, "wisdom-gate", prompt_tokens=1, image_size="1K") == 0.068
    usage = Usage(prompt_tokens=50_000, output_tokens=3000, thoughts_tokens=900)
    assert settle_cost(PRO, "wisdom-gate", usage, "4K", 1) == CostBreakdown(
        image_usd=0.068, total_usd=0.068
    )


def test_local_and_custom_are_priced_as_google() -> None:
    """Providers without a flat price (local, custom, google) use Google's rates."""
    expected = 2000 * 0.5e-6 + 0.101
    for provider in ("google", "local", "custom"):
        cost = estimate_cost(FLASH31, provider, prompt_tokens=2000, image_size="2K")
        assert cost == pytest.approx(expected)
    # A model with no gateway price falls back to Google's too.
    assert estimate_cost(FLASH25, "wisdom-gate", prompt_tokens=0, image_size=None) == 0.039


# --- the ledger ------------------------------------------------------------------------------


def test_ledger_reserve_settle_release_by_modality() -> None:
    """Reservations move to spending by modality on settle, and vanish on release."""
    ledger = CostLedger()
    ra = ledger.reserve(0.2, session_id="a")
    rb = ledger.reserve(0.1, session_id="b")
    assert ledger.reserved == pytest.approx(0.3)
    ledger.settle(
        ra, CostBreakdown(text_usd=0.01, image_usd=0.134, thinking_usd=0.002, total_usd=0.146)
    )
    assert ledger.spent == pytest.approx(0.146)
    assert ledger.spent_for("a") == pytest.approx(0.146) and ledger.spent_for("b") == 0.0
    assert ledger.reserved_for("a") == 0.0 and ledger.reserved_for("b") == pytest.approx(0.1)
    ledger.release(rb)
    assert ledger.reserved == 0.0  # exactly: nothing is open
    totals = ledger.totals()
    assert totals == pytest.approx(
        {
            "text_usd": 0.01,
            "image_usd": 0.134,
            "thinking_usd": 0.002,
            "total_usd": 0.146,
            "reserved_usd": 0.0,
        }
    )
    assert ledger.totals("b")["total_usd"] == 0.0
    ledger.release(ra)  # after settle: a no-op
    assert ledger.spent == pytest.approx(0.146)
    with pytest.raises(ValueError, match="already settled"):
        ledger.settle(ra, CostBreakdown(total_usd=1.0))


def test_ledger_settle_after_release_still_records_spending() -> None:
    """Money that went out is recorded even if the reservation was released first."""
    ledger = CostLedger()
    r = ledger.reserve(0.5, session_id="a")
    ledger.release(r)
    ledger.settle(r, CostBreakdown(image_usd=0.067, total_usd=0.067))
    assert ledger.spent_for("a") == pytest.approx(0.067)
    assert ledger.reserved == 0.0


# --- the Budget value ------------------------------------------------------------------------


def test_budget_builtins_round_trip_and_validation() -> None:
    """to_builtins/from_builtins round-trip (defaults omitted); bad values are ConfigErrors."""
    budget = Budget(max_context_tokens=1000, policy="rebase")
    data = budget.to_builtins()
    assert data == {"max_context_tokens": 1000, "policy": "rebase"}
    assert Budget.from_builtins(data) == budget
    assert Budget.from_builtins(None) == Budget()
    for bad in ({"policy": "nope"}, {"warn_at": 2}, {"max_cost_usd": -1}, {"unknown": 1}):
        with pytest.raises(ConfigError):
            Budget.from_builtins(bad)
    with pytest.raises(ConfigError):
        Budget(max_request_bytes=-5)
