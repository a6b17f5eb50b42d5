"""Behaviour claims, measured: the official google-genai async chat next to nanoedit.

    python benchmarks/behaviour.py [--json FILE] [--no-results]

Each scenario runs both clients, each against its own fresh emulator started in this process
(`Emulator(EmulatorSettings(flat=True, record_requests=True, ...))` on 127.0.0.1), with the
emulator's fault injection, and records what happened: the chat history afterwards, the
requests the emulator received (and what they carried), errors raised, wall times, events.

- google-genai: `genai.Client(api_key=..., http_options=HttpOptions(base_url=URL))`,
  `client.aio.chats.create(model=..., config=GenerateContentConfig(response_modalities=
  ["TEXT", "IMAGE"]))`, `send_message` / `send_message_stream`, `get_history(curated=...)`.
  Its default retry options are used unless a cell says `HttpRetryOptions()` (opt-in).
- nanoedit: `Engine(EngineConfig(provider="custom", base_url=URL))` with every default
  (RetryPolicy: 4 attempts, 0.5 s full-jitter backoff, server delays honoured),
  `create_session`, `send`, `contents()`, and `engine.bus.on("*", ...)` for events.

Scenarios: 1 streamed-turn fragmentation (also with the `sig_last` shaper); 2 failed and
broken turns (stream cuts, a blocked prompt, a withheld image, a 500): the history afterwards and
whether the next request is valid; 3 retries (429/503 with RetryInfo + Retry-After, a reset
connection): requests counted at the emulator and the gap between them; 4 three concurrent
sends on one chat; 5 budgets; 6 events per turn; 7 thought signatures over 6 turns.

Times between requests come from polling the emulator's request log every millisecond (its
records carry no timestamps). The Markdown table goes to stdout and is appended to
benchmarks/RESULTS.md with the machine, the date and the exact command; `--json` writes every
measured value. Nothing here asserts: the SDK's side is whatever this version does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog
from _common import RESULTS_PATH, append_results, machine_info, markdown_table
from google import genai
from google.genai import chats as genai_chats
from google.genai import errors as genai_errors
from google.genai import types

from engine import Budget, BudgetExceeded, Engine, EngineConfig, NanoeditError
from engine.emulator import Emulator, EmulatorSettings
from engine.events import Event, HistoryCompacted, TurnFailed, TurnRetrying
from sessions import Content, encode_contents

MODEL = "gemini-3.1-flash-image"
PROMPTS = (
    "A ceramic mug on an oak table, morning light",
    "Make it grayscale",
    "Add a red circle on the left",
    "Make it sepia",
    "Add a blue square on the right",
    "Add text 'hello'",
)
GENERATE = ("generateContent", "streamGenerateContent")
# Scenario 4: 0.2 s latency plus up to 0.2 s of jitter (drawn from this seed in arrival order),
# so the three concurrent answers may finish out of call order.
CONCURRENT_SEED = 3
# Scenario 5: a session budget that turn 3 (two 1K images of history, ~2,300 tokens) exceeds.
TOKEN_BUDGET = 2_000
# Scenario 5: ~150,000 estimated tokens of text, over the model's 131,072-token window.
HUGE_PROMPT = "word " * 120_000

JSON = dict[str, Any]


# --- measuring helpers ----------------------------------------------------------------------------


@dataclass
class Cell:
    """One side of one scenario: a short text for the table and the measured values."""

    text: str
    data: JSON = field(default_factory=dict)


@dataclass
class Row:
    """One scenario: both sides."""

    key: str
    scenario: str
    sdk: Cell
    nanoedit: Cell


@asynccontextmanager
async def emulator(faults: str = "", **settings: Any) -> AsyncIterator[Emulator]:
    """A fresh flat-image emulator recording requests, closed afterwards."""
    emu = Emulator(EmulatorSettings(flat=True, record_requests=True, faults=faults, **settings))
    await emu.start()
    try:
        yield emu
    finally:
        await emu.aclose()


class Arrivals:
    """Arrival times of requests at the emulator, by polling its request log every 1 ms."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.times: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        while True:
            n = len(self.emu.requests)
            now = time.monotonic()
            while len(self.times) < n:
                self.times.append(now)
            await asyncio.sleep(0.001)

    @property
    def gaps(self) -> list[float]:
        """Seconds between consecutive arrivals."""
        return [round(b - a, 3) for a, b in zip(self.times, self.times[1:], strict=False)]

    async def __aenter__(self) -> Arrivals:
        self._task = asyncio.create_task(self._poll())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.sleep(0.002)  # one more poll for a request that has just arrived
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


