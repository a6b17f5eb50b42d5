"""Pixel heuristics for images without our metadata: backgrounds, masks, edge colours."""

from __future__ import annotations

from functools import lru_cache

from PIL import (
    Image,
    ImageChops,
    ImageDraw,
    ImageFilter,
    ImageOps,
    ImageStat,
)

from engine.emulator.render._drawing import KINDS
from engine.emulator.render._layout import _draw_object
from engine.emulator.render._model import _clip_box, _mix, _Obj, _rgb, _shade
from engine.emulator.render._vocabulary import (
    BG_MATCH_HIGH,
    BG_MATCH_LOW,
    COLOUR_MATCH,
    FG_THRESHOLD,
    INPAINT_STRIP,
    MASK_DILATE,
    RGB,
    TEXT_LIGHT,
    FBox,
    IBox,
)


def _edge_colour(img: Image.Image) -> RGB:
    w, h = img.size
    left = img.crop((0, 0, 1, h)).resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
    right = img.crop((w - 1, 0, w, h)).resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
    if not (isinstance(left, tuple) and isinstance(right, tuple)):
        return TEXT_LIGHT
    return _mix(_rgb([int(v) for v in left]), _rgb([int(v) for v in right]), 0.5)


# --------------------------------------------------------------------------- pixel heuristics


def _max_channel(img: Image.Image) -> Image.Image:
    r, g, b = img.split()
    return ImageChops.lighter(ImageChops.lighter(r, g), b)


@lru_cache(maxsize=8)
def _ramp_lut(low: int, high: int, rising: bool) -> tuple[int, ...]:
    """0..255 LUT: 0 below low, 255 above high (or the reverse), linear in between."""
    out = []
    for v in range(256):
        t = 0.0 if v <= low else 1.0 if v >= high else (v - low) / (high - low)
        out.append(round(255 * (t if rising else 1 - t)))
    return tuple(out)


def _background_estimate(img: Image.Image) -> Image.Image:
    """Per-row background colour from the left and right borders (our gradients are vertical)."""
    w, h = img.size
    strip = max(1, min(INPAINT_STRIP, w // 4))
    left = img.crop((0, 0, strip, h)).resize((1, h), Image.Resampling.BOX)
    right = img.crop((w - strip, 0, w, h)).resize((1, h), Image.Resampling.BOX)
    return ImageChops.add(left, right, 2.0).resize((w, h), Image.Resampling.NEAREST)


def _background_mask(img: Image.Image) -> Image.Image:
    """Soft mask, 255 where a pixel looks like the background estimate."""
    diff = _max_channel(ImageChops.difference(img, _background_estimate(img)))
    return diff.point(_ramp_lut(BG_MATCH_LOW, BG_MATCH_HIGH, False))


@lru_cache(maxsize=2)
def _gradient(horizontal: bool) -> Image.Image:
    ramp = Image.linear_gradient("L")
    return ramp.transpose(Image.Transpose.TRANSPOSE) if horizontal else ramp


def _inpaint_estimate(img: Image.Image, box: IBox) -> Image.Image:
    """Guess what lies behind box by interpolating the pixels just outside its four sides."""
    w, h = img.size
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    k = INPAINT_STRIP

    def edge(crop: IBox, size: tuple[int, int]) -> Image.Image | None:
        c = _clip_box(crop, (w, h))
        if c is None:
            return None
        return (
            img.crop(c)
            .resize(size, Image.Resampling.BOX)
            .resize((bw, bh), Image.Resampling.NEAREST)
        )

    top = edge((x0, y0 - k, x1, y0), (bw, 1)) if y0 > 0 else None
    bottom = edge((x0, y1, x1, y1 + k), (bw, 1)) if y1 < h else None
    left = edge((x0 - k, y0, x0, y1), (1, bh)) if x0 > 0 else None
    right = edge((x1, y0, x1 + k, y1), (1, bh)) if x1 < w else None

    def between(
        a: Image.Image | None, b: Image.Image | None, horizontal: bool
    ) -> Image.Image | None:
        if a is None or b is None:
            return a or b
        return Image.composite(
            b, a, _gradient(horizontal).resize((bw, bh), Image.Resampling.BILINEAR)
        )

    vertical = between(top, bottom, False)
    horizontal = between(left, right, True)
    if vertical is not None and horizontal is not None:
        return Image.blend(vertical, horizontal, 0.5)
    return vertical or horizontal or Image.new("RGB", (bw, bh), _edge_colour(img))


def _foreground_mask(patch: Image.Image, estimate: Image.Image) -> Image.Image:
    diff = _max_channel(ImageChops.difference(patch, estimate))
    return diff.point(_ramp_lut(FG_THRESHOLD // 2, FG_THRESHOLD, True))


def _expand(box: IBox, margin: int, size: tuple[int, int]) -> IBox:
    clipped = _clip_box((box[0] - margin, box[1] - margin, box[2] + margin, box[3] + margin), size)
    return clipped if clipped is not None else box


def _colour_box(img: Image.Image, colour: RGB, region: FBox | None) -> IBox | None:
    """Bounding box of pixels close to colour (optionally inside region)."""
    box = _clip_box(region, img.size) if region is not None else (0, 0, img.size[0], img.size[1])
    if box is None:
        return None
    crop = img.crop(box)
    diff = _max_channel(ImageChops.difference(crop, Image.new("RGB", crop.size, colour)))
    found = diff.point(_ramp_lut(COLOUR_MATCH, COLOUR_MATCH + 1, False)).getbbox()
    if found is None:
        return None
    return (found[0] + box[0], found[1] + box[1], found[2] + box[0], found[3] + box[1])


def _object_mask(obj: _Obj, region: IBox) -> Image.Image:
    """Mask (region-sized) of the pixels an object covers: its redrawn silhouette plus label."""
    rw, rh = region[2] - region[0], region[3] - region[1]
    ox, oy = region[0], region[1]
    if obj.kind not in KINDS and obj.kind != "box":
        mask = Image.new("L", (rw, rh))
        ImageDraw.Draw(mask).rectangle(
            (obj.box[0] - ox, obj.box[1] - oy, obj.box[2] - ox - 1, obj.box[3] - oy - 1), fill=255
        )
        return mask
    scratch = Image.new("RGB", (rw, rh))
    s = obj.shape
    local = (s[0] - ox, s[1] - oy, s[2] - ox, s[3] - oy)
    _draw_object(scratch, obj.kind, local, obj.colour, obj.label, obj.above, with_label=False)
    mask = _max_channel(scratch).point(_ramp_lut(0, 1, True))
    draw = ImageDraw.Draw(mask)
    bx0, by0, bx1, by1 = obj.box[0] - ox, obj.box[1] - oy, obj.box[2] - ox - 1, obj.box[3] - oy - 1
    if by1 > local[3] + 1:
        draw.rectangle((bx0, local[3], bx1, by1), fill=255)
    if by0 < local[1] - 1:
        draw.rectangle((bx0, by0, bx1, local[1]), fill=255)
    return mask.filter(ImageFilter.MaxFilter(MASK_DILATE))


def _recolour(img: Image.Image, colour: RGB, mask: Image.Image) -> Image.Image:
    """Repaint masked pixels in colour, keeping their light and shade."""
    gray = img.convert("L")
    mean = ImageStat.Stat(gray, mask).mean[0] if mask.getbbox() else 128.0
    mid = int(min(max(mean, 16), 239))
    painted = ImageOps.colorize(
        gray, _shade(colour, -0.7), _shade(colour, 0.7), colour, 0, 255, mid
    )
    return Image.composite(painted, img, mask)
