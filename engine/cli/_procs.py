"""Processes `nanoedit bench` runs beside itself: the emulator, and client workers.

The emulator runs in a process of its own by default, so the benchmark measures the client and
not the fake server it talks to (in one process the emulator took 55% of the CPU and halved the
throughput). `--workers N` runs N client processes, each its own engine, against that one
emulator; their samples are merged onto one clock.
"""

from __future__ import annotations

import contextlib
import json
import select
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

from engine._exceptions import ConfigError

__all__ = ["emulator_cpu", "emulator_process", "serve_process", "stop_process"]

_START_TIMEOUT = 60.0


@contextlib.contextmanager
def emulator_process(options: Sequence[str]) -> Iterator[str]:
    """`python -m engine emulator --port 0 OPTIONS...` on 127.0.0.1; yields its base URL.

    Its log lines go to a temporary file, shown (the last lines) if it fails to start.
    """
    with tempfile.TemporaryFile("w+") as log:
        cmd = [sys.executable, "-m", "engine", "emulator", "--port", "0", *options]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            yield _base_url(proc, log, "emulator")
        finally:
            stop_process(proc)


def serve_process(
    options: Sequence[str], *, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Start `python -m engine serve --port 0 OPTIONS...`; the process and its base URL (stop
    it with `stop_process`). Its log lines are shown (the last ones) if it fails to start."""
    with tempfile.TemporaryFile("w+") as log:
        cmd = [sys.executable, "-m", "engine", "serve", "--port", "0", *options]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        try:
            return proc, _base_url(proc, log, "serve")
        except BaseException:
            stop_process(proc)
            raise


def stop_process(proc: subprocess.Popen[str], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; close its stdout pipe."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _base_url(proc: subprocess.Popen[str], log: Any, what: str) -> str:
    # The first line with a URL: the emulator prints it alone, serve as
    # "nanoedit serve: listening on http://HOST:PORT".
    assert proc.stdout is not None
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline().strip()
            at = line.find("http://")
            if at >= 0:
                return line[at:]
        if proc.poll() is not None:
            break
    log.seek(0)
    tail = " | ".join(log.read().strip().splitlines()[-3:])
    raise ConfigError(f"the {what} process did not start: {tail or 'no output'}")


def emulator_cpu(base_url: str) -> float | None:
    """CPU seconds the emulator process has used (its /emulator/stats), None if unknown."""
    try:
        with urllib.request.urlopen(base_url + "/emulator/stats", timeout=10) as resp:
            value = json.load(resp).get("cpu_s")
    except (OSError, ValueError):
        return None
    return float(value) if isinstance(value, int | float) else None
