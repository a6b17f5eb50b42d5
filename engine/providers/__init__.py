"""Wire protocols behind one contract (`Provider`); the runtime picks one per engine."""

from engine.providers._base import (
    AuthScheme,
    GenerateRequest,
    HttpProvider,
    OnDelta,
    Provider,
    ProviderResult,
    auth_headers,
    loop_time,
    scope_of,
)
from engine.providers._errors import (
    error_from_body,
    google_error,
    json_http_error,
    parse_retry_info,
)
from engine.providers._gemini import (
    BLOCKED_FINISH_REASONS,
    GeminiProvider,
)
from engine.providers._google_files import (
    BatchOperation,
    FilesAndBatches,
    UploadedFile,
)
from engine.providers._interactions import (
    API_REVISION,
    InteractionsProvider,
    chain_broken,
    content_of_steps,
    steps_of,
    usage_of,
)
from engine.providers._models import (
    list_models,
)
from engine.providers._openai_chat import (
    OpenAIChatProvider,
    extract_images,
)
from engine.providers._openai_images import (
    PARTIAL_IMAGES,
    ImagesBody,
    OpenAIImagesProvider,
    openai_size,
)

__all__ = [
    "API_REVISION",
    "BLOCKED_FINISH_REASONS",
    "PARTIAL_IMAGES",
    "AuthScheme",
    "BatchOperation",
    "FilesAndBatches",
    "GeminiProvider",
    "GenerateRequest",
    "HttpProvider",
    "ImagesBody",
    "InteractionsProvider",
    "OnDelta",
    "OpenAIChatProvider",
    "OpenAIImagesProvider",
    "Provider",
    "ProviderResult",
    "UploadedFile",
    "auth_headers",
    "chain_broken",
    "content_of_steps",
    "error_from_body",
    "extract_images",
    "google_error",
    "json_http_error",
    "list_models",
    "loop_time",
    "openai_size",
    "parse_retry_info",
    "scope_of",
    "steps_of",
    "usage_of",
]
