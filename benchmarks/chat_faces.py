"""A chat product's conversation through `/v1/chat/completions` against the native API: request
bytes upstream per turn, side by side in one run.

    python benchmarks/chat_faces.py [--turns 10] [--size 1K]

A chat product resends the whole conversation on every request (here with the official `openai`
SDK, assistant images as data URLs, as Open WebUI and LibreChat send them). nanoedit matches it
to the session it continues, so what goes upstream is what the native API sends for the same
turns: the history images by reference (the Files API) or not at all (Interactions). Printed per
turn: bytes the client sent to nanoedit, and bytes nanoedit sent upstream, for the chat face and
for the native REST API (`POST /v1/sessions/{id}/turns`), against the emulator in its own
process.

Target (issue 24): the chat face's upstream bytes per turn are no more than the native API's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import aiohttp
import openai
from _common import PROMPTS, append_results, emulator_process, machine_info, markdown_table
from aiohttp import web

from engine import Engine, EngineConfig
from engine.cli._common import configure_logging
from engine.serve import ServeOptions, create_app

KEY = "bench-key-0001"


async def _run(emulator_url: str, turns: int, size: str) -> dict[str, Any]:
    # History images by reference (the Files API), as the google preset sends them.
    config = EngineConfig(provider="custom", base_url=emulator_url, history_images="files")
    engine = Engine(config)
    await engine.start()
    app = create_app(engine, ServeOptions(keys={"bench": [KEY]}))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0)
    out: dict[str, Any] = {"chat_sent": [], "native_sent": []}
    try:
        async with aiohttp.ClientSession() as http:
            # The chat face, the conversation resent in full every time.
            messages: list[Any] = []
            session_id = ""
            for n in range(turns):
                messages.append({"role": "user", "content": PROMPTS[n % len(PROMPTS)]})
                out["chat_sent"].append(len(json.dumps(messages)))
                answer = await client.chat.completions.create(
                    model="nano-banana-2.1",
                    messages=messages,
                    extra_body={"image_config": {"image_size": size}},
                )
                message = answer.choices[0].message
                images = (message.model_extra or {}).get("images", [])
                session_id = (answer.model_extra or {})["nanoedit"]["session_id"]
                messages.append(
                    {"role": "assistant", "content": message.content or "", "images": images}
                )
            out["chat_upstream"] = await _records(engine, session_id)
            # The native API: one session, one turn per request.
            headers = {"Authorization": f"Bearer {KEY}"}
            body = {"image_config": {"image_size": size}}
            async with http.post(f"{base}/v1/sessions", json=body, headers=headers) as resp:
                native_id = (await resp.json())["id"]
            for n in range(turns):
                turn = {"text": PROMPTS[n % len(PROMPTS)]}
                out["native_sent"].append(len(json.dumps(turn)))
                url = f"{base}/v1/sessions/{native_id}/turns"
                async with http.post(url, json=turn, headers=headers) as resp:
                    assert resp.status == 200, await resp.text()
            out["native_upstream"] = await _records(engine, native_id)
    finally:
        await client.close()
        await runner.cleanup()
        await engine.aclose()
    return out


async def _records(engine: Engine, session_id: str) -> list[int]:
    state = await engine.store.load(session_id)
    return [t.request_bytes for t in state.path()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--size", default="1K")
    args = parser.parse_args()
    configure_logging(0)
    info = machine_info()
    with emulator_process("--flat") as (_, emulator_url):
        run = asyncio.run(_run(emulator_url, args.turns, args.size))
    rows = []
    for n in range(args.turns):
        rows.append(
            [
                str(n + 1),
                f"{run['chat_sent'][n]:,}",
                f"{run['chat_upstream'][n]:,}",
                f"{run['native_sent'][n]:,}",
                f"{run['native_upstream'][n]:,}",
            ]
        )
    table = markdown_table(
        [
            "turn",
            "chat: client -> nanoedit B (whole conversation, data URLs)",
            "chat: nanoedit -> upstream B",
            "native: client -> nanoedit B",
            "native: nanoedit -> upstream B",
        ],
        rows,
        right=range(1, 5),
    )
    print(table)
    worst = max(c - n for c, n in zip(run["chat_upstream"], run["native_upstream"], strict=True))
    note = (
        f"{args.turns} turns at {args.size}: upstream bytes, chat face total "
        f"{sum(run['chat_upstream']):,} B vs native {sum(run['native_upstream']):,} B; the most "
        f"any chat turn sent beyond its native twin: {worst:,} B (target <= 0); the client sent "
        f"the chat face {run['chat_sent'][-1]:,} B at turn {args.turns}"
    )
    print(note)
    append_results("chat face vs native API: upstream bytes per turn", info, table, [note])
    return 0


if __name__ == "__main__":
    sys.exit(main())
