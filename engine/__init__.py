"""nanoedit: an asyncio engine for multi-turn image editing with Gemini image models.

The names below load on first use (PEP 562): `import engine.emulator` -- a server that builds on
`sessions` only -- loads nothing of the runtime, and the engine's own packages never import
this facade.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from engine._config import (
        EmulatorOptions,
        EngineConfig,
        RetryPolicy,
        Secret,
        Timeouts,
    )
    from engine._exceptions import (
        ApiError,
        BudgetExceeded,
        Closed,
        ConfigError,
        ConnectError,
        ConnectTimeout,
        ContentBlocked,
        EventTooLarge,
        FirstByteTimeout,
        IdleTimeout,
        InteractionIncomplete,
        InvalidRequest,
        MalformedResponse,
        NanoeditError,
        NotFound,
        RateLimited,
        ServerError,
        SessionBusy,
        SessionError,
        SessionNotFound,
        StoreError,
        StreamBroken,
        SubscriberDisconnected,
        Timeout,
        TotalTimeout,
        TransportError,
        TurnNotFound,
        Unauthorized,
        WireError,
    )
    from engine._gc import (
        tuned_gc,
    )
    from engine.policy import (
        Budget,
    )
    from engine.runtime import (
        BatchItem,
        BatchJobFailed,
        BatchResult,
        Engine,
        Image,
        Reference,
        Region,
        Session,
        Turn,
        TurnStream,
    )
    from sessions import (
        ImageConfig,
        ModelSpec,
        resolve_model,
    )

# Where each public name lives.
_LAZY: dict[str, str] = {
    "ApiError": "engine._exceptions",
    "BatchItem": "engine.runtime",
    "BatchJobFailed": "engine.runtime",
    "BatchResult": "engine.runtime",
    "Budget": "engine.policy",
    "BudgetExceeded": "engine._exceptions",
    "Closed": "engine._exceptions",
    "ConfigError": "engine._exceptions",
    "ConnectError": "engine._exceptions",
    "ConnectTimeout": "engine._exceptions",
    "ContentBlocked": "engine._exceptions",
    "EmulatorOptions": "engine._config",
    "Engine": "engine.runtime",
    "EngineConfig": "engine._config",
    "EventTooLarge": "engine._exceptions",
    "FirstByteTimeout": "engine._exceptions",
    "IdleTimeout": "engine._exceptions",
    "Image": "engine.runtime",
    "ImageConfig": "sessions",
    "InvalidRequest": "engine._exceptions",
    "InteractionIncomplete": "engine._exceptions",
    "MalformedResponse": "engine._exceptions",
    "ModelSpec": "sessions",
    "NanoeditError": "engine._exceptions",
    "NotFound": "engine._exceptions",
    "RateLimited": "engine._exceptions",
    "RetryPolicy": "engine._config",
    "Secret": "engine._config",
    "ServerError": "engine._exceptions",
    "Reference": "engine.runtime",
    "Region": "engine.runtime",
    "Session": "engine.runtime",
    "SessionBusy": "engine._exceptions",
    "SessionError": "engine._exceptions",
    "SessionNotFound": "engine._exceptions",
    "StoreError": "engine._exceptions",
    "StreamBroken": "engine._exceptions",
    "SubscriberDisconnected": "engine._exceptions",
    "Timeout": "engine._exceptions",
    "Timeouts": "engine._config",
    "TotalTimeout": "engine._exceptions",
    "TransportError": "engine._exceptions",
    "Turn": "engine.runtime",
    "TurnNotFound": "engine._exceptions",
    "TurnStream": "engine.runtime",
    "Unauthorized": "engine._exceptions",
    "WireError": "engine._exceptions",
    "resolve_model": "sessions",
    "tuned_gc": "engine._gc",
}

__all__ = [
    "ApiError",
    "BatchItem",
    "BatchJobFailed",
    "BatchResult",
    "Budget",
    "BudgetExceeded",
    "Closed",
    "ConfigError",
    "ConnectError",
    "ConnectTimeout",
    "ContentBlocked",
    "EmulatorOptions",
    "Engine",
    "EngineConfig",
    "EventTooLarge",
    "FirstByteTimeout",
    "IdleTimeout",
    "Image",
    "ImageConfig",
    "InteractionIncomplete",
    "InvalidRequest",
    "MalformedResponse",
    "ModelSpec",
    "NanoeditError",
    "NotFound",
    "RateLimited",
    "Reference",
    "Region",
    "RetryPolicy",
    "Secret",
    "ServerError",
    "Session",
    "SessionBusy",
    "SessionError",
    "SessionNotFound",
    "StoreError",
    "StreamBroken",
    "SubscriberDisconnected",
    "Timeout",
    "Timeouts",
    "TotalTimeout",
    "TransportError",
    "Turn",
    "TurnNotFound",
    "TurnStream",
    "Unauthorized",
    "WireError",
    "resolve_model",
    "tuned_gc",
]


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
