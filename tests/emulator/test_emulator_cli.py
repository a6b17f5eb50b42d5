"""`nanoedit emulator` / `python -m engine.emulator`: options, the URL line, clean exit."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import aiohttp
import pytest

from engine.emulator._command import _settings, add_arguments


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_options_become_settings() -> None:
    """Every option lands in EmulatorSettings."""
    args = _parse(
        "--api-key", "k", "--latency", "2.5", "--latency-jitter", "1", "--faults", "429:retry=1",
        "--flat", "--seed", "7", "--max-request-bytes", "1000",
    )  # fmt: skip
    settings = _settings(args)
    assert (settings.api_key, settings.latency, settings.latency_jitter) == ("k", 2.5, 1.0)
    assert (settings.faults, settings.flat, settings.seed) == ("429:retry=1", True, 7)
    assert settings.max_request_bytes == 1000


def test_help_documents_the_fault_grammar() -> None:
    """--help carries the fault grammar as its epilog."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = parser.format_help()
    assert "fail_first=" in text and "rate=" in text and "html502" in text


@pytest.mark.parametrize("argv", [("--faults", "teapot"), ("--latency", "-1")])
def test_bad_options_are_refused(argv: tuple[str, ...]) -> None:
    """An unparsable fault spec or a negative latency is an argparse error."""
    with pytest.raises(SystemExit):
        _parse(*argv)


async def test_prints_url_serves_and_exits_zero_on_sigterm() -> None:
    """The command prints one URL line, serves on it, and exits 0 on SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine.emulator", "--flat", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        base_url = line.decode().strip()
        assert base_url.startswith("http://127.0.0.1:")
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{base_url}/emulator/stats") as response,
        ):
            assert response.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
        assert await proc.stdout.read() == b""
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_the_emulator_process_gives_freed_blocks_back_where_glibc_allows() -> None:
    """`nanoedit emulator` fixes glibc's mmap threshold (freed answers go back to the system);
    it says so where it could, and nowhere else."""
    import platform
    import subprocess
    import sys

    probe = "from engine.emulator import unmap_freed_blocks; print(unmap_freed_blocks())"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert out == str(expected)