@asynccontextmanager
async def sdk_chat(base_url: str, *, retry: bool = False) -> AsyncIterator[genai_chats.AsyncChat]:
    """The SDK's async chat as its documentation shows it; `retry`: `HttpRetryOptions()`."""
    options = types.HttpOptions(
        base_url=base_url, retry_options=types.HttpRetryOptions() if retry else None
    )
    client = genai.Client(api_key="k", http_options=options)
    try:
        yield client.aio.chats.create(
            model=MODEL,
            config=types.GenerateContentConfig(response_modalities=["TEXT", "IMAGE"]),
        )
    finally:
        await client.aio.aclose()


@dataclass
class Nanoedit:
    """An engine on one emulator, with every event it published."""

    engine: Engine
    events: list[Event]

    def counts(self, turn: int) -> Counter[str]:
        """Events of one turn, by type."""
        return Counter(ev.type for ev in self.events if ev.turn == turn)


@asynccontextmanager
async def nanoedit(base_url: str) -> AsyncIterator[Nanoedit]:
    """An engine with the default configuration pointed at `base_url`."""
    async with Engine(EngineConfig(provider="custom", base_url=base_url)) as engine:
        seen: list[Event] = []
        engine.bus.on("*", seen.append)
        yield Nanoedit(engine, seen)


async def sdk_stream_turn(chat: genai_chats.AsyncChat, prompt: str) -> int:
    """One streamed SDK turn, consumed like its documentation does; returns the chunk count."""
    chunks = 0
    async for _ in await chat.send_message_stream(prompt):
        chunks += 1
    return chunks


def error_name(exc: BaseException) -> str:
    """`genai.errors.ClientError(429)`, `aiohttp.ClientPayloadError`, `StreamBroken`, ..."""
    module = type(exc).__module__
    prefix = {
        "google.genai.errors": "genai.errors.",
        "aiohttp.client_exceptions": "aiohttp.",
        "engine._exceptions": "",
        "json.decoder": "json.",
    }.get(module, module + ".")
    status = getattr(exc, "code", None) if isinstance(exc, genai_errors.APIError) else None
    if status is None and isinstance(exc, NanoeditError):
        status = getattr(exc, "status", None)
    suffix = f"({status})" if isinstance(status, int) else ""
    return f"{prefix}{type(exc).__name__}{suffix}"


def generate_bodies(emu: Emulator) -> list[JSON]:
    """Decoded generate requests the emulator received, in arrival order."""
    return [json.loads(r.body) for r in emu.requests if r.endpoint in GENERATE and r.body]


def roles_of(contents: Sequence[JSON] | Sequence[types.Content] | Sequence[Content]) -> list[str]:
    """The role of each Content ("user" when absent)."""
    out = []
    for c in contents:
        role = c.get("role") if isinstance(c, dict) else c.role
        out.append(role or "user")
    return out


def alternates(roles: Sequence[str]) -> bool:
    """user, model, user, model, ... with no two turns of one role in a row."""
    return all(r == ("user" if i % 2 == 0 else "model") for i, r in enumerate(roles))


def model_runs(roles: Sequence[str]) -> list[int]:
    """Lengths of the runs of consecutive model Contents: one run per model turn."""
    runs: list[int] = []
    previous = ""
    for role in roles:
        if role == "model":
            if previous == "model":
                runs[-1] += 1
            else:
                runs.append(1)
        previous = role
    return runs


def user_texts(contents: Sequence[JSON]) -> list[str]:
    """The first text of every user Content of a request body."""
    return [
        next((p["text"] for p in c.get("parts", []) if "text" in p), "")
        for c in contents
        if c.get("role", "user") == "user"
    ]


def json_parts(contents: Iterable[JSON]) -> list[JSON]:
    """Every part of these Contents."""
    return [p for c in contents for p in c.get("parts", [])]


def seconds(value: float) -> str:
    """A duration for a cell."""
    return f"{value:.2f} s"


def runs_text(runs: Sequence[int]) -> str:
    """How many Contents each model turn of a request took."""
    if runs and all(r == 1 for r in runs):
        return "1 Content per model turn"
    return "model turns as " + "+".join(str(r) for r in runs) + " Contents"


# --- 1. streamed turn fragmentation ---------------------------------------------------------------


