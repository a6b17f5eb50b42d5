"""References with roles (issue 25): each image goes out after a labelled text part saying
what to take from it; roles and the model's image limit are checked before anything is sent;
the HTTP API and the CLI take roles too."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from engine import ConfigError, Engine, EngineConfig, Reference
from engine.runtime import ROLES
from sessions import MemoryStore
from tests.conftest import FakeProvider, png


async def test_references_go_out_labelled_in_order() -> None:
    """A subject and a style reference: the request's user turn is the prompt, then for each
    image its label (role and note) and the image, in the order given; a role-less image is
    sent as before."""
    provider = FakeProvider()
    async with Engine(EngineConfig(), provider=provider) as engine:
        s = await engine.create_session()
        await s.send(
            "put the mug in this style",
            [Reference(png(8, 8), "subject", note="the mug"), Reference(png(9, 9), "style"),
             png(10, 10)],
        )  # fmt: skip
    body = json.loads(provider.calls[0].body)
    parts = body[-1]["parts"]
    kinds = ["text" if "text" in p else "image" for p in parts]
    assert kinds == ["text", "text", "image", "text", "image", "image"]
    assert "subject" in parts[1]["text"] and "the mug" in parts[1]["text"]
    assert "style reference" in parts[3]["text"]
    sizes = [base64.b64decode(p["inlineData"]["data"])[16:24] for p in parts if "inlineData" in p]
    assert sizes == [png(8, 8)[16:24], png(9, 9)[16:24], png(10, 10)[16:24]]


async def test_roles_and_limits_are_checked_before_sending() -> None:
    """An unknown role, a note too long, more references than the model takes: ConfigError,
    nothing stored or sent."""
    provider = FakeProvider()
    store = MemoryStore()
    async with Engine(EngineConfig(), provider=provider, store=store) as engine:
        s = await engine.create_session()
        with pytest.raises(ConfigError, match="one of subject, style"):
            Reference(png(), "mood")
        with pytest.raises(ConfigError, match="500"):
            Reference(png(), "style", note="x" * 501)
        with pytest.raises(ConfigError, match="at most 14"):
            await s.send("many", [Reference(png(), ROLES[n % 5]) for n in range(15)])
        assert provider.calls == [] and (await store.load(s.id)).turns == {}


def test_the_cli_takes_references_with_roles(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--ref style=FILE` sends the image labelled with its role; a bad role fails first."""
    from engine.cli import main

    ref = tmp_path / "style.png"
    ref.write_bytes(png(32, 32))
    out = tmp_path / "out"
    args = ["edit", "a mug", "--flat", "--store", "memory", "--out", str(out), "--json",
            "--ref", f"style={ref}"]  # fmt: skip
    assert main(args) == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert doc["turns"][0]["index"] == 1
    history = json.loads((out / "session.json").read_text())
    user = history["contents"][0]["parts"]
    assert any("style reference" in p.get("text", "") for p in user)
    assert main([*args[:-1], f"mood={ref}"]) == 1
