"""Region edits: change only this part, and leave every other pixel of the image alone.

The Gemini image models regenerate the whole frame on every edit. A region edit does not let
them: the engine crops the head image around the region (with context, at a ratio the model
draws), sends the crop with the instruction, scales the answer back onto the crop and composites
it into the head image through the region's mask, feathered. Every pixel farther than the
feather from the mask is the head image's own, byte for byte once decoded.

What the session keeps (the turn's model Content): the model's raw answer for the crop as a
thought image (its signature as received), the answer's text, and the composite as the turn's
image. The history of later requests therefore carries the composite — the picture as it now
is, which every later edit, whole-frame or region, must start from — with Google's documented
placeholder signature, since no model drew those exact bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from sessions import Blob, ConfigError, Content, ModelSpec, Part

__all__ = [
    "Region",
    "RegionPlan",
    "composite",
    "drift",
    "openai_mask",
    "plan_region",
    "region_model_content",
]

PLACEHOLDER_SIGNATURE = b"skip_thought_signature_validator"


@dataclass(frozen=True, slots=True)
class Region:
    """Where an edit may change the image: a box `(x0, y0, x1, y1)` in pixels of the head
    image (x1, y1 exclusive), or a mask image (white: may change, black: keep; grey edges
    blend). `feather` pixels of soft seam around it; `margin` the context around the region
    sent with the crop (a share of the region's size, at least 32 px)."""

    box: tuple[int, int, int, int] | None = None
    mask: bytes | None = None
    feather: int = 8
    margin: float = 0.5

    def __post_init__(self) -> None:
        if (self.box is None) == (self.mask is None):
            raise ConfigError("a region is a box or a mask (one of them)")
        if not 0 <= self.feather <= 256:
            raise ConfigError("region feather must be within 0..256 pixels")
        if not 0 <= self.margin <= 4:
            raise ConfigError("region margin must be within 0..4 (a share of its size)")

    @classmethod
    def from_box(cls, x0: int, y0: int, x1: int, y1: int, *, feather: int = 8) -> Region:
        """A box region."""
        return cls(box=(int(x0), int(y0), int(x1), int(y1)), feather=feather)

    @classmethod
    def from_mask(cls, data: bytes, *, feather: int = 8) -> Region:
        """A mask region (PNG or any image Pillow reads; luminance is the mask)."""
        return cls(mask=bytes(data), feather=feather)


@dataclass(frozen=True, slots=True)
class RegionPlan:
    """A region worked out against the head image: the mask, the crop sent, its ratio."""

    base: bytes  # the head image, as stored
    width: int
    height: int
    mask: bytes  # an L-mode PNG of the base's size (255: may change)
    bbox: tuple[int, int, int, int]  # the mask's extent
    crop: tuple[int, int, int, int]  # what is sent (bbox + context, at `ratio`)
    ratio: str
    crop_png: bytes

    def instruction(self, text: str) -> str:
        """The turn's text as sent: the edit, and that the rest of the crop is context."""
        left, top = self.crop[0], self.crop[1]
        x0, y0, x1, y1 = (
            self.bbox[0] - left,
            self.bbox[1] - top,
            self.bbox[2] - left,
            self.bbox[3] - top,
        )
        return (
            f"{text}\n\n(This image is a crop of a larger picture. Make the change only inside "
            f"the area from ({x0}, {y0}) to ({x1}, {y1}) in this crop's pixels; everything "
            "else is context and stays exactly as it is. Keep the framing and size.)"
        )


def _open(data: bytes, what: str) -> object:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ConfigError(f"{what} cannot be read as an image: {exc}") from None
    return image


def _ratio_value(ratio: str) -> float:
    w, h = ratio.split(":")
    return int(w) / int(h)


def _fit_crop(
    bbox: tuple[int, int, int, int], width: int, height: int, margin: float, ratio: float
) -> tuple[int, int, int, int]:
    """A rectangle around `bbox` with context, of aspect `ratio`, inside the image (as close
    as the image allows)."""
    x0, y0, x1, y1 = bbox
    bw, bh = x1 - x0, y1 - y0
    pad = max(32, int(margin * max(bw, bh)))
    cw, ch = bw + 2 * pad, bh + 2 * pad
    if cw / ch < ratio:
        cw = round(ch * ratio)
    else:
        ch = round(cw / ratio)
    if cw > width:
        cw, ch = width, round(width / ratio)
    if ch > height:
        ch, cw = height, round(height * ratio)
    cw, ch = max(1, min(cw, width)), max(1, min(ch, height))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(min(max(0, round(cx - cw / 2)), width - cw))
    top = int(min(max(0, round(cy - ch / 2)), height - ch))
    return left, top, left + cw, top + ch


def plan_region(region: Region, base: Blob, spec: ModelSpec, fixed_ratio: str | None) -> RegionPlan:
    """Check `region` against the head image and work out the crop (ConfigError, before
    anything is sent, for a box outside the image, an empty or unreadable mask)."""
    from PIL import Image, ImageDraw

    picture = _open(base.data, "the head image")
    assert isinstance(picture, Image.Image)
    width, height = picture.size
    if region.box is not None:
        x0, y0, x1, y1 = region.box
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise ConfigError(
                f"region box {region.box} is not inside the {width}x{height} head image "
                "(x0 < x1 <= width, y0 < y1 <= height)"
            )
        mask = Image.new("L", (width, height), 0)
        ImageDraw.Draw(mask).rectangle((x0, y0, x1 - 1, y1 - 1), fill=255)
    else:
        assert region.mask is not None
        given = _open(region.mask, "the region mask")
        assert isinstance(given, Image.Image)
        mask = given.convert("L")
        if mask.size != (width, height):
            mask = mask.resize((width, height), Image.Resampling.BILINEAR)
    bbox = mask.getbbox()
    if bbox is None:
        raise ConfigError("the region mask is all black: nothing may change")
    ratios = (fixed_ratio,) if fixed_ratio else spec.ratios
    wanted = (bbox[2] - bbox[0]) / max(1, bbox[3] - bbox[1])
    ratio = min(ratios, key=lambda r: abs(_ratio_value(r) - wanted))
    crop = _fit_crop(bbox, width, height, region.margin, _ratio_value(ratio))
    out = io.BytesIO()
    picture.convert("RGB").crop(crop).save(out, "PNG")
    mask_png = io.BytesIO()
    mask.save(mask_png, "PNG")
    return RegionPlan(
        base=base.data,
        width=width,
        height=height,
        mask=mask_png.getvalue(),
        bbox=bbox,
        crop=crop,
        ratio=ratio,
        crop_png=out.getvalue(),
    )


def composite(plan: RegionPlan, answer: bytes, feather: int) -> tuple[bytes, int]:
    """The head image with the answer (for the crop) blended in through the feathered mask;
    and how many pixels outside the feathered mask differ from the head image (0 here by
    construction; a provider that edits the full frame itself is checked the same way)."""
    from PIL import Image, ImageChops, ImageFilter

    base = _open(plan.base, "the head image")
    edit = _open(answer, "the model's answer")
    mask = _open(plan.mask, "the mask")
    assert isinstance(base, Image.Image) and isinstance(edit, Image.Image)
    assert isinstance(mask, Image.Image)
    mode = "RGBA" if "A" in base.getbands() else "RGB"
    base = base.convert(mode)
    x0, y0, x1, y1 = plan.crop
    patch = edit.convert(mode).resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS)
    edited = base.copy()
    edited.paste(patch, (x0, y0))
    # A box blur of radius f reaches exactly f pixels: beyond that the mask stays 0 and the
    # head image's pixels are taken as they are.
    alpha = mask.filter(ImageFilter.BoxBlur(feather)) if feather else mask
    # Inside the mask itself the edit is taken whole (the blur only softens the outside edge).
    alpha = ImageChops.lighter(alpha, mask)
    result = Image.composite(edited, base, alpha)
    out = io.BytesIO()
    result.save(out, "PNG")
    outside = alpha.point(lambda v: 255 if v == 0 else 0)
    drift = ImageChops.difference(result.convert(mode), base).convert("L")
    drifted = ImageChops.multiply(drift.point(lambda v: 255 if v else 0), outside)
    histogram = drifted.histogram()
    return out.getvalue(), sum(histogram[1:])