async def fragmentation(sig_last: bool) -> Row:
    """One streamed turn, then a plain one: the history and the second request."""
    faults = "sig_last" if sig_last else ""
    async with emulator(faults) as emu, sdk_chat(emu.base_url) as chat:
        chunks = await sdk_stream_turn(chat, PROMPTS[0])
        # get_history() returns the chat's own list, which the next turn extends: copy now.
        history = list(chat.get_history())
        curated = list(chat.get_history(curated=True))
        model = [c for c in history if c.role == "model"]
        parts = [p for c in model for p in c.parts or []]
        signed = sum(1 for p in parts if p.thought_signature)
        try:
            await chat.send_message(PROMPTS[1])
            next_ok = "accepted"
        except Exception as exc:
            next_ok = error_name(exc)
        runs = model_runs(roles_of(generate_bodies(emu)[-1]["contents"]))
    sdk = Cell(
        f"{len(model)} model Contents, {len(parts)} parts ({signed} signed; one Content per "
        f"chunk, {chunks} chunks; curated history: {len(curated)} Contents, "
        f"{'the same' if curated == history else 'different'}); next request carries "
        f"{runs_text(runs)}: {next_ok}",
        {
            "chunks": chunks,
            "model_contents": len(model),
            "model_parts": len(parts),
            "signed_parts": signed,
            "history_contents": len(history),
            "curated_equals_history": curated == history,
            "curated_contents": len(curated),
            "next_request_model_runs": runs,
            "next_request": next_ok,
        },
    )
    async with emulator(faults) as emu, nanoedit(emu.base_url) as ne:
        s = await ne.engine.create_session(MODEL)
        await s.send(PROMPTS[0], stream=True)
        contents = s.contents()
        model_c = [c for c in contents if c.role == "model"]
        nparts = [p for c in model_c for p in c.parts]
        nsigned = sum(1 for p in nparts if p.thought_signature)
        try:
            await s.send(PROMPTS[1], stream=False)
            nnext = "accepted"
        except NanoeditError as exc:
            nnext = error_name(exc)
        nruns = model_runs(roles_of(generate_bodies(emu)[-1]["contents"]))
        deltas = ne.counts(1)["turn.text_delta"]
    ne_cell = Cell(
        f"{len(model_c)} model Content, {len(nparts)} parts ({nsigned} signed; merged from "
        f"{deltas} text deltas and the image); next request carries {runs_text(nruns)}: "
        f"{nnext}",
        {
            "model_contents": len(model_c),
            "model_parts": len(nparts),
            "signed_parts": nsigned,
            "text_deltas": deltas,
            "next_request_model_runs": nruns,
            "next_request": nnext,
        },
    )
    name = "streamed turn, signature on a trailing empty text part (`sig_last`)"
    return Row(
        "1b" if sig_last else "1a",
        name if sig_last else "streamed turn: Contents holding the model turn",
        sdk,
        ne_cell,
    )


# --- 2. failed and broken turns -------------------------------------------------------------------


def _answer(response: types.GenerateContentResponse) -> str:
    """What a response says about its end: block reason or finish reason ("" if neither)."""
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        return f"prompt_feedback.block_reason {feedback.block_reason.value}"
    if response.candidates and response.candidates[0].finish_reason is not None:
        return f"finish_reason {response.candidates[0].finish_reason.value}"
    return ""


def plural(n: int, word: str) -> str:
    """`1 request`, `2 requests`."""
    return f"{n} {word}{'' if n == 1 else 's'}"


