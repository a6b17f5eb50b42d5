"""Tests for the emulator's pure rendering core (engine.emulator.render)."""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageFilter, ImageStat
from PIL.PngImagePlugin import PngInfo

from engine.emulator.render import image_size, render_edit, render_scene
from engine.emulator.render._vocabulary import GRAIN_AMPLITUDE

SCENE = "A red mug on a wooden table with a eucalyptus sprig, sunset background, text 'Hello'"
PLAIN = "white background"
SIZES = [(1024, 1024), (1376, 768), (848, 1264), (512, 512)]
SMALL = (256, 256)


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def flat_scene(prompt: str = SCENE, size: tuple[int, int] = SMALL, seed: int = 1) -> bytes:
    return render_scene(prompt, *size, seed=seed, grain=False).data


def edit(
    base: bytes, instruction: str, size: tuple[int, int] = SMALL, seed: int = 2
) -> Image.Image:
    return decode(render_edit(base, instruction, *size, seed=seed, grain=False).data)


def channel_means(img: Image.Image, box: tuple[int, int, int, int] | None = None) -> list[float]:
    return list(ImageStat.Stat(img.crop(box) if box else img).mean)


def luma(img: Image.Image) -> float:
    return float(ImageStat.Stat(img.convert("L")).mean[0])


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


