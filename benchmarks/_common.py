"""Shared helpers of the benchmark scripts: machine info, RESULTS.md, RSS/CPU, the emulator process.

Scripts in this directory run as ``python benchmarks/NAME.py``; the script's directory is then
on ``sys.path``, so they import this module as ``_common``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "RESULTS_PATH",
    "RssSampler",
    "append_results",
    "cpu_seconds",
    "emulator_process",
    "emulator_stats",
    "fmt",
    "machine_info",
    "markdown_table",
    "max_rss_bytes",
    "process_cpu_seconds",
    "raise_nofile",
    "rss_bytes",
]

RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"
REPO_ROOT = Path(__file__).resolve().parent.parent
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_URL = re.compile(r"https?://[0-9A-Za-z.\-\[\]:]+(?::\d+)?")


# --- machine and results --------------------------------------------------------------------------


# Edits a session of image turns takes in order (history.py, chat_faces.py).
PROMPTS = [
    "A ceramic mug on an oak table, morning light",
    "Add a eucalyptus sprig to the left",
    "Make the light warmer",
    "Add a red circle on the right",
    "Make it grayscale",
    "Add a blue square at the top",
    "Change the table to marble",
    "Add a small cat at the bottom",
    "Make it brighter",
    "Add a green triangle on the left",
    "Make the mug yellow",
    "Add a lamp in the corner",
]


def machine_info(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Platform, Python, CPU count, UTC date and the exact command that produced a result."""
    args = list(sys.argv if argv is None else argv)
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cpus": os.cpu_count() or 1,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        # Other work on the machine skews wall times; the reader should know how busy it was.
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "command": shlex.join(["python", *args]),
    }


def append_results(title: str, info: dict[str, Any], table: str, notes: Sequence[str] = ()) -> None:
    """Append one section (heading, command, machine, table, notes) to benchmarks/RESULTS.md."""
    lines = [
        "",
        f"## {title} — {info['date']}",
        "",
        f"- command: `{info['command']}`",
        f"- machine: {info['platform']} ({info['machine']}), {info['cpus']} CPUs, "
        f"{info['python']}, load average {info.get('loadavg_1m', '?')} at the start",
        *(f"- {n}" for n in notes),
        "",
        table.rstrip("\n"),
        "",
    ]
    # One write in append mode: other scripts append to the same file, never rewrite it.
    with RESULTS_PATH.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines))


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: int | Collection[int] = 1
) -> str:
    """A Markdown table; columns from index `right` on (or those listed) are right-aligned."""
    cols = range(right, len(headers)) if isinstance(right, int) else right
    align = ["---:" if i in cols else "---" for i in range(len(headers))]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    out.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(out) + "\n"


def fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    """A number for a table; None (no data) is an en dash, never NaN."""
    if value is None:
        return "\u2013"  # an en dash
    return f"{value:,.{digits}f}{suffix}"


# --- CPU and memory -------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """User + system CPU seconds this process has used so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds another process has used (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        # Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        fields = fh.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def max_rss_bytes() -> int:
    """Peak resident set size of this process so far (`ru_maxrss` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    """Current resident set size, from /proc/self/statm (cheap enough to sample every 10 ms)."""
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[1]) * _PAGE_SIZE


class RssSampler:
    """Samples the current RSS in a daemon thread; `peak` is the largest sample seen."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.baseline = rss_bytes()
        self.peak = self.baseline
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())
            self.samples += 1

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        # One last sample: the workload may have peaked after the last tick.
        self.peak = max(self.peak, rss_bytes())

    @property
    def delta(self) -> int:
        """Peak during the workload minus the baseline taken when the sampler was created."""
        return self.peak - self.baseline


def raise_nofile(needed: int) -> tuple[int, int]:
    """Raise the soft open-files limit to at least `needed` (up to the hard limit); new limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft, hard


# --- the emulator in its own process --------------------------------------------------------------


@contextlib.contextmanager
def emulator_process(
    *extra: str, timeout: float = 60.0, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run `python -m engine emulator --port 0 EXTRA...`; yields (process, base URL)."""
    cmd = [sys.executable, "-m", "engine", "emulator", "--port", "0", *extra]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO_ROOT,
        env=env,
    )
    try:
        base_url = _read_base_url(proc, timeout)
        yield proc, base_url
    finally:
        # Only the process started here is stopped, by its own handle. (Imported here: a
        # benchmark's peer client processes import this module and must not load the engine.)
        from engine.cli._procs import stop_process

        stop_process(proc)


def _read_base_url(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    found: list[str] = []
    ready = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        # Keep draining after the URL: an emulator that logs to stdout must never block on a
        # full pipe.
        for line in proc.stdout:
            if not found:
                m = _URL.search(line)
                if m:
                    found.append(m.group(0).rstrip("/"))
                    ready.set()
        ready.set()

    # A thread, because readline has no timeout and an emulator that never prints must not hang.
    threading.Thread(target=reader, name="emulator-stdout", daemon=True).start()
    ready.wait(timeout)
    if not found:
        raise RuntimeError(
            f"the emulator printed no base URL within {timeout:.0f} s (exit code {proc.poll()})"
        )
    base_url = found[0]
    # Wait until it answers: printing the URL may precede accepting connections on some setups.
    deadline = time.monotonic() + timeout
    while True:
        try:
            emulator_stats(base_url)
            return base_url
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.05)


def emulator_stats(base_url: str) -> dict[str, Any]:
    """The emulator's `GET /emulator/stats` as a dict."""
    with urllib.request.urlopen(f"{base_url}/emulator/stats", timeout=10) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data