async def failure(key: str, scenario: str, fault: str, stream: bool) -> Row:
    """Turn 1 plain; turn 2 under `fault`; turn 3 without faults: history and requests."""
    async with emulator() as emu, sdk_chat(emu.base_url) as chat:
        await chat.send_message(PROMPTS[0])
        full0, cur0 = len(chat.get_history()), len(chat.get_history(curated=True))
        emu.set_faults(fault)
        sent0 = len(generate_bodies(emu))
        chunks = 0
        raised = "none"
        answer = ""
        t0 = time.monotonic()
        try:
            if stream:
                async for chunk in await chat.send_message_stream(PROMPTS[1]):
                    chunks += 1
                    answer = _answer(chunk) or answer
            else:
                answer = _answer(await chat.send_message(PROMPTS[1]))
        except Exception as exc:
            raised = error_name(exc)
        wall = time.monotonic() - t0
        requests = len(generate_bodies(emu)) - sent0
        full1, cur1 = len(chat.get_history()), len(chat.get_history(curated=True))
        added_model = [c for c in chat.get_history()[full0:] if c.role == "model"]
        empty_model = sum(1 for c in added_model if not c.parts)
        emu.set_faults("")
        try:
            await chat.send_message(PROMPTS[2])
            next_ok = "accepted"
        except Exception as exc:
            next_ok = error_name(exc)
        body = generate_bodies(emu)[-1]["contents"]
        next_roles = roles_of(body)
        carries_failed = PROMPTS[1] in user_texts(body)
    sdk_what = (
        f"raised {raised}"
        if raised != "none"
        else f"returned normally ({answer or 'no finish reason'})"
    )
    if stream:
        sdk_what += f" after yielding {plural(chunks, 'chunk')}"
    sdk = Cell(
        f"{sdk_what}; {plural(requests, 'request')}; history +{full1 - full0} Contents "
        f"(curated +{cur1 - cur0}"
        + (f"; {empty_model} empty model Content" if empty_model else "")
        + f"); next request: roles alternate {'yes' if alternates(next_roles) else 'no'}, "
        f"carries prompt 2 {'yes' if carries_failed else 'no'}, {next_ok}",
        {
            "raised": raised,
            "returned": answer,
            "chunks_yielded": chunks,
            "requests": requests,
            "wall_s": round(wall, 3),
            "history_added": full1 - full0,
            "curated_added": cur1 - cur0,
            "empty_model_contents_added": empty_model,
            "next_roles_alternate": alternates(next_roles),
            "next_carries_failed_prompt": carries_failed,
            "next_request": next_ok,
        },
    )
    async with emulator() as emu, nanoedit(emu.base_url) as ne:
        s = await ne.engine.create_session(MODEL)
        await s.send(PROMPTS[0], stream=False)
        before = encode_contents(s.contents())
        emu.set_faults(fault)
        sent0 = len(generate_bodies(emu))
        outcome = ""
        attempts = 0
        t0 = time.monotonic()
        try:
            turn = await s.send(PROMPTS[1], stream=stream)
            outcome, attempts = f"committed turn {turn.index}", turn.attempts
        except NanoeditError as exc:
            outcome, attempts = f"raised {error_name(exc)}", getattr(exc, "attempts", 1)
        wall = time.monotonic() - t0
        requests = len(generate_bodies(emu)) - sent0
        unchanged = encode_contents(s.contents()) == before
        added = len(s.contents()) - 2
        added_runs = model_runs(roles_of(s.contents()[2:]))
        counts = ne.counts(2)
        failed_attempts = [
            ev.attempts for ev in ne.events if isinstance(ev, TurnFailed) and ev.turn == 2
        ]
        emu.set_faults("")
        try:
            await s.send(PROMPTS[2], stream=False)
            nnext = "accepted"
        except NanoeditError as exc:
            nnext = error_name(exc)
        body = generate_bodies(emu)[-1]["contents"]
        nroles = roles_of(body)
        ncarries = PROMPTS[1] in user_texts(body)
    history = "history unchanged"
    if not unchanged:
        history = f"history +{added} Contents" + (f" ({runs_text(added_runs)})" if added else "")
    events = ", ".join(
        f"{n} {t}" + (f" (attempts={failed_attempts[0]})" if t == "turn.failed" else "")
        for t, n in sorted(counts.items())
        if t in ("turn.retrying", "turn.failed")
    )
    ne_cell = Cell(
        f"{outcome} after {plural(attempts, 'attempt')} "
        f"({plural(requests, 'request')}{'; ' + events if events else ''}); {history}; next "
        f"request: roles alternate {'yes' if alternates(nroles) else 'no'}, carries prompt 2 "
        f"{'yes' if ncarries else 'no'}, {nnext}",
        {
            "outcome": outcome,
            "attempts": attempts,
            "requests": requests,
            "wall_s": round(wall, 3),
            "history_unchanged": unchanged,
            "history_added": added,
            "events": dict(counts),
            "turn_failed_event_attempts": failed_attempts,
            "next_roles_alternate": alternates(nroles),
            "next_carries_failed_prompt": ncarries,
            "next_request": nnext,
        },
    )
    return Row(key, scenario, sdk, ne_cell)


# --- 3. retries -----------------------------------------------------------------------------------


async def _sdk_retry(fault: str, retry: bool) -> JSON:
    async with (
        emulator(fault) as emu,
        Arrivals(emu) as arrivals,
        sdk_chat(emu.base_url, retry=retry) as chat,
    ):
        t0 = time.monotonic()
        try:
            await chat.send_message(PROMPTS[0])
            outcome = "answered"
        except Exception as exc:
            outcome = error_name(exc)
        wall = time.monotonic() - t0
        history = len(chat.get_history())
    return {
        "retry_options": "HttpRetryOptions()" if retry else "default",
        "outcome": outcome,
        "requests": len(arrivals.times),
        "gaps_s": arrivals.gaps,
        "wall_s": round(wall, 3),
        "history_contents": history,
    }


def _sdk_retry_text(run: JSON) -> str:
    label = "default" if run["retry_options"] == "default" else "`HttpRetryOptions()`"
    if run["requests"] < 2:
        return f"{label}: no retry, {run['outcome']} after {seconds(run['wall_s'])}"
    gaps = ", ".join(seconds(g) for g in run["gaps_s"])
    return f"{label}: {run['requests']} requests, retried after {gaps}; {run['outcome']}"


