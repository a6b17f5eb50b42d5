"""`edit`'s live progress line: elapsed, attempt, bytes received, the thought summary."""

from __future__ import annotations

import io

from engine.cli._edit import Progress
from engine.events import ImageRef, TurnImage, TurnRetrying, TurnStarted, TurnTextDelta


class _Engine:
    """What Progress reads of an engine: its live received-bytes counter."""

    bytes_received = 0


def test_the_live_line_shows_attempt_bytes_and_thoughts() -> None:
    """The line follows the turn's events and the transport's byte counter."""
    engine = _Engine()
    out = io.StringIO()
    progress = Progress(engine, out, live=True)
    progress(TurnStarted(session_id="s", turn=1, model="m", stream=True, history_turns=0))
    progress(TurnTextDelta(session_id="s", turn=1, text="Sketching the mug", thought=True))
    engine.bytes_received = 2_500_000
    line = progress.line()
    assert "attempt 1" in line and "2.5 MB" in line and "Sketching the mug" in line
    progress(TurnRetrying(session_id="s", turn=1, attempt=1, delay_s=1.0, error="ServerError: 503"))
    progress(
        TurnImage(
            session_id="s",
            turn=1,
            image=ImageRef(sha256="0" * 64, mime_type="image/png", size=1, width=1, height=1),
        )
    )
    assert "attempt 2" in progress.line() and "1 image(s)" in progress.line()
    progress.draw()
    assert out.getvalue().count("retrying in 1.0s: ServerError: 503") == 1
    assert "\r" in out.getvalue()


def test_off_a_terminal_nothing_is_drawn() -> None:
    """live=False: draw() writes nothing; only answer text and retries are printed."""
    out = io.StringIO()
    progress = Progress(_Engine(), out, live=False)
    progress(TurnTextDelta(session_id="s", turn=1, text="thinking", thought=True))
    progress.draw()
    progress(TurnTextDelta(session_id="s", turn=1, text="Here it is", thought=False))
    progress.finish()
    assert out.getvalue() == "Here it is\n"
