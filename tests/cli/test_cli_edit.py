"""`nanoedit edit` and `nanoedit demo` (engine/cli.py) against the emulator on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from PIL import Image

from engine.cli import main
from engine.emulator import EmulatorSettings
from engine.events import TurnStarted, decode_event
from sessions import DEFAULT_MODEL, resolve_model
from tests.conftest import ENV_VARS, EmulatorThread

PROMPTS = ("A ceramic mug on an oak table", "Add a red circle on the left", "Make it grayscale")
TURN_KEYS = {
    "index",
    "text",
    "finish_reason",
    "attempts",
    "latency_s",
    "usage",
    "tokens_used",
    "window_left",
    "cost_usd",
    "images",
}
IMAGE_KEYS = {"path", "mime_type", "width", "height", "sha256", "bytes"}


@pytest.fixture(scope="module")
def keyed_emulator() -> Iterator[EmulatorThread]:
    """A flat emulator that wants the key "right-key-7d2e"."""
    emu = EmulatorThread(EmulatorSettings(flat=True, api_key="right-key-7d2e"))
    emu.start()
    yield emu
    emu.stop()


def edit(url: str, out: Path, *args: str, prompts: tuple[str, ...] = PROMPTS) -> int:
    """Run `nanoedit edit PROMPTS --base-url URL --out OUT ARGS` in this process."""
    return main(["edit", *prompts, "--base-url", url, "--out", str(out), *args])


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr that report an error."""
    return [line for line in stderr.splitlines() if line.startswith("error")]


def read_history(out: Path) -> list[dict[str, Any]]:
    """The contents array of OUT/session.json."""
    doc = json.loads((out / "session.json").read_text())
    assert set(doc) == {"contents"}
    contents: list[dict[str, Any]] = doc["contents"]
    return contents


def png_file(path: Path, size: tuple[int, int]) -> Path:
    """Write a solid-colour PNG of `size`."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (40, 90, 200)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


def test_edit_writes_three_images_and_the_history(
    home: Path, tmp_path: Path, emulator_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three prompts: turn-01..03.png and session.json with 6 contents, model parts signed."""
    out = tmp_path / "out"
    assert edit(emulator_url, out) == 0
    session_id = capsys.readouterr().out.strip()
    assert len(session_id) == 32
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        ".nanoedit-session",
        "session.json",
        "turn-01.png",
        "turn-02.png",
        "turn-03.png",
    ]
    assert (out / ".nanoedit-session").read_text().strip() == session_id
    contents = read_history(out)
    assert [c["role"] for c in contents] == ["user", "model"] * 3
    for n, (user, model) in enumerate(zip(contents[::2], contents[1::2], strict=True), start=1):
        assert user["parts"] == [{"text": PROMPTS[n - 1]}]
        images = [p for p in model["parts"] if "inlineData" in p and not p.get("thought")]
        assert len(images) == 1 and all(p.get("thoughtSignature") for p in images)
        data = base64.b64decode(images[0]["inlineData"]["data"])
        assert (out / f"turn-{n:02d}.png").read_bytes() == data
    assert (home / "sessions.db").exists()  # the default store, under NANOEDIT_HOME