async def retry(key: str, scenario: str, fault: str, asked: float | None, opt_in: bool) -> Row:
    """The first request fails; does the client retry, and after how long?"""
    runs = [await _sdk_retry(fault, retry=False)]
    if opt_in:
        runs.append(await _sdk_retry(fault, retry=True))
    text = "; ".join(_sdk_retry_text(r) for r in runs)
    if asked is not None:
        text += f" (server asked {seconds(asked)})"
    sdk = Cell(text, {"runs": runs, "server_delay_s": asked})
    async with emulator(fault) as emu, Arrivals(emu) as arrivals, nanoedit(emu.base_url) as ne:
        s = await ne.engine.create_session(MODEL)
        t0 = time.monotonic()
        try:
            turn = await s.send(PROMPTS[0], stream=False)
            outcome = f"committed after {turn.attempts} attempts"
        except NanoeditError as exc:
            outcome = f"raised {error_name(exc)}"
        wall = time.monotonic() - t0
        retrying = [
            {"delay_s": round(ev.delay_s, 3), "status": ev.status}
            for ev in ne.events
            if isinstance(ev, TurnRetrying)
        ]
    gaps = ", ".join(seconds(g) for g in arrivals.gaps) or "none"
    event = "; ".join(
        f"`turn.retrying` delay_s={r['delay_s']:g}"
        + (f", status {r['status']}" if r["status"] else "")
        for r in retrying
    )
    ne_cell = Cell(
        f"{len(arrivals.times)} requests, retried after {gaps}; {event}; {outcome}",
        {
            "outcome": outcome,
            "requests": len(arrivals.times),
            "gaps_s": arrivals.gaps,
            "wall_s": round(wall, 3),
            "retrying_events": retrying,
        },
    )
    return Row(key, scenario, sdk, ne_cell)


# --- 4. concurrent sends on one chat --------------------------------------------------------------


def _coherence(bodies: Sequence[JSON], prompts: Sequence[str]) -> tuple[list[int], int]:
    """Contents per concurrent request (in call order) and how many carried every earlier turn."""
    by_prompt = {user_texts(b["contents"])[-1]: b for b in bodies}
    sizes, coherent = [], 0
    for k, prompt in enumerate(prompts):
        body = by_prompt[prompt]["contents"]
        sizes.append(len(body))
        earlier = [PROMPTS[0], *prompts[:k]]
        if user_texts(body)[:-1] == earlier and alternates(roles_of(body)):
            coherent += 1
    return sizes, coherent


async def concurrent() -> Row:
    """Turn 1, then three `send` calls at once on the same chat / session."""
    prompts = PROMPTS[1:4]
    settings: JSON = {"latency": 0.2, "latency_jitter": 0.2, "seed": CONCURRENT_SEED}
    async with emulator(**settings) as emu, sdk_chat(emu.base_url) as chat:
        await chat.send_message(PROMPTS[0])
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(chat.send_message(p) for p in prompts), return_exceptions=True
        )
        wall = time.monotonic() - t0
        errors = [error_name(r) for r in results if isinstance(r, BaseException)]
        history = chat.get_history()
        roles = roles_of(history)
        order = [
            prompts.index(c.parts[0].text) + 1
            for c in history[2:]
            if c.role == "user" and c.parts and c.parts[0].text in prompts
        ]
        sizes, coherent = _coherence(generate_bodies(emu)[1:], prompts)
    sdk = Cell(
        f"history roles alternate {'yes' if alternates(roles) else 'no'}, turns in order "
        f"{order} (call order 1,2,3); requests carried {sizes} Contents: {coherent}/3 carry "
        f"every earlier turn; {len(errors)} errors; {seconds(wall)}",
        {
            "history_alternates": alternates(roles),
            "history_order": order,
            "request_contents": sizes,
            "coherent_requests": coherent,
            "errors": errors,
            "wall_s": round(wall, 3),
        },
    )
    async with emulator(**settings) as emu, nanoedit(emu.base_url) as ne:
        s = await ne.engine.create_session(MODEL)
        await s.send(PROMPTS[0])
        t0 = time.monotonic()
        nresults = await asyncio.gather(*(s.send(p) for p in prompts), return_exceptions=True)
        wall = time.monotonic() - t0
        nerrors = [error_name(r) for r in nresults if isinstance(r, BaseException)]
        contents = s.contents()
        nroles = roles_of(contents)
        norder = [
            prompts.index(c.parts[0].text or "") + 1
            for c in contents[2:]
            if c.role == "user" and c.parts and c.parts[0].text in prompts
        ]
        nsizes, ncoherent = _coherence(generate_bodies(emu)[1:], prompts)
    ne_cell = Cell(
        f"history roles alternate {'yes' if alternates(nroles) else 'no'}, turns in order "
        f"{norder}; requests carried {nsizes} Contents: {ncoherent}/3 carry every earlier "
        f"turn; {len(nerrors)} errors; {seconds(wall)} (turns run one at a time)",
        {
            "history_alternates": alternates(nroles),
            "history_order": norder,
            "request_contents": nsizes,
            "coherent_requests": ncoherent,
            "errors": nerrors,
            "wall_s": round(wall, 3),
        },
    )
    return Row("4", "3 concurrent sends on one chat (0.2-0.4 s latency)", sdk, ne_cell)


