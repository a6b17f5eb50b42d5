"""The Batch API (issue 11): `engine.batch`, `nanoedit batch`, and the emulator's batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import Engine
from engine._exceptions import ConfigError
from engine.cli import main
from engine.emulator import EmulatorSettings
from engine.policy import settle_cost
from engine.runtime import BatchItem, BatchJobFailed
from sessions import BUILTIN, DEFAULT_MODEL, ImageConfig, SqliteStore, Usage
from tests.conftest import ENV_VARS, EmulatorFactory, EmulatorThread, config_for, png


@pytest.fixture(scope="module")
def batch_emulator() -> Iterator[EmulatorThread]:
    """A flat emulator whose batch jobs take a third of a second."""
    emu = EmulatorThread(EmulatorSettings(flat=True, batch_seconds=0.3))
    emu.start()
    yield emu
    emu.stop()


def _items_file(path: Path, n: int, **extra: Any) -> Path:
    lines = [
        json.dumps({"key": f"item-{i:02d}", "prompt": f"a mug number {i}", **extra})
        for i in range(1, n + 1)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_batch_of_20_writes_20_results_at_half_price(
    home: Path, tmp_path: Path, batch_emulator: EmulatorThread, capsys: pytest.CaptureFixture[str]
) -> None:
    """Batch of 20 writes 20 results at half price."""
    items = _items_file(tmp_path / "items.jsonl", 20)
    out = tmp_path / "out"
    code = main(
        [
            "batch",
            str(items),
            "--out",
            str(out),
            "--base-url",
            batch_emulator.base_url,
            "--poll",
            "0.05",
            "--json",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["items"] == 20 and summary["succeeded"] == 20
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [x["key"] for x in lines] == [f"item-{i:02d}" for i in range(1, 21)]
    spec = BUILTIN.resolve(DEFAULT_MODEL)
    for line in lines:
        assert line["status"] == "succeeded" and line["error"] is None
        assert len(line["images"]) == 1 and Path(line["images"][0]).read_bytes()[:4] == b"\x89PNG"
        usage = Usage(**line["usage"])
        interactive = settle_cost(spec, "custom", usage, None, 1).total_usd
        assert line["cost_usd"] == pytest.approx(interactive / 2)
    assert summary["cost_usd"] == pytest.approx(sum(x["cost_usd"] for x in lines), abs=1e-5)


def test_no_wait_then_results_from_another_process(
    home: Path, tmp_path: Path, batch_emulator: EmulatorThread, capsys: pytest.CaptureFixture[str]
) -> None:
    """No wait then results from another process."""
    items = _items_file(tmp_path / "items.jsonl", 3, image_config={"aspect_ratio": "16:9"})
    store = tmp_path / "jobs.db"
    url = batch_emulator.base_url
    assert main(["batch", str(items), "--no-wait", "--store", str(store), "--base-url", url]) == 0
    name = capsys.readouterr().out.strip()
    assert name.startswith("batches/")
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    out = tmp_path / "later"

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "engine",
                "batch",
                *argv,
                "--store",
                str(store),
                "--base-url",
                url,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    # Another process follows the job by id until it is done, then collects it.
    for _ in range(100):
        status = cli("status", name, "--json")
        assert status.returncode == 0, status.stderr
        if json.loads(status.stdout)["done"]:
            break
    done = cli("results", name, "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["succeeded"] == 3
    assert len(list(out.glob("item-*.png"))) == 3
    listing = cli("ls", "--json")
    assert [j["name"] for j in json.loads(listing.stdout)["batches"]] == [name]
    assert json.loads(listing.stdout)["batches"][0]["state"] == "BATCH_STATE_SUCCEEDED"


def test_results_of_a_running_job_say_to_wait(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Results of a running job say to wait."""
    slow = EmulatorThread(EmulatorSettings(flat=True, batch_seconds=60))
    slow.start()
    capsys.readouterr()  # the emulator's start-up log line
    try:
        items = _items_file(tmp_path / "items.jsonl", 2)
        store = str(tmp_path / "jobs.db")
        argv = ["--store", store, "--base-url", slow.base_url]
        assert main(["batch", str(items), "--no-wait", *argv]) == 0
        name = capsys.readouterr().out.strip()
        assert main(["batch", "results", name, *argv]) == 1
        assert "still pending" in capsys.readouterr().err
        # A cancelled job reports cancelled.
        assert main(["batch", "cancel", name, *argv]) == 0
        assert "BATCH_STATE_CANCELLED" in capsys.readouterr().out
        assert main(["batch", "results", name, *argv]) == 1
        assert "BatchJobFailed" in capsys.readouterr().err
    finally:
        slow.stop()


