"""Policy: the model catalog (its data lives in `sessions`, which the emulator shares too),
budgets (decisions come back as plain data), limits on requests in flight and per minute, and
the retry rules. No I/O of its own beyond the limiter's waiting.
"""

from engine.policy._budget import (
    Budget,
    CostBreakdown,
    CostLedger,
    Policy,
    RequestPlan,
    Reservation,
    content_tokens,
    estimate_cost,
    exceeded_event,
    history_tokens,
    image_dimensions,
    plan_request,
    rebase_content,
    reply_tokens,
    request_framing,
    settle_cost,
    turn_tokens,
)
from engine.policy._limits import (
    Limiter,
    SlotHandle,
)
from engine.policy._retry import (
    parse_retry_after,
    retry_delay,
    should_retry,
)
from sessions import (
    BUILTIN,
    Catalog,
    ImageConfig,
    ModelSpec,
    check_available,
    estimate_text_tokens,
    resolve_model,
)

__all__ = [
    "BUILTIN",
    "Budget",
    "Catalog",
    "CostBreakdown",
    "CostLedger",
    "ImageConfig",
    "Limiter",
    "ModelSpec",
    "Policy",
    "RequestPlan",
    "Reservation",
    "SlotHandle",
    "check_available",
    "content_tokens",
    "estimate_cost",
    "estimate_text_tokens",
    "exceeded_event",
    "history_tokens",
    "image_dimensions",
    "parse_retry_after",
    "plan_request",
    "rebase_content",
    "reply_tokens",
    "request_framing",
    "resolve_model",
    "retry_delay",
    "settle_cost",
    "should_retry",
    "turn_tokens",
]
