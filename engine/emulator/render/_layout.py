"""Where objects go and how labels and text are drawn."""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from typing import Any

from PIL import (
    Image,
    ImageDraw,
    ImageFont,
    ImageStat,
)

from engine.emulator.render._drawing import KINDS, UNKNOWN_KIND, _lw
from engine.emulator.render._model import _Background, _Canvas, _clip_box, _new_id, _shade, _Spec
from engine.emulator.render._vocabulary import (
    BG_JITTER,
    CAPTION_MAX_CHARS,
    COLOURS,
    FONT_MIN_SIZE,
    GRADIENT_SAMPLES,
    GROUND_Y,
    HALF,
    LABEL_BOX_PALETTE,
    LABEL_FONT_FRACTION,
    LABEL_FONT_MAX_FRACTION,
    MID_Y,
    OBJECT_BASE_FRACTION,
    ON_SCALE,
    OUTLINE_SHADE,
    POSITION_JITTER,
    RGB,
    SHAPE_PALETTE,
    SKY_Y,
    STAR_COLOUR,
    STAR_COUNT,
    STAR_SKY_FRACTION,
    SURFACE_DEFAULT,
    SURFACE_LEVEL,
    TEXT_DARK,
    TEXT_LIGHT,
    TEXT_LUMA_SPLIT,
    TEXT_MAX_CHARS,
    FBox,
    Font,
    Pos,
)

# =========================================================================== layout & drawing


def _object_size(spec: _Spec, width: int, height: int) -> tuple[float, float]:
    kind = KINDS.get(spec.kind or "", UNKNOWN_KIND)
    base = OBJECT_BASE_FRACTION * min(width, height) * kind.scale * spec.scale
    return base * kind.aspect[0], base * kind.aspect[1]


def _region(pos: Pos, width: int, height: int) -> FBox:
    """Half of the canvas implied by a position word, so 'left' stays in the left half."""
    fx, fy = pos
    x0, x1 = 0.0, float(width)
    y0, y1 = 0.0, float(height)
    if fx is not None and fx < HALF:
        x1 = width * HALF
    elif fx is not None and fx > HALF:
        x0 = width * HALF
    if fy is not None and fy < HALF:
        y1 = height * HALF
    elif fy is not None and fy > HALF:
        y0 = height * HALF
    return (x0, y0, x1, y1)


def _fit(cx: float, cy: float, bw: float, bh: float, region: FBox) -> FBox:
    """Shrink and shift a centred box until it lies inside region."""
    rw, rh = region[2] - region[0], region[3] - region[1]
    scale = min(1.0, 0.96 * rw / max(bw, 1.0), 0.96 * rh / max(bh, 1.0))
    bw, bh = bw * scale, bh * scale
    cx = min(max(cx, region[0] + bw / 2), region[2] - bw / 2)
    cy = min(max(cy, region[1] + bh / 2), region[3] - bh / 2)
    return (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)


def _default_centre(kind: str | None, index: int, total: int) -> tuple[float, float]:
    band = KINDS.get(kind or "", UNKNOWN_KIND).band
    if kind == "sun":
        return (0.78, SKY_Y)
    if kind == "moon":
        return (0.22, SKY_Y)
    x = (index + 1) / (total + 1)
    return (x, SKY_Y if band == "sky" else GROUND_Y if band == "ground" else MID_Y)


def _layout(
    specs: Sequence[_Spec], width: int, height: int, rng: random.Random
) -> list[tuple[_Spec, FBox]]:
    """Boxes for every copy of every object: explicit positions, auto slots, 'on' relations."""
    boxes: dict[int, list[FBox]] = {}
    free = [
        i
        for i, s in enumerate(specs)
        if s.pos == (None, None) and s.on is None and s.kind not in ("sun", "moon")
    ]
    for i, spec in enumerate(specs):
        if spec.on is not None:
            continue
        bw, bh = _object_size(spec, width, height)
        if i in free:
            slot = free.index(i)
            fx, fy = _default_centre(spec.kind, slot, len(free))
        else:
            dx, dy = _default_centre(spec.kind, 0, 1)
            fx = spec.pos[0] if spec.pos[0] is not None else dx
            fy = spec.pos[1] if spec.pos[1] is not None else dy
        fx += rng.uniform(-POSITION_JITTER, POSITION_JITTER)
        fy += rng.uniform(-POSITION_JITTER, POSITION_JITTER)
        region = (0.0, 0.0, float(width), float(height))
        if spec.anchored:
            # No jitter: it belongs exactly on its anchor.
            fx = spec.pos[0] if spec.pos[0] is not None else fx
            fy = spec.pos[1] if spec.pos[1] is not None else fy
        else:
            region = _region(spec.pos, width, height)
        if i in free and len(free) > 1:
            slot_w = width / len(free)
            region = (
                max(region[0], slot_w * free.index(i)),
                region[1],
                min(region[2], slot_w * (free.index(i) + 1)),
                region[3],
            )
        boxes[i] = _copies(spec, fx * width, fy * height, bw, bh, region)
    for _ in range(len(specs)):
        for i, spec in enumerate(specs):
            if spec.on is None or i in boxes or spec.on not in boxes:
                continue
            support = boxes[spec.on][0]
            level = SURFACE_LEVEL.get(specs[spec.on].kind or "", SURFACE_DEFAULT)
            bw, bh = _object_size(spec, width, height)
            sw = support[2] - support[0]
            if bw > sw * ON_SCALE * 1.6:
                shrink = sw * ON_SCALE * 1.6 / bw
                bw, bh = bw * shrink, bh * shrink
            cx = (support[0] + support[2]) / 2
            bottom = support[1] + level * (support[3] - support[1])
            region = (0.0, 0.0, float(width), float(height))
            boxes[i] = _copies(spec, cx, bottom - bh / 2, bw, bh, region)
    for i, spec in enumerate(specs):
        if i not in boxes:  # cyclic or dangling relation: fall back to the centre
            bw, bh = _object_size(spec, width, height)
            boxes[i] = _copies(
                spec, width / 2, height * MID_Y, bw, bh, (0.0, 0.0, float(width), float(height))
            )
    order = sorted(range(len(specs)), key=lambda i: (specs[i].on is not None, boxes[i][0][3]))
    return [(specs[i], box) for i in order for box in boxes[i]]