def count_pixels(img: Image.Image, test: Callable[[int, int, int], bool]) -> int:
    """Count pixels whose (r, g, b) satisfies test, via a histogram of a 64-level copy."""
    small = img.point(lambda v: v // 4 * 4)
    total = 0
    for n, colour in small.getcolors(maxcolors=1 << 20) or []:
        assert isinstance(colour, tuple)
        r, g, b = colour[:3]
        total += n if test(r, g, b) else 0
    return total


def pixel(img: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    value = img.getpixel(xy)
    assert isinstance(value, tuple)
    return (int(value[0]), int(value[1]), int(value[2]))


def is_red(r: int, g: int, b: int) -> bool:
    return r > 170 and g < 90 and b < 90


# --------------------------------------------------------------------------- sizes & formats


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_scene_has_exact_size(width: int, height: int) -> None:
    """render_scene returns exactly the requested size, in the result and in the PNG."""
    result = render_scene(SCENE, width, height, seed=3, grain=False)
    assert (result.width, result.height) == (width, height)
    assert result.mime_type == "image/png"
    assert decode(result.data).size == (width, height)


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_edit_cover_fits_base_to_requested_size(width: int, height: int) -> None:
    """render_edit resizes a base of another size to exactly width x height."""
    base = flat_scene(size=(640, 480))
    result = render_edit(base, "make it brighter", width, height, seed=1, grain=False)
    assert decode(result.data).size == (width, height)
    assert any("resized base" in note for note in result.applied)


def test_jpeg_output_and_image_size() -> None:
    """output_mime='image/jpeg' yields a JPEG whose size image_size reads back."""
    result = render_scene(SCENE, 320, 200, seed=1, output_mime="image/jpeg")
    assert result.mime_type == "image/jpeg"
    assert result.data[:2] == b"\xff\xd8"
    assert image_size(result.data) == (320, 200)


def test_image_size_png_from_header_only() -> None:
    """image_size reads a PNG's size from its header; the pixel data is not needed."""
    data = render_scene(SCENE, 300, 170, seed=1, grain=False).data
    assert image_size(data) == (300, 170)
    idat = data.index(b"IDAT")
    assert image_size(data[: idat + 4]) == (300, 170)


def test_png_sizes_are_read_without_pillow_when_the_header_checks_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A PNG whose IHDR CRC holds is measured without opening it; a damaged or oversized one
    is left to Pillow, which rejects it as before."""
    data = render_scene(SCENE, 300, 170, seed=1, grain=False).data
    damaged = data[:17] + bytes([data[17] ^ 1]) + data[18:]  # width changed, CRC not
    huge = bytearray(data)
    huge[16:24] = (100_000).to_bytes(4, "big") * 2
    huge[29:33] = zlib.crc32(bytes(huge[12:29])).to_bytes(4, "big")
    with pytest.raises(ValueError, match="not a decodable image"):
        image_size(damaged)
    with pytest.raises(ValueError, match="too many pixels"):
        image_size(bytes(huge))

    def no_pillow(data: bytes) -> None:
        raise AssertionError("Pillow opened the image")

    monkeypatch.setattr("engine.emulator.render._open_image", no_pillow)
    assert image_size(data) == (300, 170)


@pytest.mark.parametrize("garbage", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_image_size_rejects_garbage(garbage: bytes) -> None:
    """image_size raises ValueError('not a decodable image') on garbage."""
    with pytest.raises(ValueError, match="not a decodable image"):
        image_size(garbage)


@pytest.mark.parametrize("garbage", [b"", b"GIF89a-nope", b"hello world"])
def test_edit_rejects_undecodable_base(garbage: bytes) -> None:
    """render_edit raises ValueError with a clear message for an undecodable base."""
    with pytest.raises(ValueError, match="not a decodable"):
        render_edit(garbage, "make it brighter", 64, 64, seed=1)


def test_edit_rejects_truncated_base() -> None:
    """A PNG cut off inside its pixel data is reported as truncated, not a crash."""
    data = render_scene(SCENE, 256, 256, seed=1).data
    with pytest.raises(ValueError, match="truncated or corrupt"):
        render_edit(data[: len(data) // 2], "make it brighter", 64, 64, seed=1)


@pytest.mark.parametrize(
    ("width", "height", "mime"),
    [(0, 10, "image/png"), (10, 9000, "image/png"), (10, 10, "image/bmp")],
)
def test_bad_arguments_raise(width: int, height: int, mime: str) -> None:
    """Impossible sizes and unsupported output types raise ValueError."""
    with pytest.raises(ValueError):
        render_scene("a cat", width, height, seed=1, output_mime=mime)


def test_edit_accepts_jpeg_webp_and_gif_bases() -> None:
    """Bases in JPEG, WebP and GIF (palette) are decoded and edited."""
    rgb = decode(flat_scene())
    for fmt in ("JPEG", "WEBP", "GIF"):
        buf = io.BytesIO()
        rgb.save(buf, fmt)
        out = edit(buf.getvalue(), "make it grayscale", (128, 96))
        assert out.size == (128, 96)


# --------------------------------------------------------------------------- determinism


def test_scene_is_deterministic() -> None:
    """The same arguments give byte-identical output, with and without grain."""
    for grain in (False, True):
        a = render_scene(SCENE, 200, 150, seed=5, grain=grain)
        b = render_scene(SCENE, 200, 150, seed=5, grain=grain)
        assert a == b


def test_scene_depends_on_seed_and_prompt() -> None:
    """A different seed or a different prompt gives different bytes."""
    base = flat_scene(seed=1)
    assert flat_scene(seed=2) != base
    assert flat_scene("a blue circle on a black background", seed=1) != base
    assert (
        render_scene(PLAIN, 64, 64, seed=1, grain=False).data
        != render_scene(PLAIN, 64, 64, seed=2, grain=False).data
    )


def test_edit_is_deterministic() -> None:
    """render_edit with the same arguments gives byte-identical output."""
    base = render_scene(SCENE, 200, 150, seed=5).data
    runs = {
        render_edit(base, "add a cat on the right and blur it", 200, 150, seed=9).data
        for _ in range(3)
    }
    assert len(runs) == 1


# --------------------------------------------------------------------------- colour filters


def test_grayscale_makes_channels_equal() -> None:
    """'make it grayscale' leaves R == G == B for every pixel."""
    out = edit(flat_scene(), "make it grayscale")
    r, g, b = out.split()
    assert ImageChops.difference(r, g).getbbox() is None
    assert ImageChops.difference(g, b).getbbox() is None


def test_grayscale_stays_gray_with_grain() -> None:
    """Grain is monochrome, so a grayscale image with grain is still exactly gray."""
    base = render_scene(SCENE, 160, 120, seed=1).data
    out = decode(render_edit(base, "black and white please", 160, 120, seed=3, grain=True).data)
    r, g, b = out.split()
    assert ImageChops.difference(r, g).getbbox() is None
    assert ImageChops.difference(g, b).getbbox() is None


def _edge_energy(img: Image.Image) -> float:
    return float(ImageStat.Stat(img.convert("L").filter(ImageFilter.FIND_EDGES)).mean[0])


def test_sepia_turns_blue_scene_brown() -> None:
    """Sepia makes a blue-dominated image red/brown-dominated."""
    base = flat_scene("a blue circle on a navy background")
    r0, _, b0 = channel_means(decode(base))
    r1, _, b1 = channel_means(edit(base, "apply a sepia filter"))
    assert b0 > r0
    assert r1 > b1 + 20


def test_invert_mirrors_channel_means() -> None:
    """Invert maps every channel mean m to about 255 - m."""
    base = flat_scene()
    before = channel_means(decode(base))
    after = channel_means(edit(base, "invert the colours"))
    for m0, m1 in zip(before, after, strict=True):
        assert abs(m1 - (255 - m0)) < 1.0


def test_blur_reduces_edges() -> None:
    """Blur lowers the image's edge energy substantially."""
    base = flat_scene()
    assert _edge_energy(edit(base, "blur it")) < 0.7 * _edge_energy(decode(base))


def test_sharpen_increases_edges() -> None:
    """Sharpen raises the image's edge energy."""
    base = flat_scene()
    assert _edge_energy(edit(base, "sharpen the image")) > _edge_energy(decode(base))


@pytest.mark.parametrize(
    ("instruction", "sign"),
    [
        ("make it brighter", 1),
        ("lighter please", 1),
        ("make it darker", -1),
        ("darken the photo", -1),
    ],
)
def test_brightness_moves_luma(instruction: str, sign: int) -> None:
    """Brighter/lighter raise mean luminance, darker lowers it, by a clear margin."""
    base = flat_scene()
    delta = luma(edit(base, instruction)) - luma(decode(base))
    assert delta * sign > 10


@pytest.mark.parametrize(
    ("instruction", "sign"),
    [
        ("make it warmer", 1),
        ("golden morning light", 1),
        ("make it cooler", -1),
        ("evening light", -1),
    ],
)
def test_temperature_moves_red_blue_balance(instruction: str, sign: int) -> None:
    """Warmer raises mean(R - B); cooler lowers it."""
    base = flat_scene()
    r0, _, b0 = channel_means(decode(base))
    r1, _, b1 = channel_means(edit(base, instruction))
    assert ((r1 - b1) - (r0 - b0)) * sign > 10


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    ("instruction", "op"),
    [
        ("rotate 180 degrees", Image.Transpose.ROTATE_180),
        ("turn it upside down", Image.Transpose.ROTATE_180),
        ("rotate 90 degrees clockwise", Image.Transpose.ROTATE_270),
        ("rotate left", Image.Transpose.ROTATE_90),
        ("flip horizontally", Image.Transpose.FLIP_LEFT_RIGHT),
        ("mirror it", Image.Transpose.FLIP_LEFT_RIGHT),
        ("flip it vertically", Image.Transpose.FLIP_TOP_BOTTOM),
    ],
)
def test_rotate_and_flip_match_pil_transpose(instruction: str, op: Image.Transpose) -> None:
    """Rotations and flips equal PIL's transpose of the base exactly (flat mode)."""
    base = flat_scene()
    assert (
        ImageChops.difference(edit(base, instruction), decode(base).transpose(op)).getbbox() is None
    )


def test_quarter_turn_keeps_non_square_size() -> None:
    """Rotating a non-square image by 90 degrees still returns width x height."""
    base = flat_scene(size=(320, 180))
    assert edit(base, "rotate right", (320, 180)).size == (320, 180)


def test_zoom_in_is_a_centre_crop_scaled_back() -> None:
    """'zoom in 2x' equals the central half of the base scaled back up, at the same size."""
    base = flat_scene()
    w, h = SMALL
    expected = decode(base).resize(
        SMALL, Image.Resampling.BILINEAR, box=(w / 4, h / 4, 3 * w / 4, 3 * h / 4)
    )
    out = edit(base, "zoom in 2x")
    assert out.size == SMALL
    assert mean_abs_diff(out, expected) < 0.5


def test_crop_keeps_size_and_changes_pixels() -> None:
    """'crop to the left half' keeps the output size and changes the picture."""
    base = flat_scene()
    out = edit(base, "crop to the left half")
    assert out.size == SMALL
    assert mean_abs_diff(out, decode(base)) > 2


# --------------------------------------------------------------------------- drawing edits


def test_add_red_circle_on_left_only_touches_left_half() -> None:
    """'add a red circle on the left' adds red pixels on the left; the right half is untouched."""
    base = flat_scene(PLAIN)
    before, after = decode(base), edit(base, "add a red circle on the left")
    w, h = SMALL
    left, right = (0, 0, w // 2, h), (w // 2, 0, w, h)
    assert count_pixels(after.crop(left), is_red) > 0.05 * (w // 2) * h
    assert count_pixels(before.crop(left), is_red) == 0
    assert mean_abs_diff(after.crop(right), before.crop(right)) < 0.5


@pytest.mark.parametrize(("width", "height"), [(1376, 768), (848, 1264)])
def test_add_red_circle_left_on_wide_and_tall_images(width: int, height: int) -> None:
    """The left-half guarantee also holds on landscape and portrait canvases."""
    base = flat_scene(PLAIN, size=(width, height))
    after = edit(base, "Add a red circle on the left", (width, height))
    right = (width // 2, 0, width, height)
    assert count_pixels(after.crop((0, 0, width // 2, height)), is_red) > 0
    assert count_pixels(after.crop(right), is_red) == 0


def test_sprig_added_left_and_rest_kept() -> None:
    """'Add a eucalyptus sprig to the left. Keep everything else.' adds a sprig on the left."""
    base = flat_scene(PLAIN)
    result = render_edit(
        base,
        "Add a eucalyptus sprig to the left. Keep everything else.",
        *SMALL,
        seed=4,
        grain=False,
    )
    out, before = decode(result.data), decode(base)
    w, h = SMALL
    assert any("sprig" in note for note in result.applied)
    assert not any("caption" in note for note in result.applied)
    greenish = count_pixels(out.crop((0, 0, w // 2, h)), lambda r, g, b: g > r + 25 and g > b + 15)
    assert greenish > 0.02 * (w // 2) * h
    assert mean_abs_diff(out.crop((w // 2, 0, w, h)), before.crop((w // 2, 0, w, h))) < 0.5


def test_instructions_apply_in_order() -> None:
    """'grayscale then add red' keeps the red circle; 'add red then grayscale' removes all red."""
    base = flat_scene(PLAIN)
    first_gray = edit(base, "Make it grayscale and add a red circle on the right")
    first_red = edit(base, "Add a red circle on the right, then make it grayscale")
    assert count_pixels(first_gray, is_red) > 0
    assert count_pixels(first_red, is_red) == 0


def test_edits_compound_over_turns() -> None:
    """An edit of an edited image keeps the earlier change."""
    base = flat_scene(PLAIN)
    turn1 = render_edit(base, "add a red circle on the left", *SMALL, seed=1, grain=False).data
    turn2 = edit(turn1, "add a blue square on the right")
    w, h = SMALL
    assert count_pixels(turn2.crop((0, 0, w // 2, h)), is_red) > 0
    assert count_pixels(turn2.crop((w // 2, 0, w, h)), lambda r, g, b: b > 170 and r < 90) > 0


def test_remove_restores_what_was_behind() -> None:
    """Removing an added object restores the previous picture exactly (flat mode)."""
    base = flat_scene("a wooden table on a sunset background")
    added = render_edit(base, "add a red circle in the center", *SMALL, seed=1, grain=False).data
    removed = edit(added, "remove the red circle")
    assert count_pixels(removed, is_red) == 0
    assert mean_abs_diff(removed, decode(base)) < 0.05


def test_remove_without_metadata_inpaints() -> None:
    """A base without our metadata (a plain re-encoded PNG) still gets the named colour removed."""
    added = decode(
        render_edit(
            flat_scene(PLAIN), "add a red circle on the left", *SMALL, seed=1, grain=False
        ).data
    )
    buf = io.BytesIO()
    added.save(buf, "PNG")  # drops the tEXt chunk
    out = edit(buf.getvalue(), "remove the red object on the left")
    assert count_pixels(out, is_red) < 0.1 * count_pixels(added, is_red)


def test_move_it_to_the_right() -> None:
    """'move it to the right' moves the last object from the left half to the right half."""
    base = flat_scene(PLAIN)
    added = render_edit(base, "add a red circle on the left", *SMALL, seed=1, grain=False).data
    moved = edit(added, "move it to the right")
    w, h = SMALL
    assert count_pixels(moved.crop((0, 0, w // 2, h)), is_red) == 0
    assert count_pixels(moved.crop((w // 2, 0, w, h)), is_red) > 0.05 * (w // 2) * h


def test_background_recolour_keeps_objects() -> None:
    """'make the background blue' turns the corners blue and keeps the red circle."""
    base = flat_scene("a red circle in the center on a white background")
    out = edit(base, "make the background blue")
    r, _, b = pixel(out, (2, 2))
    assert b > r + 80
    assert count_pixels(out, is_red) > 0


def test_turn_it_green_recolours_last_object() -> None:
    """'turn it green' repaints the last drawn object and leaves no red."""
    added = render_edit(flat_scene(PLAIN), "add a red square", *SMALL, seed=1, grain=False).data
    out = edit(added, "turn it green")
    assert count_pixels(out, is_red) == 0
    assert count_pixels(out, lambda r, g, b: g > 120 and r < 100 and b < 120) > 0


def test_quoted_text_is_drawn() -> None:
    """Text in quotes changes pixels where it is placed (top) and is listed in applied."""
    base = flat_scene(PLAIN)
    result = render_edit(base, "add the text 'SALE 50%' at the top", *SMALL, seed=1, grain=False)
    out, before = decode(result.data), decode(base)
    w, h = SMALL
    assert mean_abs_diff(out.crop((0, 0, w, h // 2)), before.crop((0, 0, w, h // 2))) > 1
    assert mean_abs_diff(out.crop((0, h // 2, w, h)), before.crop((0, h // 2, w, h))) < 0.1
    assert any("SALE 50%" in note for note in result.applied)


def test_scene_draws_quoted_text() -> None:
    """A scene prompt with quoted text differs from the same prompt without it."""
    assert flat_scene("a cat with the text 'Meow'") != flat_scene("a cat")


def test_unknown_instruction_draws_caption() -> None:
    """An instruction that is not understood still changes the image, via a caption band."""
    base = flat_scene(PLAIN)
    result = render_edit(base, "make it feel more ethereal", *SMALL, seed=1, grain=False)
    out, before = decode(result.data), decode(base)
    w, h = SMALL
    assert any("caption" in note for note in result.applied)
    assert (
        luma(out.crop((0, int(h * 0.92), w, h))) < luma(before.crop((0, int(h * 0.92), w, h))) - 50
    )


def test_unknown_noun_becomes_labelled_object() -> None:
    """A noun the renderer has no drawing for still produces a labelled object."""
    result = render_scene("a shiny spaceship", 256, 256, seed=1, grain=False)
    assert any("spaceship" in note for note in result.applied)
    assert mean_abs_diff(decode(result.data), decode(flat_scene("", seed=1))) > 1


def test_scene_follows_colour_and_position_words() -> None:
    """'a red circle on the left, blue background' puts red on the left over a blue backdrop."""
    out = decode(flat_scene("a red circle on the left, blue background"))
    w, h = SMALL
    assert count_pixels(out.crop((0, 0, w // 2, h)), is_red) > 0.05 * (w // 2) * h
    assert count_pixels(out.crop((w // 2, 0, w, h)), is_red) == 0
    r, _, b = channel_means(out, (w // 2, 0, w, h))
    assert b > r + 80


# --------------------------------------------------------------------------- grain & robustness


def test_grain_png_weighs_like_a_model_output() -> None:
    """A 1024x1024 grain PNG is between 1.0 and 2.0 MB; without grain it is far smaller."""
    grain = render_scene(SCENE, 1024, 1024, seed=11).data
    flat = render_scene(SCENE, 1024, 1024, seed=11, grain=False).data
    assert 1_000_000 <= len(grain) <= 2_000_000
    assert len(flat) < 300_000


def test_grain_does_not_accumulate_over_turns() -> None:
    """After several grain edits the noise is still one layer of +-amplitude, not a pile-up."""
    steps = ["make it warmer", "add a red circle on the left", "blur it", "Keep everything else."]
    grain_data = render_scene(SCENE, 200, 200, seed=1).data
    flat_data = render_scene(SCENE, 200, 200, seed=1, grain=False).data
    for i, step in enumerate(steps):
        grain_data = render_edit(grain_data, step, 200, 200, seed=i).data
        flat_data = render_edit(flat_data, step, 200, 200, seed=i, grain=False).data
    diff = ImageChops.difference(decode(grain_data), decode(flat_data))
    assert mean_abs_diff(decode(grain_data), decode(flat_data)) < 2.5
    highs = [band[1] for band in diff.getextrema() if isinstance(band, tuple)]
    assert highs
    assert max(highs) <= 2 * GRAIN_AMPLITUDE + 1


def test_forged_metadata_is_ignored_safely() -> None:
    """A PNG carrying malformed or hostile metadata under our key is still edited normally."""
    img = decode(flat_scene())
    for meta in [
        "{not json",
        '{"v":1,"s":[256,256],"g":[1,2,99],"ev":[{"e":"bg","w":99999,"h":99999}]}',
        '{"v":1,"s":[256,256],"o":[[1,"cat","x",[1,2,3],[0,0,10,10],[0,0,"a",1],0]],"ev":"x"}',
    ]:
        info = PngInfo()
        info.add_text("nanoedit", meta)
        buf = io.BytesIO()
        img.save(buf, "PNG", pnginfo=info)
        assert edit(buf.getvalue(), "remove the cat and move it left", (64, 64)).size == (64, 64)


WORDS = [
    "add",
    "remove",
    "move",
    "make",
    "rotate",
    "flip",
    "crop",
    "zoom",
    "the",
    "a",
    "it",
    "red",
    "blue",
    "cat",
    "circle",
    "sprig",
    "left",
    "right",
    "top",
    "background",
    "sunset",
    "brighter",
    "and",
    "then",
    "90",
    "2x",
    "'hi'",
    "replace",
    "with",
    "bigger",
    "text",
    "blur",
    "everything",
]


@settings(max_examples=40, deadline=None)
@given(
    words=st.lists(st.sampled_from(WORDS), max_size=12), punct=st.sampled_from(["", ".", ",", "!"])
)
def test_any_instruction_keeps_size_and_is_deterministic(words: list[str], punct: str) -> None:
    """Arbitrary word salad never crashes, keeps the size and is deterministic."""
    instruction = " ".join(words) + punct
    base = render_scene("a cat and a red circle on the left", 48, 40, seed=1, grain=False).data
    first = render_edit(base, instruction, 40, 48, seed=3, grain=False)
    assert decode(first.data).size == (40, 48)
    assert first.applied
    assert render_edit(base, instruction, 40, 48, seed=3, grain=False) == first


async def test_render_cache_holds_a_load_of_more_than_256_images() -> None:
    """A second run of 400 distinct small renders is served from the default cache (it held
    256 entries, so a load of more sessions than that rendered every image again)."""
    from engine.emulator import EmulatorSettings
    from engine.emulator._generate import RenderJob, RenderPool

    settings = EmulatorSettings()
    pool = RenderPool(
        threads=2,
        max_entries=settings.render_cache_entries,
        max_bytes=settings.render_cache_bytes,
    )
    jobs = [
        RenderJob(
            model="m",
            instruction=f"a red cube {i}",
            base=None,
            base_sha256=b"",
            width=16,
            height=16,
            seed=i,
            grain=False,
        )
        for i in range(400)
    ]
    for _ in range(2):
        for job in jobs:
            await pool.render(job)
    await pool.aclose()
    assert (pool.renders, pool.hits) == (400, 400)


def test_a_render_carries_its_digest_and_base64_and_answers_splice_them_exactly() -> None:
    """Worked out once with the render, the image's sha256 and base64 give the same answer
    JSON as encoding the part afresh (the splice is byte for byte)."""
    import base64
    import hashlib

    from engine.emulator._gemini import _encoded_part
    from engine.emulator._generate import RenderJob
    from engine.emulator._http import json_body
    from sessions import Blob, Part

    result = RenderJob(
        model="m",
        instruction="a blue sphere",
        base=None,
        base_sha256=b"",
        width=32,
        height=32,
        seed=1,
        grain=True,
    ).run()
    assert result.sha256 == hashlib.sha256(result.data).digest()
    assert base64.b64decode(result.b64) == result.data
    for part in (
        Part(
            inline_data=Blob(mime_type=result.mime_type, data=result.data), thought_signature=b"s"
        ),
        Part(inline_data=Blob(mime_type=result.mime_type, data=result.data), thought=True),
    ):
        assert bytes(_encoded_part(part, result.b64)) == json_body(part)


async def test_held_bytes_waits_in_order_and_never_goes_over() -> None:
    """Calls hold their memory under the limit: the rest wait, first come first served; one
    larger than the whole limit goes alone; a call may grow what it holds; a waiter cancelled
    (also just after being let in) leaves no bytes behind."""
    import asyncio

    from engine.emulator._generate import HeldBytes

    held = HeldBytes(100)
    order: list[str] = []
    release: dict[str, asyncio.Event] = {}

    async def call(name: str, size: int, more: int = 0) -> None:
        release[name] = asyncio.Event()
        async with held.holding(size) as grow:
            order.append(name)
            grow(more)
            await release[name].wait()

    first = asyncio.ensure_future(call("a", 50, more=10))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(call("b", 60))  # would go over: waits
    third = asyncio.ensure_future(call("c", 30))  # fits, but waits behind b
    await asyncio.sleep(0)
    assert order == ["a"] and held.held == 60 and held.waits == 2
    release["a"].set()
    await first
    await asyncio.sleep(0)
    assert order == ["a", "b", "c"] and held.held == 90
    big = asyncio.ensure_future(call("big", 500))  # alone, once the others are done
    await asyncio.sleep(0)
    assert order == ["a", "b", "c"]
    release["b"].set()
    release["c"].set()
    await asyncio.gather(second, third)
    await asyncio.sleep(0)
    assert order[-1] == "big" and held.held == 500
    waiting = asyncio.ensure_future(call("w", 10))
    await asyncio.sleep(0)
    waiting.cancel()
    let_in = asyncio.ensure_future(call("x", 10))
    await asyncio.sleep(0)
    release["big"].set()
    await big  # frees the room: x is let in; cancelled before it runs
    let_in.cancel()
    for task in (waiting, let_in):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert held.held == 0 and held.peak == 500


def test_the_held_estimate_covers_a_render_and_its_base64() -> None:
    """What a call reserves for its answer is at least what the render holds (bytes and
    base64), for grain and flat images, so the bound is a bound."""
    from engine.emulator._generate import RenderJob

    for grain in (True, False):
        job = RenderJob(
            model="m",
            instruction="a ceramic mug on an oak table",
            base=None,
            base_sha256=b"",
            width=256,
            height=256,
            seed=1,
            grain=grain,
        )
        result = job.run()
        assert len(result.data) + len(result.b64) <= job.estimated_bytes()
