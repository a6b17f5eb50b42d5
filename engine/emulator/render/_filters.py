"""Whole-image filters (blur, sepia, pixelate, vignette, ...)."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from PIL import (
    Image,
    ImageChops,
    ImageEnhance,
    ImageFilter,
    ImageOps,
)

from engine.emulator.render._vocabulary import (
    BLUR_FRACTION,
    BLUR_HALF_MIN_SIDE,
    BLUR_MIN_RADIUS,
    BRIGHTER_GAIN,
    BRIGHTER_LIFT,
    CONTRAST_DOWN,
    CONTRAST_UP,
    COOL_MATRIX,
    DARKER_GAIN,
    DESATURATE,
    PIXEL_BLOCKS,
    POSTERIZE_BITS,
    SATURATE,
    SEPIA_MATRIX,
    SHARPEN,
    VIGNETTE_DEPTH,
    WARM_MATRIX,
)

# --------------------------------------------------------------------------- filters


@lru_cache(maxsize=8)
def _gain_lut(gain: float, lift: float) -> tuple[int, ...]:
    return tuple(min(255, max(0, round(v * gain + lift))) for v in range(256)) * 3


def _vignette(img: Image.Image) -> Image.Image:
    radial = Image.radial_gradient("L").resize(img.size, Image.Resampling.BILINEAR)
    shade = radial.point(lambda v: round(255 - v * VIGNETTE_DEPTH))
    return ImageChops.multiply(img, Image.merge("RGB", (shade, shade, shade)))


def _sketch(img: Image.Image) -> Image.Image:
    edges = img.convert("L").filter(ImageFilter.FIND_EDGES)
    lines = ImageOps.invert(ImageOps.autocontrast(edges))
    return Image.merge("RGB", (lines, lines, lines))


def _pixelate(img: Image.Image) -> Image.Image:
    w, h = img.size
    block = max(2, min(w, h) // PIXEL_BLOCKS)
    small = img.resize((max(1, w // block), max(1, h // block)), Image.Resampling.BOX)
    return small.resize((w, h), Image.Resampling.NEAREST)


def _blur(img: Image.Image) -> Image.Image:
    """Gaussian blur done at half resolution: looks the same, costs a quarter."""
    w, h = img.size
    radius = max(BLUR_MIN_RADIUS, min(w, h) * BLUR_FRACTION)
    if min(w, h) < BLUR_HALF_MIN_SIDE:
        return img.filter(ImageFilter.GaussianBlur(radius))
    half = img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BOX)
    return half.filter(ImageFilter.GaussianBlur(radius / 2)).resize(
        (w, h), Image.Resampling.BILINEAR
    )


def _apply_filter(name: str, img: Image.Image) -> Image.Image:
    """Whole-image look changes; all C-level Pillow ops."""
    ops: dict[str, Callable[[Image.Image], Image.Image]] = {
        "grayscale": lambda im: ImageOps.grayscale(im).convert("RGB"),
        "sepia": lambda im: im.convert("RGB", SEPIA_MATRIX),
        "invert": ImageOps.invert,
        "blur": _blur,
        "sharpen": lambda im: im.filter(SHARPEN),
        "brighter": lambda im: im.point(_gain_lut(BRIGHTER_GAIN, BRIGHTER_LIFT)),
        "darker": lambda im: im.point(_gain_lut(DARKER_GAIN, 0.0)),
        "night": lambda im: im.point(_gain_lut(DARKER_GAIN, 0.0)).convert("RGB", COOL_MATRIX),
        "warmer": lambda im: im.convert("RGB", WARM_MATRIX),
        "cooler": lambda im: im.convert("RGB", COOL_MATRIX),
        "contrast_up": lambda im: ImageEnhance.Contrast(im).enhance(CONTRAST_UP),
        "contrast_down": lambda im: ImageEnhance.Contrast(im).enhance(CONTRAST_DOWN),
        "saturate": lambda im: ImageEnhance.Color(im).enhance(SATURATE),
        "desaturate": lambda im: ImageEnhance.Color(im).enhance(DESATURATE),
        "pixelate": _pixelate,
        "posterize": lambda im: ImageOps.posterize(im, POSTERIZE_BITS),
        "vignette": _vignette,
        "sketch": _sketch,
        "emboss": lambda im: im.filter(ImageFilter.EMBOSS),
    }
    return ops[name](img)
