"""`nanoedit serve` (issue 12): every endpoint, tenants, SSE turns and reconnects, status codes,
draining on SIGTERM. The gateway runs on 127.0.0.1 in the test's loop, in front of an engine
whose provider is an emulator on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from engine import Engine, RetryPolicy
from engine.serve import ServeOptions, create_app
from tests.conftest import ENV_VARS, EmulatorFactory, config_for, png

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")

KEYS = {"alice": ["alice-key-0001"], "bob": ["bob-key-0002", "bob-key-0003"]}
Serve = Callable[..., Awaitable["Client"]]


class Client:
    """A tiny client of the gateway's API (one key, or none)."""

    def __init__(self, base: str, http: aiohttp.ClientSession, key: str | None = None) -> None:
        self.base = base
        self.http = http
        self.key = key

    def as_key(self, key: str | None) -> Client:
        return Client(self.base, self.http, key)

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        return {**h, **(extra or {})}

    async def call(
        self, method: str, path: str, body: Any = None, **kw: Any
    ) -> tuple[int, Any, Any]:
        data = (
            json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
        )
        async with self.http.request(
            method, self.base + path, data=data, headers=self.headers(kw.pop("headers", None)), **kw
        ) as resp:
            raw = await resp.read()
            try:
                doc = json.loads(raw) if raw else None
            except ValueError:
                doc = raw
            return resp.status, doc, resp.headers

    async def new_session(self, **body: Any) -> dict[str, Any]:
        status, doc, _ = await self.call("POST", "/v1/sessions", body)
        assert status == 201, doc
        return dict(doc)

    async def turn(self, sid: str, text: str, **body: Any) -> tuple[int, Any]:
        status, doc, _ = await self.call(
            "POST", f"/v1/sessions/{sid}/turns", {"text": text, **body}
        )
        return status, doc


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The events of an SSE response as dicts with "id", "event" and the decoded "data"."""
    buffer = b""
    async for chunk in resp.content.iter_any():
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            fields: dict[str, Any] = {}
            for line in block.decode().split("\n"):
                if line.startswith(":") or not line:
                    continue
                name, _, value = line.partition(": ")
                fields[name] = value
            if "data" in fields:
                fields["data"] = json.loads(fields["data"])
                yield fields


@pytest.fixture
async def serve(make_emulator: EmulatorFactory) -> AsyncIterator[Serve]:
    """Start gateways (with their own engine and emulator); all closed afterwards."""
    started: list[tuple[TestServer, Engine, aiohttp.ClientSession]] = []

    async def factory(
        options: ServeOptions | None = None, *, emulator: dict[str, Any] | None = None, **cfg: Any
    ) -> Client:
        emu = await make_emulator(**(emulator or {}))
        engine = Engine(config_for(emu.base_url, **cfg))
        await engine.start()
        server = TestServer(create_app(engine, options), host="127.0.0.1")
        await server.start_server()
        http = aiohttp.ClientSession()
        started.append((server, engine, http))
        return Client(str(server.make_url("")).rstrip("/"), http)

    yield factory
    for server, engine, http in reversed(started):
        await http.close()
        await server.close()
        await engine.aclose()


# --- sessions and turns ----------------------------------------------------------------------


async def test_session_lifecycle(serve: Serve) -> None:
    """A session is created, takes turns, is listed, fetched and deleted over HTTP."""
    api = await serve()
    session = await api.new_session(title="mug", image_config={"aspect_ratio": "16:9"})
    assert session["title"] == "mug" and session["turns"] == [] and session["head"] is None
    sid = session["id"]
    status, turn = await api.turn(sid, "a mug on an oak table")
    assert status == 200 and turn["index"] == 1 and turn["prompt"] == "a mug on an oak table"
    image = turn["images"][0]
    assert image["url"] == f"/v1/images/{image['sha256']}" and image["width"] > image["height"]
    async with api.http.get(api.base + image["url"]) as resp:
        data = await resp.read()
        assert resp.status == 200 and data[:4] == b"\x89PNG"
        assert resp.headers["Content-Type"] == "image/png"
        assert resp.headers["ETag"] == f'"{image["sha256"]}"'
        assert resp.headers["Cache-Control"] == "private, max-age=31536000, immutable"
    # A second turn with an image of the tenant's (by sha256) and a new one (base64).
    status, second = await api.turn(
        sid,
        "put both side by side",
        images=[{"sha256": image["sha256"]}, {"data": base64.b64encode(png(16, 16)).decode()}],
    )
    assert status == 200 and len(second["input_images"]) == 2
    status, doc, _ = await api.call("GET", f"/v1/sessions/{sid}")
    assert [t["index"] for t in doc["turns"]] == [1, 2]
    assert doc["cost_usd"] == pytest.approx(turn["cost_usd"] + second["cost_usd"])
    status, listing, _ = await api.call("GET", "/v1/sessions")
    assert [s["id"] for s in listing["sessions"]] == [sid] and listing["sessions"][0]["turns"] == 2
    status, exported, _ = await api.call("GET", f"/v1/sessions/{sid}/export")
    assert status == 200 and len(exported["contents"]) == 4
    status, _, _ = await api.call("DELETE", f"/v1/sessions/{sid}")
    assert status == 204
    status, doc, _ = await api.call("GET", f"/v1/sessions/{sid}")
    assert status == 404 and doc["error"]["type"] == "SessionNotFound"


async def test_undo_redo_checkout_regenerate_fork(serve: Serve) -> None:
    """Undo, redo, checkout, regenerate and fork move the head over HTTP as in Python."""
    api = await serve()
    sid = (await api.new_session())["id"]
    for text in ("a mug", "add a sprig", "make it warm"):
        assert (await api.turn(sid, text))[0] == 200
    status, doc, _ = await api.call("POST", f"/v1/sessions/{sid}/undo")
    assert status == 200 and [t["index"] for t in doc["turns"]] == [1, 2]
    status, doc, _ = await api.call("POST", f"/v1/sessions/{sid}/redo")
    assert [t["index"] for t in doc["turns"]] == [1, 2, 3]
    status, doc, _ = await api.call("POST", f"/v1/sessions/{sid}/checkout", {"turn": 1})
    assert [t["index"] for t in doc["turns"]] == [1]
    status, doc, _ = await api.call("POST", f"/v1/sessions/{sid}/checkout", {"turn": None})
    assert doc["turns"] == [] and doc["head"] is None
    await api.call("POST", f"/v1/sessions/{sid}/checkout", {"turn": 2})
    status, regen, _ = await api.call("POST", f"/v1/sessions/{sid}/regenerate")
    assert status == 200 and regen["index"] == 2 and regen["prompt"] == "add a sprig"
    status, tree, _ = await api.call("GET", f"/v1/sessions/{sid}?tree=1")
    assert len(tree["branches"]) == 2  # 1-2-3 and 1-2'
    status, child, _ = await api.call("POST", f"/v1/sessions/{sid}/fork", {"at": 1})
    assert status == 201 and [t["index"] for t in child["turns"]] == [1]
    assert child["parent_id"] == sid
    status, listing, _ = await api.call("GET", "/v1/sessions")
    assert {s["id"] for s in listing["sessions"]} == {sid, child["id"]}
    # Bad moves change nothing.
    status, doc, _ = await api.call("POST", f"/v1/sessions/{sid}/checkout", {"turn": 9})
    assert status == 400
    status, doc, _ = await api.call("POST", f"/v1/sessions/{child['id']}/fork", {"at": 5})
    assert status == 400


async def test_streamed_turn_sends_its_events_then_ends(serve: Serve) -> None:
    """Streamed turn sends its events then ends."""
    api = await serve()
    sid = (await api.new_session())["id"]
    async with api.http.post(
        f"{api.base}/v1/sessions/{sid}/turns",
        json={"text": "a mug", "stream": True},
        headers=api.headers(),
    ) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        events = [e async for e in sse_events(resp)]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "turn.started" and kinds[-1] == "turn.completed"
    assert "turn.image" in kinds and "turn.text_delta" in kinds
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(e["data"]["type"] == e["event"] and e["data"]["seq"] == int(e["id"]) for e in events)


async def test_events_reconnect_mid_turn_with_last_event_id(serve: Serve) -> None:
    """Events reconnect mid turn with last event id."""
    api = await serve(emulator={"latency": 0.6, "stream_text_chunks": 6})
    sid = (await api.new_session())["id"]
    turn = asyncio.ensure_future(api.turn(sid, "a mug on an oak table with a sprig of eucalyptus"))
    seen: list[dict[str, Any]] = []
    async with api.http.get(
        f"{api.base}/v1/sessions/{sid}/events", params={"since": "0"}, headers=api.headers()
    ) as resp:
        async for event in sse_events(resp):
            seen.append(event)
            if event["event"] == "turn.started":
                break  # drop the connection in the middle of the turn
    last = seen[-1]["id"]
    async with api.http.get(
        f"{api.base}/v1/sessions/{sid}/events",
        headers=api.headers({"Last-Event-ID": last}),
    ) as resp:
        async for event in sse_events(resp):
            seen.append(event)
            if event["event"] == "turn.completed":
                break
    assert (await turn)[0] == 200
    ids = [int(e["id"]) for e in seen]
    assert ids == list(range(1, len(ids) + 1))  # nothing lost, nothing repeated at the seam
    assert seen[0]["event"] == "session.created" and seen[-1]["event"] == "turn.completed"


async def test_a_last_event_id_the_server_never_numbered_is_told_it_missed_events(
    serve: Serve,
) -> None:
    """A client resuming with a Last-Event-ID above anything the server numbered (the server
    restarted and its numbering with it) first hears `events.missed`, then the live events."""
    api = await serve()
    sid = (await api.new_session())["id"]
    seen: list[dict[str, Any]] = []
    async with api.http.get(
        f"{api.base}/v1/sessions/{sid}/events", headers=api.headers({"Last-Event-ID": "13"})
    ) as resp:
        turn = asyncio.ensure_future(api.turn(sid, "a mug"))
        async for event in sse_events(resp):
            seen.append(event)
            if event["event"] == "turn.completed":
                break
    assert (await turn)[0] == 200
    assert seen[0]["event"] == "events.missed" and seen[0]["data"]["missed"] >= 1
    assert seen[1]["event"] == "turn.started"


async def test_a_client_leaving_a_streamed_turn_does_not_cancel_it(serve: Serve) -> None:
    """A client leaving a streamed turn does not cancel it."""
    api = await serve(emulator={"latency": 0.4})
    sid = (await api.new_session())["id"]
    async with api.http.post(
        f"{api.base}/v1/sessions/{sid}/turns",
        json={"text": "a mug", "stream": True},
        headers=api.headers(),
    ) as resp:
        async for event in sse_events(resp):
            assert event["event"] == "turn.started"
            break  # leave
    for _ in range(100):
        _, doc, _ = await api.call("GET", f"/v1/sessions/{sid}")
        if doc["turns"]:
            break
        await asyncio.sleep(0.05)
    assert [t["index"] for t in doc["turns"]] == [1]


async def test_cancel_stops_the_running_turn(serve: Serve) -> None:
    """Cancel stops the running turn."""
    api = await serve(emulator={"latency": 5})
    sid = (await api.new_session())["id"]
    running = asyncio.ensure_future(api.turn(sid, "a mug"))
    for _ in range(100):
        status, health, _ = await api.call("GET", "/healthz")
        if health["turns_in_flight"]:
            break
        await asyncio.sleep(0.02)
    status, second = await api.turn(sid, "another")  # one turn at a time per session
    assert status == 409 and second["error"]["type"] == "SessionBusy"
    status, doc, _ = await api.call("POST", f"/v1/sessions/{sid}/cancel")
    assert status == 200 and doc == {"cancelled": True}
    status, failed = await running
    assert status == 409 and failed["error"]["type"] == "TurnCancelled"
    status, doc, _ = await api.call("GET", f"/v1/sessions/{sid}")
    assert doc["turns"] == []


# --- status codes ------------------------------------------------------------------------------


async def test_bad_requests_are_400_and_change_nothing(serve: Serve) -> None:
    """Bad requests are 400 and change nothing."""
    api = await serve()
    sid = (await api.new_session())["id"]
    bad = [
        b"{not json",
        {"text": "x", "colour": "red"},
        {"text": 5},
        {"text": "x", "images": [{"data": "%%%"}]},
        {"text": "x", "images": [{"data": base64.b64encode(b"hello").decode()}]},
        {"text": "x", "images": [{"sha256": "0" * 64}]},
        {"text": "x", "images": [{}]},
        {"text": ""},
    ]
    for body in bad:
        status, doc, _ = await api.call("POST", f"/v1/sessions/{sid}/turns", body)
        assert status == 400, body
        assert set(doc["error"]) == {"type", "message", "status"} and doc["error"]["status"] == 400
    status, doc, _ = await api.call("POST", "/v1/sessions", {"model": "gpt-7"})
    assert status == 400
    status, doc, _ = await api.call("POST", "/v1/sessions", {"image_config": {"image_size": "9K"}})
    assert status == 400
    status, doc, _ = await api.call("GET", f"/v1/sessions/{sid}")
    assert doc["turns"] == [] and doc["head"] is None
    status, doc, _ = await api.call("GET", f"/v1/sessions/{sid}/events?since=abc")
    assert status == 400


async def test_body_over_the_limit_is_413(serve: Serve) -> None:
    """Body over the limit is 413."""
    api = await serve(ServeOptions(max_body_bytes=100_000))
    sid = (await api.new_session())["id"]
    big = {"text": "x", "images": [{"data": base64.b64encode(os.urandom(200_000)).decode()}]}
    status, doc, _ = await api.call("POST", f"/v1/sessions/{sid}/turns", big)
    assert status == 413 and doc["error"]["type"] == "PayloadTooLarge"


async def test_engine_errors_map_to_their_status(serve: Serve) -> None:
    """Engine errors come back with their documented HTTP status and error body."""
    fast = RetryPolicy(max_attempts=2, base_delay=0.001, max_delay=0.01)
    api = await serve(emulator={"faults": "429:retry=1"}, retry=fast)
    sid = (await api.new_session())["id"]
    status, doc, headers = await api.call("POST", f"/v1/sessions/{sid}/turns", {"text": "a mug"})
    assert status == 429 and headers["Retry-After"] == "1"
    api = await serve(emulator={"faults": "500"}, retry=fast)
    sid = (await api.new_session())["id"]
    assert (await api.turn(sid, "a mug"))[0] == 502
    api = await serve(emulator={"faults": "block"})
    sid = (await api.new_session())["id"]
    status, doc = await api.turn(sid, "a mug")
    assert status == 422 and doc["error"]["type"] == "ContentBlocked"
    api = await serve()
    sid = (await api.new_session(budget={"max_cost_usd": 0.001}))["id"]
    status, doc = await api.turn(sid, "a mug")
    assert status == 402 and doc["error"]["type"] == "BudgetExceeded"
    status, doc, _ = await api.call("GET", f"/v1/sessions/{sid}")
    assert doc["turns"] == []


async def test_timeouts_are_504(serve: Serve) -> None:
    """Timeouts are 504."""
    from engine import Timeouts

    api = await serve(
        emulator={"latency": 3},
        timeouts=Timeouts(first_byte=0.2, idle=0.2, total=0.5),
        retry=RetryPolicy(max_attempts=1),
        stream=False,
    )
    sid = (await api.new_session())["id"]
    assert (await api.turn(sid, "a mug"))[0] == 504


# --- tenants -----------------------------------------------------------------------------------


async def test_tenants_see_only_their_own(serve: Serve) -> None:
    """Tenants see only their own."""
    anon = await serve(ServeOptions(keys=KEYS))
    alice, bob = anon.as_key("alice-key-0001"), anon.as_key("bob-key-0003")
    for who in (anon, anon.as_key("wrong-key-999"), anon.as_key("")):
        status, doc, _ = await who.call("GET", "/v1/sessions")
        assert status == 401 and doc["error"]["type"] == "Unauthorized"
    status, doc, _ = await anon.call(
        "GET", "/v1/sessions", headers={"Authorization": "Basic alice-key-0001"}
    )
    assert status == 401
    sid = (await alice.new_session(title="alice's"))["id"]
    status, turn = await alice.turn(sid, "a mug")
    sha = turn["images"][0]["sha256"]
    # Bob: another tenant's id is exactly an unknown id.
    for path in (f"/v1/sessions/{sid}", f"/v1/sessions/{sid}/export"):
        mine = await bob.call("GET", path)
        unknown = await bob.call("GET", path.replace(sid, "f" * 32))
        assert mine[0] == unknown[0] == 404
        assert mine[1]["error"]["type"] == unknown[1]["error"]["type"]
    for op in ("undo", "redo", "fork", "cancel", "turns", "regenerate"):
        assert (await bob.call("POST", f"/v1/sessions/{sid}/{op}", {"text": "x"}))[0] == 404
    assert (await bob.call("DELETE", f"/v1/sessions/{sid}"))[0] == 404
    assert (await bob.call("GET", f"/v1/images/{sha}"))[0] == 404
    status, doc = await bob.turn((await bob.new_session())["id"], "x", images=[{"sha256": sha}])
    assert status == 400  # not an image bob has
    assert (await bob.call("GET", "/v1/sessions"))[1]["sessions"][0]["id"] != sid
    assert len((await bob.call("GET", "/v1/sessions"))[1]["sessions"]) == 1
    assert (await alice.call("GET", f"/v1/images/{sha}"))[0] == 200
    # Both of bob's keys are bob.
    assert len((await anon.as_key("bob-key-0002").call("GET", "/v1/sessions"))[1]["sessions"]) == 1


async def test_tenant_limits(serve: Serve) -> None:
    """A tenant over its request rate or spend limit is refused with the documented status."""
    api = await serve(ServeOptions(keys=KEYS, tenant_turns_per_minute=2))
    alice = api.as_key("alice-key-0001")
    sid = (await alice.new_session())["id"]
    assert (await alice.turn(sid, "a"))[0] == 200
    assert (await alice.turn(sid, "b"))[0] == 200
    status, doc, headers = await alice.call("POST", f"/v1/sessions/{sid}/turns", {"text": "c"})
    assert status == 429 and int(headers["Retry-After"]) >= 1
    bob = api.as_key("bob-key-0002")  # another key, its own allowance
    assert (await bob.turn((await bob.new_session())["id"], "a"))[0] == 200
    api = await serve(ServeOptions(keys=KEYS, tenant_max_cost_usd=0.03))
    alice = api.as_key("alice-key-0001")
    sid = (await alice.new_session())["id"]
    assert (await alice.turn(sid, "a"))[0] == 200  # $0.0336 spent: over from now on
    status, doc = await alice.turn(sid, "b")
    assert status == 402 and "spent" in doc["error"]["message"]


# --- health, metrics, OpenAPI, studio, CORS ------------------------------------------------------


async def test_health_metrics_openapi_and_studio(serve: Serve) -> None:
    """/healthz, /metrics, /openapi.json and the studio page answer as documented."""
    api = await serve(ServeOptions(keys=KEYS, cors_origins=("https://app.example",)))
    alice = api.as_key("alice-key-0001")
    sid = (await alice.new_session())["id"]
    await alice.turn(sid, "a mug")
    status, health, _ = await api.call("GET", "/healthz")
    assert status == 200
    assert health == {"status": "ok", "turns_in_flight": 0, "store": "ok", "redis": "none"}
    async with api.http.get(api.base + "/metrics") as resp:
        text = await resp.text()
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    assert 'nanoedit_turns_total{outcome="completed"} 1.0' in text
    assert "nanoedit_turn_latency_seconds_bucket" in text and "nanoedit_cost_usd_total" in text
    status, doc, _ = await api.call("GET", "/openapi.json")
    assert doc["openapi"] == "3.1.0"
    assert {"/v1/sessions", "/v1/sessions/{id}/turns", "/v1/images/{sha256}"} <= set(doc["paths"])
    assert {"SessionCreate", "TurnOut", "ErrorOut", "Event"} <= set(doc["components"]["schemas"])
    async with api.http.get(api.base + "/") as resp:
        page = await resp.text()
        csp = resp.headers["Content-Security-Policy"]
    assert '<script src="/studio.js"' in page and "default-src 'none'" in csp
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    # CORS: preflight and answers for the allowed origin only.
    async with api.http.options(
        api.base + "/v1/sessions",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    ) as resp:
        assert resp.status == 200  # aiohttp-cors answers the preflight
        assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert resp.headers["Access-Control-Allow-Methods"] == "POST"
    status, _, headers = await alice.call(
        "GET", "/v1/sessions", headers={"Origin": "https://evil.example"}
    )
    assert status == 200 and "Access-Control-Allow-Origin" not in headers


async def test_keys_never_reach_logs_or_answers(
    serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    """Keys never reach logs or answers."""
    api = await serve(ServeOptions(keys=KEYS))
    alice = api.as_key("alice-key-0001")
    sid = (await alice.new_session())["id"]
    await alice.turn(sid, "a mug")
    _, doc, _ = await api.as_key("bob-key-0002x").call("GET", "/v1/sessions")
    assert "bob-key-0002x" not in json.dumps(doc)
    out = capsys.readouterr()
    for key in ("alice-key-0001", "bob-key-0002"):
        assert key not in out.out + out.err


# --- the command ------------------------------------------------------------------------------


def _serve_process(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env["NANOEDIT_HOME"] = str(tmp_path / "home")
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--port", "0", "--store", "memory", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("nanoedit serve: listening on http://127.0.0.1:"), line
    return proc, line.rsplit(" ", 1)[1].strip()


async def test_sigterm_lets_the_running_turn_finish(tmp_path: Path) -> None:
    """Sigterm lets the running turn finish."""
    proc, base = _serve_process(tmp_path, "--flat", "--latency", "1.5")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(base + "/v1/sessions", json={}) as resp:
                sid = (await resp.json())["id"]

            async def turn() -> tuple[int, Any]:
                async with http.post(
                    f"{base}/v1/sessions/{sid}/turns", json={"text": "a mug"}
                ) as resp:
                    return resp.status, await resp.json()

            running = asyncio.ensure_future(turn())
            for _ in range(100):
                async with http.get(base + "/healthz") as resp:
                    if (await resp.json())["turns_in_flight"]:
                        break
                await asyncio.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            async with http.post(f"{base}/v1/sessions/{sid}/turns", json={"text": "x"}) as resp:
                assert resp.status in (409, 503)  # draining (or still busy with the turn)
            status, doc = await running
            assert status == 200 and doc["index"] == 1
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def test_without_keys_only_loopback_is_served(tmp_path: Path) -> None:
    """Without keys only loopback is served."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    done = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1 and "only loopback" in done.stderr
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"a": ["short"]}))
    done = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--keys", str(keys), "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1 and "under 8 characters" in done.stderr
    assert "short" not in done.stderr.replace("under 8 characters", "")