# --- 5. budgets -----------------------------------------------------------------------------------


async def session_budget() -> Row:
    """Three turns where the third exceeds a small token budget."""
    async with emulator() as emu, sdk_chat(emu.base_url) as chat:
        prompt_tokens = 0
        for prompt in PROMPTS[:3]:
            response = await chat.send_message(prompt)
            usage = response.usage_metadata
            prompt_tokens = usage.prompt_token_count or 0 if usage else 0
        sent = len(generate_bodies(emu))
    sdk = Cell(
        f"no budget option (tokens, bytes or money); turn 3 sent anyway: {sent} requests, "
        f"turn 3 prompt {prompt_tokens:,} tokens",
        {"option": None, "requests": sent, "turn3_prompt_tokens": prompt_tokens},
    )
    results: JSON = {}
    async with emulator() as emu, nanoedit(emu.base_url) as ne:
        for policy in ("reject", "drop_oldest"):
            s = await ne.engine.create_session(
                MODEL, budget=Budget(max_context_tokens=TOKEN_BUDGET, policy=policy)
            )
            for prompt in PROMPTS[:2]:
                await s.send(prompt)
            before = len(generate_bodies(emu))
            try:
                turn = await s.send(PROMPTS[2])
                outcome = f"sent turn {turn.index} carrying {len(turn.record.carried or [])} turns"
            except BudgetExceeded as exc:
                outcome = f"BudgetExceeded(needed {exc.needed:,.0f}, allowed {exc.allowed:,.0f})"
            events = dict(ne.counts(3))
            compacted = [
                ev.dropped_turns
                for ev in ne.events
                if isinstance(ev, HistoryCompacted) and ev.session_id == s.id
            ]
            results[policy] = {
                "outcome": outcome,
                "requests": len(generate_bodies(emu)) - before,
                "events": {k: v for k, v in events.items() if k.startswith(("budget", "history"))},
                "dropped_turns": compacted[0] if compacted else [],
            }
            ne.events.clear()
    reject, drop = results["reject"], results["drop_oldest"]
    ne_cell = Cell(
        f"`reject`: {reject['outcome']}, {reject['requests']} requests sent; "
        f"`drop_oldest`: {drop['requests']} request, turns {drop['dropped_turns']} left out "
        f"(`history.compacted`)",
        {"budget_tokens": TOKEN_BUDGET, **results},
    )
    return Row("5a", f"session budget of {TOKEN_BUDGET:,} tokens, turn 3", sdk, ne_cell)


async def context_window() -> Row:
    """A prompt over the model's context window."""
    async with emulator() as emu, sdk_chat(emu.base_url) as chat:
        try:
            await chat.send_message(HUGE_PROMPT)
            outcome = "answered"
        except Exception as exc:
            outcome = error_name(exc)
        uploaded = sum(len(r.body) for r in emu.requests)
        requests = len(emu.requests)
    sdk = Cell(
        f"no option; {requests} request ({uploaded / 1e6:.1f} MB uploaded), server answered "
        f"{outcome}",
        {"requests": requests, "uploaded_bytes": uploaded, "outcome": outcome},
    )
    async with emulator() as emu, nanoedit(emu.base_url) as ne:
        s = await ne.engine.create_session(MODEL)
        try:
            await s.send(HUGE_PROMPT)
            noutcome = "sent"
        except NanoeditError as exc:
            noutcome = error_name(exc)
            if isinstance(exc, BudgetExceeded):
                noutcome += f"(needed {exc.needed:,.0f} tokens, allowed {exc.allowed:,.0f})"
        nrequests = len(emu.requests)
    ne_cell = Cell(
        f"{noutcome} before sending; {nrequests} requests",
        {"requests": nrequests, "outcome": noutcome},
    )
    return Row("5b", "a prompt over the context window (~150k tokens > 131,072)", sdk, ne_cell)


# --- 6. events ------------------------------------------------------------------------------------


def _counts_text(counts: Counter[str]) -> str:
    return ", ".join(f"{t} {n}" for t, n in sorted(counts.items())) + f" ({sum(counts.values())})"