def _copies(spec: _Spec, cx: float, cy: float, bw: float, bh: float, region: FBox) -> list[FBox]:
    n = spec.count
    if n == 1:
        return [_fit(cx, cy, bw, bh, region)]
    rw = region[2] - region[0]
    shrink = min(1.0, rw / (bw * n * 1.05))
    bw, bh = bw * shrink, bh * shrink
    step = bw * 1.05
    left = min(
        max(cx - step * (n - 1) / 2, region[0] + bw / 2), region[2] - bw / 2 - step * (n - 1)
    )
    sub = (region[0], region[1], region[2], region[3])
    return [_fit(left + k * step, cy, bw, bh, sub) for k in range(n)]


def _colour_word(colour: RGB) -> str:
    return min(
        COLOURS,
        key=lambda name: sum((a - b) ** 2 for a, b in zip(COLOURS[name], colour, strict=True)),
    )


def _where(box: FBox, size: tuple[int, int]) -> str:
    cx = (box[0] + box[2]) / 2 / size[0]
    cy = (box[1] + box[3]) / 2 / size[1]
    horizontal = "left" if cx < 0.4 else "right" if cx > 0.6 else ""
    vertical = "top" if cy < 0.4 else "bottom" if cy > 0.6 else ""
    if horizontal and vertical:
        return f"{'upper' if vertical == 'top' else 'lower'} {horizontal}"
    return horizontal or vertical or "center"


def _font(size: float) -> Font:
    # load_default(size=...) is the bundled FreeType font: no font files needed, and cheap to load.
    return ImageFont.load_default(size=max(FONT_MIN_SIZE, int(size)))


