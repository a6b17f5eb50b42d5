"""Token, byte and money budgets: pure functions that plan a request, and a cost ledger.

Token accounting. The server's `promptTokenCount` for a request is authoritative for what that
request carried. The history's size is therefore the last full request's `prompt_tokens`, plus
what its reply adds when sent back, plus estimates for the turns after it. A request that carried
only some turns (`carried` set, or `rebased`) counted only those, so it is skipped as a base and
the previous full one is used (or estimates throughout). Per-turn costs inside the authoritative
span are the estimates scaled to the reported total, so leaving out old turns subtracts a share
that adds up exactly.

Estimates: text ceil(UTF-8 bytes / 4); images by their pixel size read from the PNG/JPEG/GIF/WebP
header (`image_dimensions`), priced with `ModelSpec.image_input_tokens`; images of unknown size
(and other media) as one default-size output image of the model. Thought signatures are opaque
and not counted.

Money: the request is priced from the catalog before the call and reserved; after it the reported
usage settles the real figure (`settle_cost`). Both are pure functions of their inputs, so a
streamed turn and a non-streamed turn with the same usage cost the same.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Literal

import msgspec

from engine._exceptions import BudgetExceeded
from engine._memo import Memo
from sessions import (
    Blob,
    Budget,
    Content,
    ModelSpec,
    Part,
    Policy,
    TurnRecord,
    Usage,
    estimate_text_tokens,
    image_dimensions,
)

__all__ = [
    "Budget",
    "Compaction",
    "CostBreakdown",
    "CostLedger",
    "Decision",
    "NearLimit",
    "Overflow",
    "Policy",
    "RequestPlan",
    "Reservation",
    "content_tokens",
    "estimate_cost",
    "history_tokens",
    "image_dimensions",
    "overflow_of",
    "plan_request",
    "rebase_content",
    "reply_tokens",
    "request_framing",
    "settle_cost",
    "turn_tokens",
]


# Limit names, as they appear in BudgetExceeded.limit and the budget events.
CONTEXT_TOKENS = "context_tokens"
REQUEST_BYTES = "request_bytes"
COST_USD = "cost_usd"


# --- token accounting ------------------------------------------------------------------------

_json = msgspec.json.Encoder()


def _unknown_media_tokens(spec: ModelSpec) -> int:
    # A default-size 1:1 output image: input_image_tokens for the Gemini 3 models, four tiles for
    # 2.5 Flash (one tile would understate a typical 1024x1024 image).
    w, h = spec.output_pixels("1:1", None)
    return spec.image_input_tokens(w, h)


def _blob_tokens(blob: Blob, spec: ModelSpec) -> int:
    dims = image_dimensions(blob.data) if blob.mime_type.startswith("image/") else None
    if dims is None:
        return _unknown_media_tokens(spec)
    return spec.image_input_tokens(*dims)


def _part_tokens(part: Part, spec: ModelSpec, *, text: bool = True) -> int:
    n = 0
    if text and part.text:
        n += estimate_text_tokens(part.text)
    if part.inline_data is not None:
        n += _blob_tokens(part.inline_data, spec)
    if part.file_data is not None:
        n += _unknown_media_tokens(spec)
    for extra in (
        part.function_call,
        part.function_response,
        part.executable_code,
        part.code_execution_result,
    ):
        if extra is not None:
            n += -(-len(_json.encode(extra)) // 4)
    return n


def content_tokens(content: Content, spec: ModelSpec) -> int:
    """Estimated input tokens for sending `content` (every part, thought parts included).

    Kept per Content and model: a history's Contents are priced once, not on every later turn
    (each image's size is read from its header)."""
    memo = _token_memos.get(spec, _new_memo)
    return memo.get(content, lambda c: sum(_part_tokens(p, spec) for p in c.parts))


def _new_memo(_spec: ModelSpec) -> Memo[Content, int]:
    return Memo()


_token_memos: Memo[ModelSpec, Memo[Content, int]] = Memo()


def _reports_output(usage: Usage) -> bool:
    return usage.output_text_tokens > 0 or usage.output_image_tokens > 0


def reply_tokens(turn: TurnRecord, spec: ModelSpec) -> int:
    """Input tokens the turn's model Content adds when it is sent back in the next request.

    Images count at their *input* price (`output_tokens` counts them at the output price, which
    differs: 1120 out vs 560 in on 3 Pro). Visible text counts as the server's
    `output_text_tokens` when it reported a breakdown, else estimated. Thought text is estimated
    (its tokens hide in `thoughts_tokens` with the unsent reasoning, which is left out: only the
    signature of the reasoning is sent back).
    """
    usage = turn.usage
    if not _reports_output(usage):
        return content_tokens(turn.model, spec)
    n = usage.output_text_tokens
    for part in turn.model.parts:
        n += _part_tokens(part, spec, text=bool(part.thought))
    return n


def _is_full(turns: Sequence[TurnRecord], i: int) -> bool:
    # Did turn i's request carry the whole history before it?
    t = turns[i]
    if t.rebased:
        return False
    return t.carried is None or t.carried == [p.index for p in turns[:i]]


def _base(turns: Sequence[TurnRecord]) -> int:
    """The last turn whose request carried the whole history and reported its prompt; -1."""
    for i in range(len(turns) - 1, -1, -1):
        if turns[i].usage.prompt_tokens > 0 and _is_full(turns, i):
            return i
    return -1


def _estimate(turn: TurnRecord, spec: ModelSpec) -> int:
    return content_tokens(turn.user, spec) + content_tokens(turn.model, spec)


def turn_tokens(turns: Sequence[TurnRecord], spec: ModelSpec) -> list[int]:
    """Tokens each turn (user + model Content) adds to a request carrying the history.

    Calibrated to the last full request's `prompt_tokens` (see the module docstring); the sum is
    `history_tokens`.
    """
    base = _base(turns)
    est = [_estimate(t, spec) for t in turns]
    if base < 0:
        return est
    b = turns[base]
    # Estimated size of what the base request carried: every earlier turn and the base's user.
    span = [*est[:base], content_tokens(b.user, spec)]
    estimated = sum(span)
    reported = b.usage.prompt_tokens
    if estimated <= 0:
        scaled = [0] * base + [reported]
    else:
        # Scale cumulative sums and difference them, so rounding never changes the total.
        cum = list(itertools.accumulate(span))
        marks = [round(c * reported / estimated) for c in cum]
        scaled = [m - p for m, p in zip(marks, [0, *marks[:-1]], strict=True)]
    scaled[base] += reply_tokens(b, spec)
    return scaled + est[base + 1 :]


def history_tokens(turns: Sequence[TurnRecord], spec: ModelSpec) -> int:
    """Tokens the whole history adds to the next request (authoritative where the server said).

    The sum of `turn_tokens`, without working out each turn's share: the scaled shares up to
    the base add up to its reported prompt exactly, so the sum is that prompt, the base's
    reply and the estimates after it (a fifth of planning a small turn went to the shares).
    """
    base = _base(turns)
    if base < 0:
        return sum(_estimate(t, spec) for t in turns)
    after = sum(_estimate(t, spec) for t in turns[base + 1 :])
    return turns[base].usage.prompt_tokens + reply_tokens(turns[base], spec) + after


# --- byte accounting -------------------------------------------------------------------------


def _b64_len(n: int) -> int:
    return 4 * ((n + 2) // 3)


def _skeleton(content: Content) -> tuple[Content, int]:
    """`content` with inline data emptied, and the base64 length that was taken out."""
    if not any(p.inline_data is not None for p in content.parts):
        return content, 0
    parts: list[Part] = []
    removed = 0
    for p in content.parts:
        if p.inline_data is not None:
            removed += _b64_len(len(p.inline_data.data))
            p = msgspec.structs.replace(
                p, inline_data=msgspec.structs.replace(p.inline_data, data=b"")
            )
        parts.append(p)
    return Content(role=content.role, parts=parts), removed


class _Sizer:
    """Request bytes as a sum of per-turn sizes, without encoding any image.

    For a JSON array encoder, size(list) = size([]) + sum(item sizes) + separators, and an image's
    contribution is its base64 length (4 * ceil(n / 3)). So the history is encoded with its
    inline data emptied (cheap), and its images are added arithmetically: `encode_size` is called
    once for the history, once for the draft and 3 times to learn the array's framing (per
    turn again only when turns must be dropped); never on image bytes, and no full request is
    encoded (the provider does that once, for real).
    """

    def __init__(
        self,
        encode_size: Callable[[list[Content]], int],
        content_size: Callable[[Content], int] | None = None,
        framing: tuple[int, int] | None = None,
    ) -> None:
        self._encode = encode_size
        self._content_size = content_size
        self.empty, self.sep = framing or request_framing(encode_size)

    def run(self, contents: Sequence[Content]) -> int:
        """Bytes `contents` add to an array, without the separator after the last one."""
        if self._content_size is not None:
            # The provider knows (and keeps) each Content's encoded size.
            size = self._content_size
            return sum(size(c) for c in contents) + self.sep * max(len(contents) - 1, 0)
        removed = 0
        skeletons: list[Content] = []
        for c in contents:
            skeleton, taken = _skeleton(c)
            skeletons.append(skeleton)
            removed += taken
        return self._encode(skeletons) - self.empty + removed


def request_framing(encode_size: Callable[[list[Content]], int]) -> tuple[int, int]:
    """(bytes of a request with no contents, bytes between two Contents), by encoding three
    framing requests: constant for a session's settings, so a caller may keep it."""
    empty = encode_size([])
    one = encode_size([Content()])
    return empty, encode_size([Content(), Content()]) - 2 * one + empty


# --- planning --------------------------------------------------------------------------------


class Overflow(msgspec.Struct, frozen=True, kw_only=True):
    """The next request did not fit under `limit`; `policy` says what was done about it."""

    limit: str
    needed: float
    allowed: float
    policy: str


class Compaction(msgspec.Struct, frozen=True, kw_only=True):
    """The request carries fewer turns than the history holds (stored history untouched)."""

    policy: str
    dropped_turns: list[int]
    kept_turns: list[int]


class NearLimit(msgspec.Struct, frozen=True, kw_only=True):
    """A limit is `warn_at` used or more."""

    limit: str
    used: float
    allowed: float


Decision = Overflow | Compaction | NearLimit
"""What the budget decided about a request, as plain data: the runtime publishes each one as
its event (`budget.exceeded`, `history.compacted`, `budget.warning`) for the session and turn."""


class RequestPlan(msgspec.Struct, kw_only=True):
    """What the next request carries and what it is expected to take.

    `carried`: indices of the turns carried (None: all of them; [] after a rebase). `decisions`:
    what the budget decided, in order, for the caller to publish.
    """

    contents: list[Content]
    carried: list[int] | None
    rebased: bool
    tokens: int
    request_bytes: int
    reserved_usd: float
    decisions: list[Decision]


def _latest_image(turns: Sequence[TurnRecord]) -> Blob | None:
    for t in reversed(turns):
        for content in (t.model, t.user):
            images = content.images()
            if images:
                return images[-1]
    return None


def rebase_content(turns: Sequence[TurnRecord], draft: Content) -> Content:
    """One user Content: the latest image of the history as a reference, then the draft's parts.

    The image is sent as plain inline data (no thought signature): it is now the user's input.
    Without any image in the history, the draft alone.
    """
    image = _latest_image(turns)
    parts = list(draft.parts)
    if image is not None:
        ref = Blob(mime_type=image.mime_type, data=image.data)
        parts.insert(0, Part(inline_data=ref))
    return Content(role="user", parts=parts)


def _over(
    tokens: int, nbytes: int, token_limit: int, byte_limit: int
) -> tuple[str, int, int] | None:
    if tokens > token_limit:
        return CONTEXT_TOKENS, tokens, token_limit
    if nbytes > byte_limit:
        return REQUEST_BYTES, nbytes, byte_limit
    return None


_UNITS = {CONTEXT_TOKENS: "context tokens", REQUEST_BYTES: "request bytes"}


def _exceeded(limit: str, needed: float, allowed: float, why: str) -> BudgetExceeded:
    if limit == COST_USD:
        what = f"needs ${needed:.4f} in total, the budget is ${allowed:.4f}"
    else:
        what = f"needs {needed:,.0f} {_UNITS[limit]}, the limit is {allowed:,.0f}"
    return BudgetExceeded(
        f"the request {what} ({why}); nothing was sent",
        limit=limit,
        needed=needed,
        allowed=allowed,
    )


def overflow_of(error: BudgetExceeded, policy: str) -> Overflow:
    """The decision a raised BudgetExceeded stands for (the caller publishes it)."""
    return Overflow(limit=error.limit, needed=error.needed, allowed=error.allowed, policy=policy)


def _same(content: Content) -> Content:
    return content


def plan_request(
    *,
    spec: ModelSpec,
    budget: Budget,
    engine_max_request_bytes: int,
    turns: Sequence[TurnRecord],
    draft: Content,
    encode_size: Callable[[list[Content]], int],
    content_size: Callable[[Content], int] | None = None,
    request_form: Callable[[Content], Content] | None = None,
    framing: tuple[int, int] | None = None,
    provider: str,
    image_size: str | None,
    spent_usd: float,
) -> RequestPlan:
    """Decide what the next request carries under `budget`, or raise BudgetExceeded.

    `turns` is the history, oldest first; `encode_size(contents)` the encoded request size in
    bytes for those contents (called with images emptied, a few times per plan; see
    `_Sizer`), unless `content_size(content)` gives each Content's encoded size; `spent_usd`
    what the session has spent and reserved so far. The token limit is
    `budget.max_context_tokens or spec.context_window`, the byte limit
    `budget.max_request_bytes or engine_max_request_bytes`. Over a limit, "reject" raises,
    "drop_oldest" leaves out the oldest whole turns (never the newest), "rebase" sends one user
    Content with the latest image and the draft. Money is never compacted: if spent plus this
    request's priced cost exceeds `max_cost_usd`, BudgetExceeded whatever the policy.
    `request_form(content)` is a Content as the request will carry it (history images as file
    references): bytes are measured on it, tokens on the Content itself (a referenced image
    costs the model as many tokens as an inline one). The plan's contents are the originals.
    `framing` is `request_framing(encode_size)` if the caller kept it.
    """
    form = request_form or _same
    token_limit = budget.max_context_tokens or spec.context_window
    byte_limit = budget.max_request_bytes or engine_max_request_bytes
    policy = budget.policy
    decisions: list[Decision] = []

    draft_tokens = content_tokens(draft, spec)
    sizer = _Sizer(encode_size, content_size, framing)
    draft_bytes = sizer.run((form(draft),))

    contents = [c for t in turns for c in (t.user, t.model)]
    carried: list[int] | None = None
    rebased = False
    # The totals first; each turn's share only when turns must be dropped.
    tokens = history_tokens(turns, spec) + draft_tokens
    history_bytes = sizer.run([form(c) for c in contents]) + (sizer.sep if contents else 0)
    nbytes = sizer.empty + history_bytes + draft_bytes
    contents.append(draft)

    hit = _over(tokens, nbytes, token_limit, byte_limit)
    if hit is not None:
        limit, needed, allowed = hit
        if policy == "reject" or not turns:
            raise _exceeded(limit, needed, allowed, f"policy {policy}")
        decisions.append(Overflow(limit=limit, needed=needed, allowed=allowed, policy=policy))
        if policy == "drop_oldest":
            costs = turn_tokens(turns, spec)
            # A turn adds its two Contents and the separators after them; dropping it takes
            # exactly that away.
            sizes = [sizer.run((form(t.user), form(t.model))) + sizer.sep for t in turns]
            # Suffix sums: what is left after dropping the d oldest turns.
            keep_tokens, keep_bytes = tokens, nbytes
            drop = 0
            for d in range(1, len(turns)):
                keep_tokens -= costs[d - 1]
                keep_bytes -= sizes[d - 1]
                if _over(keep_tokens, keep_bytes, token_limit, byte_limit) is None:
                    drop = d
                    break
            if drop == 0:
                last = len(turns) - 1
                min_tokens = costs[last] + draft_tokens
                min_bytes = sizer.empty + sizes[last] + draft_bytes
                limit, needed, allowed = (
                    _over(min_tokens, min_bytes, token_limit, byte_limit) or hit
                )
                raise _exceeded(limit, needed, allowed, "even with only the newest turn")
            kept = turns[drop:]
            contents = [c for t in kept for c in (t.user, t.model)]
            contents.append(draft)
            carried = [t.index for t in kept]
            tokens, nbytes = keep_tokens, keep_bytes
            decisions.append(
                Compaction(
                    policy=policy,
                    dropped_turns=[t.index for t in turns[:drop]],
                    kept_turns=list(carried),
                )
            )
        else:  # rebase
            content = rebase_content(turns, draft)
            contents = [content]
            carried = []
            rebased = True
            tokens = content_tokens(content, spec)
            nbytes = sizer.empty + sizer.run((form(content),))
            again = _over(tokens, nbytes, token_limit, byte_limit)
            if again is not None:
                raise _exceeded(*again, "even rebased on the latest image")
            decisions.append(
                Compaction(
                    policy=policy,
                    dropped_turns=[t.index for t in turns],
                    kept_turns=[],
                )
            )

    reserved = estimate_cost(spec, provider, prompt_tokens=tokens, image_size=image_size)
    cap = budget.max_cost_usd
    if cap > 0 and spent_usd + reserved > cap:
        raise _exceeded(COST_USD, spent_usd + reserved, cap, "money cannot be compacted away")

    warn = budget.warn_at
    for name, used, of in (
        (CONTEXT_TOKENS, float(tokens), float(token_limit)),
        (REQUEST_BYTES, float(nbytes), float(byte_limit)),
        (COST_USD, spent_usd + reserved, cap),
    ):
        if of > 0 and used >= warn * of:
            decisions.append(NearLimit(limit=name, used=used, allowed=of))

    return RequestPlan(
        contents=contents,
        carried=carried,
        rebased=rebased,
        tokens=tokens,
        request_bytes=nbytes,
        reserved_usd=reserved,
        decisions=decisions,
    )


# --- pricing ---------------------------------------------------------------------------------


class CostBreakdown(msgspec.Struct, frozen=True, kw_only=True):
    """USD of one request by modality: text (in and out), image (in and out), thinking."""

    text_usd: float = 0.0
    image_usd: float = 0.0
    thinking_usd: float = 0.0
    total_usd: float = 0.0


def _flat_price(spec: ModelSpec, provider: str) -> float | None:
    return spec.prices.per_request.get(provider)


def estimate_cost(
    spec: ModelSpec,
    provider: str,
    *,
    prompt_tokens: int,
    image_size: str | None,
    images_out: int = 1,
) -> float:
    """USD to reserve before the call.

    A provider with a flat per-request price in the catalog (``"wisdom-gate"``) costs that.
    Every other provider (``"google"``, ``"local"``, ``"custom"``, ...) is priced as Google:
    prompt tokens at the input rate plus `images_out` images at the size's price. Text and
    thinking output are unknown before the call; they are settled after it (a few tenths of a
    cent at most for these models).
    """
    flat = _flat_price(spec, provider)
    if flat is not None:
        return flat
    prices = spec.prices
    return prompt_tokens * prices.input_per_million / 1e6 + images_out * spec.image_price(
        image_size
    )


def settle_cost(
    spec: ModelSpec,
    provider: str,
    usage: Usage,
    image_size: str | None,
    images_out: int,
    *,
    batch: bool = False,
) -> CostBreakdown:
    """USD of a finished request from its reported usage (a pure function: streamed or not).

    Google pricing: input tokens at the input rate (image input tokens count as image, the rest
    as text), cached input tokens at the cached rate, tool-use prompt tokens at the input rate,
    `images_out` output images at the size's price, output text and thinking tokens at the text
    output rate. When the server gave no output breakdown, output text is `output_tokens` minus
    the catalog's tokens for the images. A flat per-request provider (``"wisdom-gate"``) costs
    its price, all of it as image. `batch`: a Batch API request, at the catalog's batch share of
    all that (Google: half).
    """
    if batch:
        full = settle_cost(spec, provider, usage, image_size, images_out)
        share = spec.prices.batch_share
        return CostBreakdown(
            text_usd=full.text_usd * share,
            image_usd=full.image_usd * share,
            thinking_usd=full.thinking_usd * share,
            total_usd=full.total_usd * share,
        )
    flat = _flat_price(spec, provider)
    if flat is not None:
        return CostBreakdown(image_usd=flat, total_usd=flat)
    prices = spec.prices
    rate_in = prices.input_per_million / 1e6
    rate_out = prices.text_output_per_million / 1e6
    image_in = min(usage.prompt_image_tokens, usage.prompt_tokens)
    if _reports_output(usage):
        text_out = usage.output_text_tokens
    else:
        image_tokens = images_out * spec.output_tokens(image_size) if images_out else 0
        text_out = max(0, usage.output_tokens - image_tokens)
    # Cached tokens are part of the prompt; they are taken from its text share first (a repeated
    # history prefix), and what remains of them from the image share.
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    text_in = usage.prompt_tokens - image_in
    cached_text = min(cached, text_in)
    cached_image = cached - cached_text
    rate_cached = prices.cached_rate() / 1e6
    text = (
        (text_in - cached_text) * rate_in
        + cached_text * rate_cached
        + usage.tool_use_tokens * rate_in
        + text_out * rate_out
    )
    image = (
        (image_in - cached_image) * rate_in
        + cached_image * rate_cached
        + images_out * spec.image_price(image_size)
    )
    thinking = usage.thoughts_tokens * rate_out
    return CostBreakdown(
        text_usd=text, image_usd=image, thinking_usd=thinking, total_usd=text + image + thinking
    )


# --- the ledger ------------------------------------------------------------------------------


class Reservation:
    """Money set aside for one request until it is settled or released."""

    __slots__ = ("amount", "session_id", "state")

    def __init__(self, session_id: str, amount: float) -> None:
        self.session_id = session_id
        self.amount = amount
        self.state: Literal["open", "settled", "released"] = "open"

    def __repr__(self) -> str:
        return f"Reservation(session_id={self.session_id!r}, amount={self.amount}, {self.state})"


class _Totals:
    __slots__ = ("image", "open", "reserved", "text", "thinking")

    def __init__(self) -> None:
        self.text = 0.0
        self.image = 0.0
        self.thinking = 0.0
        self.reserved = 0.0
        self.open = 0

    @property
    def spent(self) -> float:
        return self.text + self.image + self.thinking

    def as_dict(self) -> dict[str, float]:
        return {
            "text_usd": self.text,
            "image_usd": self.image,
            "thinking_usd": self.thinking,
            "total_usd": self.spent,
            "reserved_usd": self.reserved,
        }


class CostLedger:
    """Running USD totals by modality, per session and engine-wide, with reservations."""

    def __init__(self) -> None:
        self._engine = _Totals()
        self._sessions: dict[str, _Totals] = {}

    def _session(self, session_id: str) -> _Totals:
        totals = self._sessions.get(session_id)
        if totals is None:
            totals = self._sessions[session_id] = _Totals()
        return totals

    def reserve(self, amount: float, *, session_id: str = "") -> Reservation:
        """Set `amount` aside before a call."""
        if amount < 0:
            raise ValueError("cannot reserve a negative amount")
        r = Reservation(session_id, amount)
        for totals in (self._engine, self._session(session_id)):
            totals.reserved += amount
            totals.open += 1
        return r

    def _close(self, r: Reservation) -> None:
        for totals in (self._engine, self._session(r.session_id)):
            totals.open -= 1
            # Exactly zero when nothing is open, whatever float residue the subtractions left.
            totals.reserved = max(0.0, totals.reserved - r.amount) if totals.open else 0.0

    def settle(self, reservation: Reservation, breakdown: CostBreakdown) -> None:
        """Replace the reservation with what the call really cost.

        Settling a released reservation still records the spending (the money went out).
        """
        if reservation.state == "settled":
            raise ValueError(f"{reservation!r} is already settled")
        if reservation.state == "open":
            self._close(reservation)
        reservation.state = "settled"
        for totals in (self._engine, self._session(reservation.session_id)):
            totals.text += breakdown.text_usd
            totals.image += breakdown.image_usd
            totals.thinking += breakdown.thinking_usd

    def record(self, session_id: str, breakdown: CostBreakdown) -> None:
        """Count spending whose reservation lived elsewhere (a cluster's, in Redis)."""
        for totals in (self._engine, self._session(session_id)):
            totals.text += breakdown.text_usd
            totals.image += breakdown.image_usd
            totals.thinking += breakdown.thinking_usd

    def release(self, reservation: Reservation) -> None:
        """Give the reservation back (the call failed); a no-op once settled or released."""
        if reservation.state != "open":
            return
        self._close(reservation)
        reservation.state = "released"

    @property
    def spent(self) -> float:
        """USD settled engine-wide."""
        return self._engine.spent

    @property
    def reserved(self) -> float:
        """USD reserved engine-wide and not yet settled or released."""
        return self._engine.reserved

    def spent_for(self, session_id: str) -> float:
        """USD settled for one session."""
        totals = self._sessions.get(session_id)
        return 0.0 if totals is None else totals.spent

    def reserved_for(self, session_id: str) -> float:
        """USD reserved for one session."""
        totals = self._sessions.get(session_id)
        return 0.0 if totals is None else totals.reserved

    def totals(self, session_id: str | None = None) -> dict[str, float]:
        """text_usd, image_usd, thinking_usd, total_usd, reserved_usd (engine-wide by default)."""
        if session_id is None:
            return self._engine.as_dict()
        totals = self._sessions.get(session_id)
        return (totals or _Totals()).as_dict()

    def forget(self, session_id: str) -> None:
        """Drop a session's totals (engine-wide totals keep its spending)."""
        self._sessions.pop(session_id, None)