async def events() -> list[Row]:
    """Typed events per turn: streamed, plain, retried, failed."""
    cases = (
        ("6a", "events: streamed turn", "", True),
        ("6b", "events: plain turn", "", False),
        ("6c", "events: turn retried once (`fail_first=1:500`)", "fail_first=1:500", False),
        ("6d", "events: failed turn (`block`)", "block", False),
    )
    rows = []
    async with emulator() as emu, sdk_chat(emu.base_url) as chat:
        chunks = await sdk_stream_turn(chat, PROMPTS[0])
    for key, scenario, fault, stream in cases:
        async with emulator(fault) as emu, nanoedit(emu.base_url) as ne:
            s = await ne.engine.create_session(MODEL)
            with suppress(NanoeditError):
                await s.send(PROMPTS[0], stream=stream)
            counts = ne.counts(1)
            failed = [ev for ev in ne.events if isinstance(ev, TurnFailed)]
        sdk_text = "no event API"
        if stream:
            sdk_text += f" (the stream yields {chunks} raw response chunks)"
        data: JSON = {"counts": dict(counts)}
        text = _counts_text(counts)
        if failed:
            data["failed_error_type"] = failed[0].error_type
            text += f"; error_type {data['failed_error_type']}"
        rows.append(Row(key, scenario, Cell(sdk_text, {"event_api": None}), Cell(text, data)))
    return rows


# --- 7. thought signatures ------------------------------------------------------------------------


def _signature_audit(body: Sequence[JSON]) -> JSON:
    """Model image parts and signed ones in a request's history; model turns with a text sig."""
    images = signed = turns = text_signed = 0
    start = 0
    roles = roles_of(body)
    for run in model_runs(roles):
        start = roles.index("model", start)
        parts = json_parts(body[start : start + run])
        start += run
        turns += 1
        text_signed += any("text" in p and "thoughtSignature" in p for p in parts)
        for p in parts:
            if "inlineData" in p and not p.get("thought"):
                images += 1
                signed += "thoughtSignature" in p
    return {
        "images": images,
        "signed_images": signed,
        "model_turns": turns,
        "text_signed_turns": text_signed,
    }


async def signatures() -> Row:
    """3 plain then 3 streamed turns; the emulator rejects a missing signature with a 400."""
    async with emulator() as emu, sdk_chat(emu.base_url) as chat:
        errors: list[str] = []
        for i, prompt in enumerate(PROMPTS):
            try:
                if i < 3:
                    await chat.send_message(prompt)
                else:
                    await sdk_stream_turn(chat, prompt)
            except Exception as exc:
                errors.append(error_name(exc))
        audit = _signature_audit(generate_bodies(emu)[-1]["contents"])
        requests = len(generate_bodies(emu))
    sdk = Cell(
        _sig_text(requests, errors, audit), {"requests": requests, "errors": errors, **audit}
    )
    async with emulator() as emu, nanoedit(emu.base_url) as ne:
        s = await ne.engine.create_session(MODEL)
        nerrors: list[str] = []
        for i, prompt in enumerate(PROMPTS):
            try:
                await s.send(prompt, stream=i >= 3)
            except NanoeditError as exc:
                nerrors.append(error_name(exc))
        naudit = _signature_audit(generate_bodies(emu)[-1]["contents"])
        nrequests = len(generate_bodies(emu))
    ne_cell = Cell(
        _sig_text(nrequests, nerrors, naudit),
        {"requests": nrequests, "errors": nerrors, **naudit},
    )
    return Row("7", "thought signatures: 3 plain + 3 streamed turns", sdk, ne_cell)


def _sig_text(requests: int, errors: Sequence[str], audit: JSON) -> str:
    rejected = sum(1 for e in errors if e.endswith("(400)"))
    return (
        f"{requests} requests, {rejected} rejected (400); 6th request's history: "
        f"{audit['signed_images']}/{audit['images']} model images signed, "
        f"{audit['text_signed_turns']}/{audit['model_turns']} model turns with a text signature"
    )


# --- the run --------------------------------------------------------------------------------------


