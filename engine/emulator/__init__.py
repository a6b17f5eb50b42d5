"""The embedded emulator: a local server speaking the Gemini-native and OpenAI-compatible image
APIs on loopback, so the engine, its tests and its benchmarks never need the network.

Every answer is a pure function of the request and the server seed: identical requests get
identical bytes (responseId and thought signatures included). Images come from the
deterministic renderer (`engine.emulator.render`), which follows simple edit instructions ("make it
grayscale", "add a red circle on the left"). Sizes, token counts and limits follow the catalog.

Endpoints
    POST /v1beta/models/{model}:generateContent · :streamGenerateContent (?alt=sse; without it a
         JSON array of the chunks) · :countTokens — also under /v1 and /v1alpha; aliases such as
         nano-banana-2 accepted
    GET  /v1beta/models · /v1beta/models/{model}
    POST /v1/chat/completions · /v1/images/generations · /v1/images/edits   (OpenAI-compatible)
    GET  /v1/models (OpenAI's shape with a Bearer key, Google's otherwise)
    GET  /emulator/stats · POST /emulator/reset

Behaviour worth knowing
    - A request with no image renders a scene from the latest user text; otherwise the latest
      non-thought image of any role is edited by that text. The answer text lists what was
      applied. Output pixels are exactly the catalogue's; the default ratio is the catalogue
      ratio nearest the input image's (1:1 without one).
    - Gemini 3 models answer one thought text part first (plus an interim thought image with
      includeThoughts); every output image and the first answer text carry thought signatures
      (HMACs under a secret derived from the seed), verified statelessly on the next request:
      a model image without its own signature, or a model turn whose text has none, gets
      Google's 400. The documented dummy signatures pass. gemini-2.5-flash-image neither signs
      nor checks.
    - Limits checked before any latency: context window, body size (Google's 400, never a 413),
      and max_input_images counted over the last user Content (history images do not count).
    - Streams: thought, text pieces (signature on the first; `stream_signature="last"` or the
      `sig_last` fault puts it on a trailing empty text part), the image whole in one event,
      then a finishing chunk (empty text part, finishReason, final usage). No [DONE].
    - Latency: a quarter before the first event, the rest while rendering; asyncio.sleep only.
    - Memory: a generateContent call holds its request and then its answer until the last
      byte is sent; together calls hold at most `EmulatorSettings.held_bytes` (a quarter of
      the machine's memory by default, estimated from Content-Length and the image size), and
      beyond it a call waits for room before reading its body, as a busy server answers later
      (/emulator/stats: render.held_bytes_peak, render.held_waits). The emulator's own process
      (`nanoedit emulator`) also gives freed blocks back to the system at once (glibc).

Auth: with an api_key set, Gemini calls need `x-goog-api-key` or `?key=`, OpenAI calls
`Authorization: Bearer KEY` (or the bare key): missing -> 401, wrong -> 403.

Faults: `EmulatorSettings.faults` or the per-request header `x-emulator-fault`; the grammar is
in `engine.emulator._faults` (and `nanoedit emulator --help`).
"""

from engine.emulator._command import add_arguments, unmap_freed_blocks
from engine.emulator._command import run as run_command
from engine.emulator._faults import FAULT_GRAMMAR, FaultPlan, parse_faults
from engine.emulator._http import RecordedRequest
from engine.emulator._server import Emulator, create_app
from engine.emulator._settings import EmulatorSettings

__all__ = [
    "FAULT_GRAMMAR",
    "Emulator",
    "EmulatorSettings",
    "FaultPlan",
    "RecordedRequest",
    "add_arguments",
    "create_app",
    "parse_faults",
    "run_command",
    "unmap_freed_blocks",
]