def test_edit_json_prints_one_object_with_the_documented_keys(
    home: Path, tmp_path: Path, emulator_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json: one JSON object on stdout; every documented key, and figures that agree."""
    out = tmp_path / "out"
    assert edit(emulator_url, out, "--json") == 0
    stdout = capsys.readouterr().out
    assert stdout.count("\n") == 1
    doc = json.loads(stdout)
    assert set(doc) == {"session_id", "model", "turns"}
    assert doc["model"] == DEFAULT_MODEL
    window = resolve_model(doc["model"]).context_window
    assert [t["index"] for t in doc["turns"]] == [1, 2, 3]
    for turn in doc["turns"]:
        assert set(turn) == TURN_KEYS
        assert turn["finish_reason"] == "STOP" and turn["attempts"] == 1
        assert turn["text"] and turn["latency_s"] > 0 and turn["cost_usd"] > 0
        usage = turn["usage"]
        assert turn["tokens_used"] == usage["prompt_tokens"] + usage["output_tokens"]
        assert turn["window_left"] == window - turn["tokens_used"]
        (image,) = turn["images"]
        assert set(image) == IMAGE_KEYS
        data = Path(image["path"]).read_bytes()
        assert image["bytes"] == len(data)
        assert image["sha256"] == hashlib.sha256(data).hexdigest()
        assert (image["mime_type"], image["width"], image["height"]) == ("image/png", 1024, 1024)


def test_edit_events_file_has_one_decodable_event_per_line(
    home: Path, tmp_path: Path, emulator_url: str
) -> None:
    """--events FILE: JSON lines that decode into events; started and completed for 3 turns."""
    out, path = tmp_path / "out", tmp_path / "events.jsonl"
    assert edit(emulator_url, out, "--events", str(path)) == 0
    events = [decode_event(line) for line in path.read_bytes().splitlines()]
    assert events[0].type == "session.created"
    assert [ev.seq for ev in events] == list(range(1, len(events) + 1))
    for kind in ("turn.started", "turn.completed"):
        assert [ev.turn for ev in events if ev.type == kind] == [1, 2, 3]
    assert all(ev.stream for ev in events if isinstance(ev, TurnStarted))


def test_edit_no_stream_uses_generate_content(
    home: Path, tmp_path: Path, emulator_thread: EmulatorThread
) -> None:
    """--no-stream: every turn is a plain generateContent call and still writes its image."""
    out, path = tmp_path / "out", tmp_path / "events.jsonl"
    marker = f"no-stream marker {tmp_path.name}"
    prompts = (f"A ceramic mug, {marker}", *PROMPTS[1:])
    url = emulator_thread.base_url
    assert edit(url, out, "--no-stream", "--events", str(path), prompts=prompts) == 0
    assert all((out / f"turn-{n:02d}.png").exists() for n in (1, 2, 3))
    events = [decode_event(line) for line in path.read_bytes().splitlines()]
    started = [ev for ev in events if isinstance(ev, TurnStarted)]
    assert len(started) == 3 and not any(ev.stream for ev in started)
    assert emulator_thread.emulator is not None
    mine = [r for r in emulator_thread.emulator.requests if marker.encode() in r.body]
    assert [r.endpoint for r in mine] == ["generateContent"] * 3


def test_edit_image_goes_with_the_first_turn(home: Path, tmp_path: Path, emulator_url: str) -> None:
    """--image: turn 1 carries the file and the emulator edits it (4:3 in, 4:3 out)."""
    source = png_file(tmp_path / "input.png", (800, 600))
    plain, edited = tmp_path / "plain", tmp_path / "edited"
    assert edit(emulator_url, plain, prompts=PROMPTS[:2]) == 0
    assert edit(emulator_url, edited, "--image", str(source), prompts=PROMPTS[:2]) == 0
    first = (edited / "turn-01.png").read_bytes()
    assert first != (plain / "turn-01.png").read_bytes()
    with Image.open(io.BytesIO(first)) as image:
        assert image.width > image.height
    contents = read_history(edited)
    assert contents[0]["parts"][0] == {"text": PROMPTS[0]}
    sent = contents[0]["parts"][1]["inlineData"]
    assert sent["mimeType"] == "image/png"
    assert base64.b64decode(sent["data"]) == source.read_bytes()
    assert contents[2]["parts"] == [{"text": PROMPTS[1]}]


def test_edit_error_is_one_line_without_traceback_or_key(
    home: Path,
    tmp_path: Path,
    keyed_emulator: EmulatorThread,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A wrong key: one `error: Unauthorized` line on stderr, exit 1, no traceback, no key."""
    monkeypatch.setenv("WRONG_KEY_FOR_TEST", "wrong-key-4f9c")
    rc = edit(keyed_emulator.base_url, tmp_path / "out", "--api-key-env", "WRONG_KEY_FOR_TEST")
    captured = capsys.readouterr()
    assert rc == 1
    (line,) = error_lines(captured.err)
    assert line.startswith("error: Unauthorized: 403")
    assert "Traceback" not in captured.err
    assert "wrong-key-4f9c" not in captured.err + captured.out
    assert "right-key-7d2e" not in captured.err + captured.out
    assert not (tmp_path / "out" / "turn-01.png").exists()


def test_edit_budget_flags_stop_the_session(
    home: Path, tmp_path: Path, emulator_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--max-context-tokens 10 --budget-policy reject: turn 2 fails with one BudgetExceeded line."""
    out = tmp_path / "out"
    rc = edit(emulator_url, out, "--max-context-tokens", "10", "--budget-policy", "reject")
    captured = capsys.readouterr()
    assert rc == 1
    (line,) = error_lines(captured.err)
    assert line.startswith("error: BudgetExceeded: ")
    assert "the limit is 10" in line and "nothing was sent" in line
    assert "Traceback" not in captured.err
    assert (out / "turn-01.png").exists() and not (out / "turn-02.png").exists()


def test_demo_runs_offline_without_any_key(tmp_path: Path) -> None:
    """`python -m engine demo` with no key variables: 3 PNGs and session.json, exit 0."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env["NANOEDIT_HOME"] = str(tmp_path / "home")
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "engine", "demo", "--out", str(out), "--flat"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    files = sorted(p.name for p in out.iterdir())
    # No .nanoedit-session: the demo's session lives in memory and cannot be continued.
    assert files == ["session.json", "turn-01.png", "turn-02.png", "turn-03.png"]
    contents = read_history(out)
    assert len(contents) == 6
    model = msgspec.json.encode(contents[1::2])
    assert model.count(b"thoughtSignature") >= 3
    assert "Traceback" not in done.stderr


def test_on_busy_flag_reaches_the_engine_config() -> None:
    """`--on-busy wait` sets EngineConfig.on_busy; the default stays "raise"."""
    from engine.cli import build_parser
    from engine.cli._common import config_from_args

    parser = build_parser()
    waiting = parser.parse_args(
        ["edit", "a mug", "--on-busy", "wait", "--base-url", "http://127.0.0.1:9"]
    )
    default = parser.parse_args(["edit", "a mug", "--base-url", "http://127.0.0.1:9"])
    assert config_from_args(waiting).on_busy == "wait"
    assert config_from_args(default).on_busy == "raise"