async def run_all(progress: Callable[[str], None]) -> list[Row]:
    """Every scenario, in order."""
    rows: list[Row] = []
    steps: list[tuple[str, Callable[[], Awaitable[Row | list[Row]]]]] = [
        ("1a", lambda: fragmentation(sig_last=False)),
        ("1b", lambda: fragmentation(sig_last=True)),
        (
            "2a",
            lambda: failure(
                "2a", "stream cut after 2 events, every attempt (`cut:2`)", "cut:2", stream=True
            ),
        ),
        (
            "2b",
            lambda: failure(
                "2b",
                "stream cut after 2 events, once (`fail_first=1:cut:2`)",
                "fail_first=1:cut:2",
                stream=True,
            ),
        ),
        ("2c", lambda: failure("2c", "prompt blocked (`block`), plain", "block", stream=False)),
        (
            "2d",
            lambda: failure(
                "2d", "image withheld (`image_safety`), streamed", "image_safety", stream=True
            ),
        ),
        (
            "2e",
            lambda: failure("2e", "server error on every attempt (`500`), plain", "500", False),
        ),
        (
            "3a",
            lambda: retry(
                "3a",
                "429 with RetryInfo 2s + Retry-After: 2, once (`fail_first=1:429:retry=2`)",
                "fail_first=1:429:retry=2",
                2.0,
                opt_in=True,
            ),
        ),
        (
            "3b",
            lambda: retry(
                "3b",
                "503 with RetryInfo 1s + Retry-After: 1, once (`fail_first=1:503:retry=1`)",
                "fail_first=1:503:retry=1",
                1.0,
                opt_in=True,
            ),
        ),
        (
            "3c",
            lambda: retry(
                "3c",
                "connection reset before the headers, once (`fail_first=1:reset`)",
                "fail_first=1:reset",
                None,
                opt_in=False,
            ),
        ),
        ("4", concurrent),
        ("5a", session_budget),
        ("5b", context_window),
        ("6", events),
        ("7", signatures),
    ]
    for key, step in steps:
        t0 = time.monotonic()
        result = await step()
        rows.extend(result if isinstance(result, list) else [result])
        progress(f"{key}: {time.monotonic() - t0:.1f} s")
    return rows


def table(rows: Sequence[Row]) -> str:
    """The Markdown table: scenario | google-genai | nanoedit."""
    return markdown_table(
        ["#", "scenario", f"google-genai {genai.__version__}", "nanoedit"],
        [[r.key, r.scenario, r.sdk.text, r.nanoedit.text] for r in rows],
        right=(),
    )


def main(argv: list[str] | None = None) -> int:
    """Run every scenario, print the table, write --json, append to RESULTS.md."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", metavar="FILE", help="write every measured value as JSON")
    p.add_argument(
        "--no-results", action="store_true", help="do not append to benchmarks/RESULTS.md"
    )
    args = p.parse_args(argv)
    # The SDK subclasses aiohttp.ClientSession, which aiohttp deprecates: its warning, not ours.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"google\.")
    # The library never configures structlog; unconfigured it prints info lines to stdout.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    info = machine_info(None if argv is None else ["benchmarks/behaviour.py", *argv])
    t0 = time.monotonic()
    rows = asyncio.run(run_all(lambda line: print(line, file=sys.stderr)))
    elapsed = time.monotonic() - t0
    out = table(rows)
    print(out)
    notes = [
        f"google-genai {genai.__version__}, `client.aio.chats` with "
        '`response_modalities=["TEXT", "IMAGE"]`, default HttpOptions unless a cell says '
        'otherwise; nanoedit with every EngineConfig default (`provider="custom"`)',
        f"each side on its own in-process emulator (flat 1K images, `{MODEL}`); "
        "requests counted and inspected at the emulator; delays between requests from polling "
        "its request log every 1 ms",
        f"scenario 4: emulator latency 0.2 s + uniform(0, 0.2) s jitter (seed "
        f"{CONCURRENT_SEED}), so answers may finish out of call order; scenario 2: turn 1 "
        "clean, turn 2 under the fault, then a fault-free turn 3 tests the history",
        "google-genai's retry paths, from its source (`_api_client.py`): with the default "
        "`retry_options=None` HTTP errors are not retried (tenacity `stop_after_attempt(1)`); "
        "`HttpRetryOptions()` retries 408/429/500/502/503/504 up to 5 attempts with "
        "`wait_exponential_jitter(initial=1, jitter=1)` and reads neither RetryInfo nor "
        "Retry-After; a connection error is retried once, even by default, after "
        "`1 + randint(0, 9)` s",
        f"total run time {elapsed:.1f} s",
    ]
    if args.json:
        payload = {
            "machine": info,
            "google_genai": genai.__version__,
            "elapsed_s": round(elapsed, 2),
            "rows": [
                {
                    "key": r.key,
                    "scenario": r.scenario,
                    "google_genai": {"text": r.sdk.text, **r.sdk.data},
                    "nanoedit": {"text": r.nanoedit.text, **r.nanoedit.data},
                }
                for r in rows
            ],
        }
        Path(args.json).write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    if not args.no_results:
        if not RESULTS_PATH.exists():
            RESULTS_PATH.write_text(
                "# Benchmark results\n\nAppended by the scripts in benchmarks/.\n",
                encoding="utf-8",
            )
        append_results("Behaviour claims: google-genai chat vs nanoedit", info, out, notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