def _fit_text(text: str, max_width: float, size: float) -> tuple[Font, str]:
    font = _font(size)
    width = font.getlength(text)
    if width > max_width > 0:
        font = _font(max(FONT_MIN_SIZE, size * max_width / width))
        while len(text) > 1 and font.getlength(text) > max_width:
            text = text[: max(1, len(text) - max(1, len(text) // 10) - 3)].rstrip() + "..."
            if len(text) <= 4:
                break
    return font, text


def _contrast(img: Image.Image, box: FBox) -> tuple[RGB, RGB]:
    """Text fill and outline colours that read well over the given region."""
    clipped = _clip_box(box, img.size)
    if clipped is None:
        return TEXT_DARK, TEXT_LIGHT
    mean = ImageStat.Stat(img.crop(clipped).convert("L")).mean[0]
    return (TEXT_DARK, TEXT_LIGHT) if mean > TEXT_LUMA_SPLIT else (TEXT_LIGHT, TEXT_DARK)


def _draw_text(
    img: Image.Image, text: str, cx: float, cy: float, size: float, max_width: float
) -> FBox:
    font, text = _fit_text(text, max_width, size)
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = draw.textbbox((cx, cy), text, font=font, anchor="mm")
    stroke = max(1, int(getattr(font, "size", size) / 14))
    fill, outline = _contrast(img, (left, top, right, bottom))
    draw.text(
        (cx, cy), text, font=font, fill=fill, anchor="mm", stroke_width=stroke, stroke_fill=outline
    )
    return (left - stroke, top - stroke, right + stroke, bottom + stroke)


def _draw_label(img: Image.Image, box: FBox, label: str, above: bool) -> FBox:
    """Caption under (or above) an object; returns the object+label box."""
    width, height = img.size
    bh = box[3] - box[1]
    size = min(
        max(FONT_MIN_SIZE, bh * LABEL_FONT_FRACTION),
        max(FONT_MIN_SIZE, height * LABEL_FONT_MAX_FRACTION),
    )
    cx = (box[0] + box[2]) / 2
    half_room = min(cx, width - cx) * 2
    max_width = max(box[2] - box[0], min(half_room, (box[2] - box[0]) * 1.8))
    cy = box[1] - size * 0.75 if above else box[3] + size * 0.75
    if cy + size * 0.6 > height or cy - size * 0.6 < 0:
        cy = box[3] + size * 0.75 if above else box[1] - size * 0.75
    text_box = _draw_text(img, label, cx, cy, size, max_width)
    return (
        min(box[0], text_box[0]),
        min(box[1], text_box[1]),
        max(box[2], text_box[2]),
        max(box[3], text_box[3]),
    )


def _draw_label_box(
    img: Image.Image, draw: ImageDraw.ImageDraw, box: FBox, colour: RGB, label: str
) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    radius = max(1, int(min(w, h) * 0.15))
    draw.rounded_rectangle(
        box, radius=radius, fill=colour, outline=_shade(colour, OUTLINE_SHADE), width=_lw(box)
    )
    _draw_text(img, label, (x0 + x1) / 2, (y0 + y1) / 2, h * 0.22, w * 0.84)


def _object_event(
    canvas: _Canvas, spec: _Spec, box: FBox, oid: int | None = None
) -> dict[str, Any]:
    kind = KINDS.get(spec.kind or "", UNKNOWN_KIND)
    if spec.colour is not None:
        colour = spec.colour
    elif spec.kind is None:
        colour = LABEL_BOX_PALETTE[zlib.crc32(spec.label.encode()) % len(LABEL_BOX_PALETTE)]
    else:
        colour = kind.colour or canvas.rng.choice(SHAPE_PALETTE)
    return {
        "e": "obj",
        "id": _new_id(canvas) if oid is None else oid,
        "k": spec.kind or "box",
        "l": spec.label[:TEXT_MAX_CHARS],
        "c": list(colour),
        "b": [round(v, 1) for v in box],
        "la": int(spec.on is not None),
        "cn": _colour_word(colour) if spec.colour is not None and not kind.geometric else "",
    }


def _caption_text(text: str) -> str:
    clean = " ".join(text.split())
    if len(clean) > CAPTION_MAX_CHARS:
        clean = clean[: CAPTION_MAX_CHARS - 3].rstrip() + "..."
    return clean


def _background_event(
    kind: str, bg: _Background, rng: random.Random, size: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Freeze a background (seeded jitter and star seed included) into a replayable event."""
    stops = [
        [t, *(max(0, min(255, v + rng.randint(-BG_JITTER, BG_JITTER))) for v in colour)]
        for t, colour in bg.stops
    ]
    event: dict[str, Any] = {
        "e": kind,
        "n": bg.name,
        "st": stops,
        "sd": rng.getrandbits(31) if bg.stars else -1,
    }
    if size is not None:
        event["w"], event["h"] = size
    return event


def _render_stops(
    stops: Sequence[Sequence[float]], star_seed: int, width: int, height: int
) -> Image.Image:
    """Vertical multi-stop gradient (one Python loop over rows, then a C-level stretch)."""
    # Sampling at most GRADIENT_SAMPLES rows keeps the Python loop short; Pillow stretches it.
    rows = min(height, GRADIENT_SAMPLES)
    column = bytearray()
    k = 0
    for y in range(rows):
        t = (y + 0.5) / rows
        while k + 1 < len(stops) - 1 and t > stops[k + 1][0]:
            k += 1
        a, b = stops[k], stops[min(k + 1, len(stops) - 1)]
        f = 0.0 if b[0] <= a[0] else min(1.0, max(0.0, (t - a[0]) / (b[0] - a[0])))
        column += bytes(round(a[c] + (b[c] - a[c]) * f) for c in (1, 2, 3))
    img = Image.frombytes("RGB", (1, rows), bytes(column))
    if rows != height:
        img = img.resize((1, height), Image.Resampling.BILINEAR)
    img = img.resize((width, height), Image.Resampling.NEAREST)
    if star_seed >= 0:
        stars = random.Random(star_seed)
        draw = ImageDraw.Draw(img)
        r = max(1.0, min(width, height) / 400)
        for _ in range(STAR_COUNT):
            sx = stars.uniform(0, width)
            sy = stars.uniform(0, height * STAR_SKY_FRACTION)
            radius = r * stars.uniform(0.5, 1.5)
            draw.ellipse((sx - radius, sy - radius, sx + radius, sy + radius), fill=STAR_COLOUR)
    return img


def _draw_object(
    img: Image.Image,
    kind: str,
    shape: FBox,
    colour: RGB,
    label: str,
    above: bool,
    *,
    with_label: bool = True,
) -> FBox:
    draw = ImageDraw.Draw(img)
    if kind == "box":
        _draw_label_box(img, draw, shape, colour, label)
        return shape
    spec = KINDS[kind]
    spec.draw(img, draw, shape, colour)
    if spec.geometric or not with_label:
        return shape
    return _draw_label(img, shape, label, above)