async def test_events_stream_heartbeats_and_missed_marker(serve: Serve) -> None:
    """Events stream heartbeats and missed marker."""
    api = await serve(ServeOptions(heartbeat_s=0.05))
    sid = (await api.new_session())["id"]
    async with api.http.get(f"{api.base}/v1/sessions/{sid}/events", headers=api.headers()) as resp:
        raw = b""
        while raw.count(b": heartbeat") < 2:
            raw += await resp.content.readany()
    assert raw.startswith(b": connected\n\n")


async def test_events_say_what_the_window_lost(make_emulator: EmulatorFactory) -> None:
    """Events say what the window lost."""
    emu = await make_emulator()
    async with Engine(config_for(emu.base_url)) as engine:
        engine.bus = type(engine.bus)(retain=5)  # a small window: the oldest events go
        server = TestServer(create_app(engine), host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as http:
                api = Client(str(server.make_url("")).rstrip("/"), http)
                sid = (await api.new_session())["id"]
                for n in range(2):
                    assert (await api.turn(sid, f"turn {n}"))[0] == 200
                async with http.get(
                    f"{api.base}/v1/sessions/{sid}/events", headers={"Last-Event-ID": "1"}
                ) as resp:
                    events = aiter(sse_events(resp))
                    first, second = await anext(events), await anext(events)
        finally:
            await server.close()
    assert first["event"] == "events.missed" and first["data"]["missed"] > 0
    assert int(second["id"]) == 2 + first["data"]["missed"]


async def test_multipart_turn_with_image_files(serve: Serve) -> None:
    """A multipart turn with image files sends those images with the prompt."""
    api = await serve()
    sid = (await api.new_session())["id"]
    form = aiohttp.FormData()
    form.add_field("text", "put this on the table")
    form.add_field("images", png(20, 10), filename="a.png", content_type="image/png")
    async with api.http.post(
        f"{api.base}/v1/sessions/{sid}/turns", data=form, headers=api.headers()
    ) as resp:
        doc = await resp.json()
        assert resp.status == 200, doc
    assert doc["prompt"] == "put this on the table"
    assert [(i["width"], i["height"]) for i in doc["input_images"]] == [(20, 10)]
    form = aiohttp.FormData()
    form.add_field("text", "x")
    form.add_field("images", b"not an image", filename="a.txt")
    async with api.http.post(
        f"{api.base}/v1/sessions/{sid}/turns", data=form, headers=api.headers()
    ) as resp:
        assert resp.status == 400


async def test_images_stay_while_a_session_holds_them(serve: Serve) -> None:
    """Images stay while a session holds them."""
    api = await serve()
    sid = (await api.new_session())["id"]
    status, turn = await api.turn(sid, "a mug")
    url = turn["images"][0]["url"]
    assert (await api.call("GET", url))[0] == 200
    status, child, _ = await api.call("POST", f"/v1/sessions/{sid}/fork")
    assert status == 201
    assert (await api.call("DELETE", f"/v1/sessions/{sid}"))[0] == 204
    assert (await api.call("GET", url))[0] == 200  # the fork still holds it
    assert (await api.call("DELETE", f"/v1/sessions/{child['id']}"))[0] == 204
    assert (await api.call("GET", url))[0] == 404


async def test_a_region_edit_over_http_changes_only_the_box(serve: Serve) -> None:
    """`"region": [x0, y0, x1, y1]` on a turn: outside the box (beyond the feather) the new
    image's pixels are the previous image's; a box outside the image is a 400 and no turn."""
    import io

    from PIL import Image, ImageChops

    api = await serve()
    sid = (await api.new_session())["id"]
    status, first = await api.turn(sid, "a mug on an oak table")
    assert status == 200
    status, edited = await api.turn(sid, "add a red circle", region=[100, 100, 400, 400])
    assert status == 200, edited

    async def pixels(image: dict[str, Any]) -> Image.Image:
        async with api.http.get(api.base + image["url"]) as resp:
            return Image.open(io.BytesIO(await resp.read())).convert("RGB")

    before, after = await pixels(first["images"][0]), await pixels(edited["images"][0])
    diff = ImageChops.difference(before, after).getbbox()
    assert diff is not None  # the edit did something
    feather = 8
    assert diff[0] >= 100 - feather and diff[1] >= 100 - feather
    assert diff[2] <= 400 + feather and diff[3] <= 400 + feather
    status, doc = await api.turn(sid, "again", region=[0, 0, 99_999, 10])
    assert status == 400 and "not inside" in doc["error"]["message"]
    status, doc = await api.turn(sid, "again", region=[1, 2, 3])
    assert status == 400
    _, session, _ = await api.call("GET", f"/v1/sessions/{sid}")
    assert len(session["turns"]) == 2


async def test_turn_images_take_roles(serve: Serve) -> None:
    """`images: [{data, role, note}]` on a turn: the stored user turn carries the label before
    the image; an unknown role is a 400."""
    api = await serve()
    sid = (await api.new_session())["id"]
    image = {"data": base64.b64encode(png(16, 16)).decode(), "role": "object", "note": "a cup"}
    status, turn = await api.turn(sid, "put this in", images=[image])
    assert status == 200 and len(turn["input_images"]) == 1
    status, exported, _ = await api.call("GET", f"/v1/sessions/{sid}/export")
    texts = [p.get("text", "") for p in exported["contents"][0]["parts"]]
    assert any("object to put into the picture" in t and "a cup" in t for t in texts)
    status, doc = await api.turn(sid, "again", images=[{**image, "role": "mood"}])
    assert status == 400 and "role" in doc["error"]["message"]


async def test_variants_over_http(serve: Serve) -> None:
    """`"variants": 3` on a turn: three sibling turns (the answer is the head); streamed, every
    take's turn.completed arrives with its variant; regenerate takes variants too; 9 is a 400."""
    api = await serve()
    sid = (await api.new_session())["id"]
    await api.turn(sid, "a mug")
    status, head = await api.turn(sid, "add a sprig", variants=3)
    assert status == 200 and head["index"] == 2
    _, session, _ = await api.call("GET", f"/v1/sessions/{sid}?tree=1")
    assert len(session["branches"]) == 3 and session["head"] == head["id"]
    async with api.http.post(
        f"{api.base}/v1/sessions/{sid}/turns",
        json={"text": "make it blue", "stream": True, "variants": 2},
        headers=api.headers(),
    ) as resp:
        events = [e async for e in sse_events(resp)]
    completed = [e for e in events if e["event"] == "turn.completed"]
    assert sorted(e["data"]["variant"] for e in completed) == [1, 2]
    status, _, _ = await api.call("POST", f"/v1/sessions/{sid}/regenerate", {"variants": 2})
    assert status == 200
    status, doc = await api.turn(sid, "too many", variants=9)
    assert status == 400 and "variants" in doc["error"]["message"]


async def test_a_region_turn_shows_its_own_prompt(serve: Serve) -> None:
    """The turn's prompt is what the user wrote, not the instruction sent with the crop."""
    api = await serve()
    sid = (await api.new_session())["id"]
    await api.turn(sid, "a mug")
    status, turn = await api.turn(sid, "add a red circle", region=[10, 10, 200, 200])
    assert status == 200 and turn["prompt"] == "add a red circle"


async def test_rename_a_session(serve: Serve) -> None:
    """PATCH /v1/sessions/{id} {"title"}: renamed; another tenant's is 404; no title is 400."""
    api = await serve(ServeOptions(keys=KEYS))
    alice = api.as_key("alice-key-0001")
    sid = (await alice.new_session(title="mug"))["id"]
    status, doc, _ = await alice.call("PATCH", f"/v1/sessions/{sid}", {"title": "teapots"})
    assert status == 200 and doc["title"] == "teapots"
    status, _, _ = await api.as_key("bob-key-0002").call(
        "PATCH", f"/v1/sessions/{sid}", {"title": "mine"}
    )
    assert status == 404
    status, _, _ = await alice.call("PATCH", f"/v1/sessions/{sid}", {})
    assert status == 400