def test_bad_items_are_refused_before_anything_is_sent(
    home: Path, tmp_path: Path, batch_emulator: EmulatorThread, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad items are refused before anything is sent."""
    before = batch_emulator.stats()["batches"]
    url = batch_emulator.base_url
    cases = {
        '{"prompt": "no key"}': "'key' must be a non-empty string",
        '{"key": "a", "prompt": "x", "colour": "red"}': "unknown fields",
        '{"key": "a", "images": ["missing.png"]}': "no such file",
        '{"key": "a", "prompt": "x", "image_config": {"image_size": "9K"}}': "9K",
        '{"key": "a", "prompt": "x"}\n{"key": "a", "prompt": "y"}': "unique",
        "not json": "not JSON",
    }
    for text, message in cases.items():
        path = tmp_path / "bad.jsonl"
        path.write_text(text + "\n")
        assert main(["batch", str(path), "--base-url", url, "--store", "memory"]) == 1
        assert message in capsys.readouterr().err
    assert batch_emulator.stats()["batches"] == before
    assert main(["batch", str(path), "--api", "openai-chat", "--base-url", url]) == 1
    assert "Gemini-native" in capsys.readouterr().err


async def test_engine_batch_keeps_item_errors_and_reads_file_input(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Engine batch keeps item errors and reads file input."""
    emu = await make_emulator(batch_seconds=0.2, faults="fail_first=1:500")
    image = tmp_path / "in.png"
    image.write_bytes(png(32, 32))
    items = [BatchItem(f"k{i}", f"a mug {i}", [image] if i % 2 else []) for i in range(6)]
    async with (
        SqliteStore(tmp_path / "s.db") as store,
        Engine(config_for(emu.base_url), store=store) as engine,
    ):
        results = await engine.batch(items)
        assert isinstance(results, list)
        # fail_first=1: every distinct item fails its first (and only) arrival.
        assert [r.status for r in results] == ["failed"] * 6
        assert all(r.error and r.error.startswith("500") for r in results)
        emu.set_faults("")
        # Over the inline limit: the requests go as a JSONL file through the Files API.
        record = await engine.batches.submit(
            items, image_config=ImageConfig(image_size="2K"), inline_limit=100
        )
        assert record.input_file is not None and record.input_file.startswith("files/")
        op = await engine.batches.wait(record.name, first_poll=0.05)
        assert op.state == "BATCH_STATE_SUCCEEDED"
        results = await engine.batches.results(record.name, op)
        assert [r.key for r in results] == [i.key for i in items]
        assert all(r.status == "succeeded" and len(r.images) == 1 for r in results)
        assert all(r.images[0].width == 2048 for r in results)  # the 2K default applied
        half = sum(r.cost_usd for r in results)
        assert engine.ledger.spent_for(f"batch:{record.name}") == pytest.approx(half)
        # Collecting again does not charge twice.
        await engine.batches.results(record.name)
        assert engine.ledger.spent_for(f"batch:{record.name}") == pytest.approx(half)
        assert (await store.load_batch(record.name)).cost_settled


async def test_expired_and_failed_jobs_are_reported_as_such(
    make_emulator: EmulatorFactory,
) -> None:
    """Expired and failed jobs are reported as such."""
    emu = await make_emulator(batch_seconds=5, batch_expiry=0.2)
    async with Engine(config_for(emu.base_url)) as engine:
        with pytest.raises(BatchJobFailed, match="expired") as failed:
            await engine.batch([BatchItem("a", "a mug")])
        assert failed.value.state == "BATCH_STATE_EXPIRED"
        provider: Any = engine.provider
        broken = await provider.upload_file(b"{not jsonl\n", "application/jsonl")
        op = await provider.create_batch("gemini-3.1-flash-image", file_name=broken.name)
        assert op.state == "BATCH_STATE_FAILED" and op.done
        with pytest.raises(BatchJobFailed, match="Invalid input file"):
            await engine.batches.results(op.name)


async def test_batch_needs_a_gemini_native_provider(make_emulator: EmulatorFactory) -> None:
    """Batch needs a gemini native provider."""
    emu = await make_emulator()
    async with Engine(config_for(emu.base_url, api="openai-chat")) as engine:
        with pytest.raises(ConfigError, match="no Batch API"):
            await engine.batch([BatchItem("a", "a mug")])
