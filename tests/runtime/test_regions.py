"""Region edits (issue 25): only the region changes. Five consecutive edits with a box and with
a painted mask on the emulator; every pixel beyond the feather is the head image's own (both
PNGs decoded and compared), the inside changed; bad regions refused before anything is sent."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from engine import ConfigError, Engine, EngineConfig
from engine.providers import GenerateRequest
from engine.runtime import Region
from sessions import Content, ImageConfig, MemoryStore, Part
from tests.conftest import EmulatorFactory, config_for

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


def _decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def _outside(mask: Image.Image, feather: int) -> Image.Image:
    """255 where a pixel is farther than the feather from the mask."""
    grown = mask.filter(ImageFilter.MaxFilter(2 * feather + 3)) if feather else mask
    return grown.point(lambda v: 0 if v else 255)


def _changed(a: Image.Image, b: Image.Image, where: Image.Image) -> int:
    diff = ImageChops.difference(a, b).convert("L").point(lambda v: 255 if v else 0)
    return sum(ImageChops.multiply(diff, where).histogram()[1:])


def _box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=255)
    return mask


@pytest.mark.parametrize("kind", ["box", "mask"])
async def test_five_region_edits_leave_every_other_pixel_alone(
    make_emulator: EmulatorFactory, kind: str
) -> None:
    """Five region edits in a row: outside the region (beyond the feather) every pixel equals
    the previous turn's; inside, the picture changed; the turn records the region, the model's
    raw answer (a thought image) and zero drift; the next whole-frame turn still works."""
    emu = await make_emulator()
    store = MemoryStore()
    async with Engine(config_for(emu.base_url), store=store) as engine:
        s = await engine.create_session(image_config=ImageConfig(aspect_ratio="16:9"))
        first = await s.send("a ceramic mug on an oak table")
        previous = first.images[0].data
        width, height = _decoded(previous).size
        prompts = ["add a red circle", "make it blue", "add a green triangle", "a small cat",
                   "add a blue square"]  # fmt: skip
        for n, prompt in enumerate(prompts):
            box = (40 + 60 * n, 60, 300 + 60 * n, 330)
            if kind == "box":
                region = Region.from_box(*box, feather=6)
                mask = _box_mask((width, height), box)
            else:
                mask = Image.new("L", (width, height), 0)
                ImageDraw.Draw(mask).ellipse(box, fill=255)
                png = io.BytesIO()
                mask.save(png, "PNG")
                region = Region.from_mask(png.getvalue(), feather=6)
            turn = await s.send(prompt, region=region)
            after = turn.images[0].data
            before_img, after_img = _decoded(previous), _decoded(after)
            assert after_img.size == before_img.size
            assert _changed(before_img, after_img, _outside(mask, 6)) == 0
            assert _changed(before_img, after_img, mask) > 100  # the edit did something
            meta = turn.record.metadata["region"]
            assert meta["region_drift_px"] == 0 and meta["prompt"] == prompt
            raw = [p for p in turn.record.model.parts if p.thought and p.inline_data]
            assert len(raw) == 1  # the model's own answer for the crop, kept
            previous = after
        whole = await s.send("make the whole picture warmer")
        assert whole.images and len(s.turns()) == 7


async def test_bad_regions_are_refused_before_anything_is_sent() -> None:
    """A box outside the image, an all-black mask, a region with no image to edit: ConfigError,
    nothing stored, nothing sent."""
    store = MemoryStore()
    async with Engine(EngineConfig(), store=store) as engine:
        s = await engine.create_session()
        with pytest.raises(ConfigError, match="needs an image"):
            await s.send("change it", region=Region.from_box(0, 0, 10, 10))
        await s.send("a mug")
        with pytest.raises(ConfigError, match="not inside"):
            await s.send("change it", region=Region.from_box(0, 0, 99_999, 10))
        black = io.BytesIO()
        Image.new("L", (64, 64), 0).save(black, "PNG")
        with pytest.raises(ConfigError, match="all black"):
            await s.send("change it", region=Region.from_mask(black.getvalue()))
        with pytest.raises(ConfigError, match="box or a mask"):
            Region()
        assert len((await store.load(s.id)).turns) == 1


def test_the_cli_edits_a_region_of_a_stored_session(home: Any, tmp_path: Any, capsys: Any) -> None:
    """`nanoedit edit PROMPT --session ID --region X0,Y0,X1,Y1` changes only the box of the
    session's head image; a malformed --region fails before anything runs."""
    import json

    from engine.cli import main

    store = str(tmp_path / "s.db")
    out = tmp_path / "out"
    assert main(["edit", "a mug", "--flat", "--store", store, "--out", str(out), "--json"]) == 0
    sid = json.loads(capsys.readouterr().out)["session_id"]
    args = ["edit", "add a cat", "--flat", "--store", store, "--session", sid, "--json",
            "--out", str(out), "--region", "10,20,200,220"]  # fmt: skip
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    before = _decoded((out / "turn-01.png").read_bytes())
    after = _decoded((out / "turn-02.png").read_bytes())
    box = ImageChops.difference(before, after).getbbox()
    assert doc["turns"][0]["index"] == 2 and box is not None
    assert box[0] >= 10 - 8 and box[1] >= 20 - 8 and box[2] <= 200 + 8 and box[3] <= 220 + 8
    assert main([*args[:-1], "10,20"]) == 1


async def test_a_native_mask_is_sent_and_drift_is_reported(make_emulator: EmulatorFactory) -> None:
    """Through OpenAI's images API (which takes masks itself) a region edit sends the whole
    image and the mask, keeps the API's frame, and reports how many pixels outside the region
    changed -- counted independently here, and not hidden (the emulator, like the gateways
    users report, edits the whole image)."""
    emu = await make_emulator(record_requests=True)
    cfg = config_for(emu.base_url + "/v1", api="openai-images")
    async with Engine(cfg) as engine:
        s = await engine.create_session()
        first = await s.send("a ceramic mug on an oak table")
        turn = await s.send("add a red circle", region=Region.from_box(100, 100, 400, 400))
        # The mask travels in the edit's form.
        request = GenerateRequest(
            s.model, [*s.contents(), Content(role="user", parts=[Part(text="x")])],
            s.state.record.settings, mask=b"MASK-BYTES",
        )  # fmt: skip
        form = engine.provider.encode(request)
        assert b'name="mask"' in form and b"MASK-BYTES" in form
    meta = turn.record.metadata["region"]
    assert meta["native"] is True
    before, after = _decoded(first.images[0].data), _decoded(turn.images[0].data)
    if after.size != before.size:
        after = after.resize(before.size, Image.Resampling.LANCZOS)
    mask = _box_mask(before.size, (100, 100, 400, 400))
    outside = mask.filter(ImageFilter.BoxBlur(8)).point(lambda v: 255 if v == 0 else 0)
    assert meta["region_drift_px"] == _changed(before, after, outside)
    assert meta["region_drift_px"] > 0  # reported, not hidden by a composite
    edits = [r for r in emu.requests if r.endpoint == "images.edits"]
    assert len(edits) == 1 and not [p for p in turn.record.model.parts if p.thought]