def openai_mask(plan: RegionPlan) -> bytes:
    """The region as OpenAI's edit mask: the image's size, fully transparent where it may
    change, opaque where it must stay."""
    from PIL import Image

    mask = _open(plan.mask, "the mask")
    assert isinstance(mask, Image.Image)
    out = Image.new("RGBA", mask.size, (0, 0, 0, 255))
    out.putalpha(mask.point(lambda v: 0 if v else 255))
    data = io.BytesIO()
    out.save(data, "PNG")
    return data.getvalue()


def drift(plan: RegionPlan, answer: bytes, feather: int) -> int:
    """Pixels farther than the feather from the region that the answer changed (an answer of
    another size is compared scaled to the image's)."""
    from PIL import Image, ImageChops, ImageFilter

    base = _open(plan.base, "the head image")
    edit = _open(answer, "the model's answer")
    mask = _open(plan.mask, "the mask")
    assert isinstance(base, Image.Image) and isinstance(edit, Image.Image)
    assert isinstance(mask, Image.Image)
    base = base.convert("RGB")
    edit = edit.convert("RGB")
    if edit.size != base.size:
        edit = edit.resize(base.size, Image.Resampling.LANCZOS)
    reach = mask.filter(ImageFilter.BoxBlur(feather)) if feather else mask
    outside = reach.point(lambda v: 255 if v == 0 else 0)
    changed = ImageChops.difference(edit, base).convert("L").point(lambda v: 255 if v else 0)
    return sum(ImageChops.multiply(changed, outside).histogram()[1:])


def region_model_content(answer: Content, composite_png: bytes) -> Content:
    """The turn's model Content: the raw answer's images as thought images (signatures as
    received), its text, and the composite as the turn's image (placeholder signature)."""
    parts: list[Part] = []
    for part in answer.parts:
        if part.inline_data is not None and not part.thought:
            parts.append(Part(inline_data=part.inline_data, thought=True,
                              thought_signature=part.thought_signature))  # fmt: skip
        else:
            parts.append(part)
    parts.append(
        Part(
            inline_data=Blob(mime_type="image/png", data=composite_png),
            thought_signature=PLACEHOLDER_SIGNATURE,
        )
    )
    return Content(role="model", parts=parts)
