"""The object drawers: one small function per kind of thing the renderer can draw."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from PIL import (
    Image,
    ImageDraw,
)

from engine.emulator.render._model import _clip_box, _shade
from engine.emulator.render._vocabulary import (
    BALL_STRIPE,
    BEAK_ORANGE,
    COFFEE_BROWN,
    DARK_GRAY,
    EYE_YELLOW,
    FLOWER_CENTRE,
    HUB_GRAY,
    INSECT_BODY,
    LAMP_METAL,
    LEAF_GREEN,
    NOSE_PINK,
    OUTLINE_SHADE,
    PAGE_CREAM,
    PUPIL,
    RGB,
    ROOF_RED,
    SAIL_EDGE,
    SAIL_WHITE,
    SCREEN_BLUE,
    SKIN,
    SNOW_WHITE,
    STRING_GRAY,
    TERRACOTTA,
    TROUSER_BLUE,
    TRUNK,
    TYRE,
    WINDOW_BLUE,
    FBox,
)

# --------------------------------------------------------------------------- object drawers

Drawer = Callable[[Image.Image, ImageDraw.ImageDraw, FBox, RGB], None]


@dataclass(frozen=True, slots=True)
class _Kind:
    draw: Drawer
    aspect: tuple[float, float] = (1.0, 1.0)
    scale: float = 1.0
    colour: RGB | None = None
    band: str = "mid"
    geometric: bool = False


def _pt(box: FBox, u: float, v: float) -> tuple[float, float]:
    return (box[0] + u * (box[2] - box[0]), box[1] + v * (box[3] - box[1]))


def _sub(box: FBox, u0: float, v0: float, u1: float, v1: float) -> FBox:
    return (*_pt(box, u0, v0), *_pt(box, u1, v1))


def _lw(box: FBox) -> int:
    return max(1, int(min(box[2] - box[0], box[3] - box[1]) * 0.03))


def _poly(box: FBox, *uv: tuple[float, float]) -> list[tuple[float, float]]:
    return [_pt(box, u, v) for u, v in uv]


def _draw_circle(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    d.ellipse(b, fill=c, outline=_shade(c, OUTLINE_SHADE), width=_lw(b))


def _draw_rect(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    d.rectangle(b, fill=c, outline=_shade(c, OUTLINE_SHADE), width=_lw(b))


def _draw_triangle(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    d.polygon(
        _poly(b, (0.5, 0), (1, 1), (0, 1)), fill=c, outline=_shade(c, OUTLINE_SHADE), width=_lw(b)
    )


def _draw_star(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    pts = []
    for k in range(10):
        r = 0.5 if k % 2 == 0 else 0.2
        a = -math.pi / 2 + k * math.pi / 5
        pts.append((0.5 + r * math.cos(a), 0.52 + r * math.sin(a)))
    d.polygon(_poly(b, *pts), fill=c, outline=_shade(c, OUTLINE_SHADE), width=_lw(b))


def _draw_heart(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    d.ellipse(_sub(b, 0, 0, 0.55, 0.55), fill=c)
    d.ellipse(_sub(b, 0.45, 0, 1, 0.55), fill=c)
    d.polygon(_poly(b, (0.03, 0.38), (0.97, 0.38), (0.5, 1)), fill=c)


def _draw_diamond(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    d.polygon(
        _poly(b, (0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)),
        fill=c,
        outline=_shade(c, OUTLINE_SHADE),
        width=_lw(b),
    )


def _regular(sides: int) -> Drawer:
    def draw(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
        cx, cy = _pt(b, 0.5, 0.5)
        r = min(b[2] - b[0], b[3] - b[1]) / 2
        d.regular_polygon(
            (cx, cy, r), sides, fill=c, outline=_shade(c, OUTLINE_SHADE), width=_lw(b)
        )

    return draw


def _draw_sun(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    cx, cy = _pt(b, 0.5, 0.5)
    w, h = b[2] - b[0], b[3] - b[1]
    for k in range(12):
        a = k * math.pi / 6
        d.line(
            (
                cx + 0.36 * w * math.cos(a),
                cy + 0.36 * h * math.sin(a),
                cx + 0.5 * w * math.cos(a),
                cy + 0.5 * h * math.sin(a),
            ),
            fill=c,
            width=_lw(b) * 2,
        )
    d.ellipse(_sub(b, 0.2, 0.2, 0.8, 0.8), fill=c, outline=_shade(c, -0.15), width=_lw(b))


def _draw_moon(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    box = _clip_box(b, img.size)
    if box is None:
        return
    w, h = box[2] - box[0], box[3] - box[1]
    mask = Image.new("L", (w, h))
    md = ImageDraw.Draw(mask)
    md.ellipse((0, 0, w - 1, h - 1), fill=255)
    md.ellipse((w * 0.3, -h * 0.1, w * 1.2, h * 0.9), fill=0)
    img.paste(c, box, mask)


def _draw_cloud(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    for u0, v0, u1, v1 in (
        (0, 0.35, 0.45, 1),
        (0.2, 0.05, 0.7, 0.9),
        (0.5, 0.25, 1, 1),
        (0.2, 0.55, 0.85, 1),
    ):
        d.ellipse(_sub(b, u0, v0, u1, v1), fill=c)


def _draw_tree(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    d.rectangle(_sub(b, 0.42, 0.55, 0.58, 1), fill=TRUNK)
    d.ellipse(_sub(b, 0.08, 0.18, 0.92, 0.72), fill=c, outline=_shade(c, -0.25), width=_lw(b))
    d.ellipse(_sub(b, 0.22, 0.0, 0.78, 0.45), fill=c)


def _draw_house(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    d.rectangle(
        _sub(b, 0.12, 0.42, 0.88, 1), fill=c, outline=_shade(c, OUTLINE_SHADE), width=_lw(b)
    )
    d.polygon(_poly(b, (0, 0.45), (0.5, 0.02), (1, 0.45)), fill=ROOF_RED)
    d.rectangle(_sub(b, 0.42, 0.68, 0.58, 1), fill=TRUNK)
    d.rectangle(_sub(b, 0.2, 0.55, 0.34, 0.69), fill=WINDOW_BLUE)
    d.rectangle(_sub(b, 0.66, 0.55, 0.8, 0.69), fill=WINDOW_BLUE)


def _draw_mug(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    lw = _lw(b)
    d.ellipse(_sub(b, 0.58, 0.3, 0.96, 0.78), outline=_shade(c, -0.15), width=lw * 4)
    body = _sub(b, 0.08, 0.12, 0.74, 1)
    d.rounded_rectangle(
        body,
        radius=max(1, int((body[2] - body[0]) * 0.1)),
        fill=c,
        outline=_shade(c, OUTLINE_SHADE),
        width=lw,
    )
    d.ellipse(_sub(b, 0.08, 0.06, 0.74, 0.2), fill=_shade(c, -0.45))


def _draw_cup(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    lw = _lw(b)
    d.ellipse(
        _sub(b, 0, 0.82, 1, 1), fill=_shade(c, 0.3), outline=_shade(c, OUTLINE_SHADE), width=lw
    )
    d.ellipse(_sub(b, 0.6, 0.38, 0.9, 0.7), outline=_shade(c, -0.15), width=lw * 3)
    d.polygon(
        _poly(b, (0.12, 0.3), (0.76, 0.3), (0.66, 0.88), (0.22, 0.88)),
        fill=c,
        outline=_shade(c, OUTLINE_SHADE),
        width=lw,
    )
    d.ellipse(_sub(b, 0.12, 0.25, 0.76, 0.36), fill=COFFEE_BROWN)


def _draw_table(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    dark = _shade(c, -0.25)
    d.rectangle(_sub(b, 0.06, 0.3, 0.14, 1), fill=dark)
    d.rectangle(_sub(b, 0.86, 0.3, 0.94, 1), fill=dark)
    d.rectangle(_sub(b, 0, 0.2, 1, 0.34), fill=c, outline=dark, width=_lw(b))


def _draw_chair(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    dark = _shade(c, -0.25)
    d.rectangle(_sub(b, 0.2, 0.0, 0.32, 0.6), fill=c, outline=dark)
    d.rectangle(_sub(b, 0.2, 0.6, 0.28, 1), fill=dark)
    d.rectangle(_sub(b, 0.72, 0.6, 0.8, 1), fill=dark)
    d.rectangle(_sub(b, 0.2, 0.5, 0.8, 0.62), fill=c, outline=dark)


def _draw_cat(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    lw = _lw(b)
    dark = _shade(c, -0.4)
    d.line(
        [_pt(b, 0.8, 0.9), _pt(b, 0.95, 0.7), _pt(b, 0.9, 0.45)],
        fill=c,
        width=lw * 3,
        joint="curve",
    )
    d.ellipse(_sub(b, 0.15, 0.45, 0.85, 1), fill=c, outline=dark, width=lw)
    d.polygon(_poly(b, (0.3, 0.28), (0.33, 0.02), (0.47, 0.18)), fill=c, outline=dark)
    d.polygon(_poly(b, (0.7, 0.28), (0.67, 0.02), (0.53, 0.18)), fill=c, outline=dark)
    d.ellipse(_sub(b, 0.28, 0.1, 0.72, 0.52), fill=c, outline=dark, width=lw)
    for u in (0.4, 0.6):
        d.ellipse(_sub(b, u - 0.045, 0.24, u + 0.045, 0.32), fill=EYE_YELLOW)
        d.ellipse(_sub(b, u - 0.015, 0.25, u + 0.015, 0.31), fill=PUPIL)
    d.polygon(_poly(b, (0.47, 0.36), (0.53, 0.36), (0.5, 0.4)), fill=NOSE_PINK)
    for v in (0.38, 0.42):
        d.line([_pt(b, 0.2, v), _pt(b, 0.44, 0.4)], fill=dark, width=max(1, lw // 2))
        d.line([_pt(b, 0.8, v), _pt(b, 0.56, 0.4)], fill=dark, width=max(1, lw // 2))


def _draw_dog(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    lw = _lw(b)
    dark = _shade(c, -0.4)
    d.line([_pt(b, 0.15, 0.55), _pt(b, 0.02, 0.35)], fill=c, width=lw * 3)
    for u in (0.15, 0.3, 0.55, 0.7):
        d.rectangle(_sub(b, u, 0.7, u + 0.09, 1), fill=c, outline=dark)
    d.ellipse(_sub(b, 0.08, 0.42, 0.82, 0.82), fill=c, outline=dark, width=lw)
    d.ellipse(_sub(b, 0.55, 0.1, 0.95, 0.5), fill=c, outline=dark, width=lw)
    d.ellipse(_sub(b, 0.5, 0.12, 0.64, 0.46), fill=dark)
    d.ellipse(_sub(b, 0.8, 0.3, 1.0, 0.46), fill=_shade(c, 0.3))
    d.ellipse(_sub(b, 0.93, 0.31, 0.99, 0.37), fill=PUPIL)
    d.ellipse(_sub(b, 0.74, 0.22, 0.79, 0.28), fill=PUPIL)


def _draw_bird(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    d.ellipse(_sub(b, 0.05, 0.3, 0.8, 0.85), fill=c)
    d.ellipse(_sub(b, 0.55, 0.15, 0.9, 0.5), fill=c)
    d.polygon(_poly(b, (0.88, 0.28), (1.0, 0.34), (0.88, 0.4)), fill=BEAK_ORANGE)
    d.ellipse(_sub(b, 0.2, 0.42, 0.6, 0.7), fill=_shade(c, -0.3))
    d.ellipse(_sub(b, 0.74, 0.26, 0.79, 0.31), fill=PUPIL)


def _draw_fish(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    d.polygon(_poly(b, (0, 0.15), (0.32, 0.5), (0, 0.85)), fill=_shade(c, -0.2))
    d.ellipse(_sub(b, 0.2, 0.15, 1, 0.85), fill=c, outline=_shade(c, OUTLINE_SHADE), width=_lw(b))
    d.ellipse(_sub(b, 0.78, 0.35, 0.85, 0.45), fill=PUPIL)


def _draw_flower(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    d.line([_pt(b, 0.5, 0.4), _pt(b, 0.5, 1)], fill=LEAF_GREEN, width=_lw(b) * 2)
    d.ellipse(_sub(b, 0.5, 0.62, 0.78, 0.74), fill=LEAF_GREEN)
    for k in range(6):
        a = k * math.pi / 3
        u, v = 0.5 + 0.17 * math.cos(a), 0.3 + 0.17 * math.sin(a)
        d.ellipse(_sub(b, u - 0.14, v - 0.14, u + 0.14, v + 0.14), fill=c, outline=_shade(c, -0.2))
    d.ellipse(_sub(b, 0.39, 0.19, 0.61, 0.41), fill=FLOWER_CENTRE)


def _draw_sprig(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    stem = [_pt(b, 0.5 + 0.06 * math.sin(v * 3.0), v) for v in (0.02, 0.25, 0.5, 0.75, 1.0)]
    d.line(stem, fill=_shade(c, -0.35), width=_lw(b) * 2, joint="curve")
    for k in range(5):
        v = 0.1 + 0.17 * k
        u = 0.5 + 0.06 * math.sin(v * 3.0)
        for side, dv in ((-1, 0.0), (1, 0.06)):
            cu = u + side * 0.2
            d.ellipse(
                _sub(b, cu - 0.19, v + dv - 0.07, cu + 0.19, v + dv + 0.07),
                fill=c,
                outline=_shade(c, OUTLINE_SHADE),
                width=max(1, _lw(b) // 2),
            )


def _draw_leaf(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    d.polygon(
        _poly(b, (0.5, 0), (0.85, 0.3), (0.9, 0.55), (0.5, 1), (0.1, 0.55), (0.15, 0.3)),
        fill=c,
        outline=_shade(c, OUTLINE_SHADE),
        width=_lw(b),
    )
    d.line([_pt(b, 0.5, 0.05), _pt(b, 0.5, 0.95)], fill=_shade(c, -0.3), width=_lw(b))


def _draw_car(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    dark = _shade(c, OUTLINE_SHADE)
    d.polygon(_poly(b, (0.2, 0.42), (0.32, 0.08), (0.7, 0.08), (0.84, 0.42)), fill=c, outline=dark)
    d.polygon(_poly(b, (0.27, 0.4), (0.35, 0.15), (0.49, 0.15), (0.49, 0.4)), fill=WINDOW_BLUE)
    d.polygon(_poly(b, (0.53, 0.4), (0.53, 0.15), (0.67, 0.15), (0.77, 0.4)), fill=WINDOW_BLUE)
    body = _sub(b, 0, 0.38, 1, 0.8)
    d.rounded_rectangle(
        body, radius=max(1, int((body[3] - body[1]) * 0.3)), fill=c, outline=dark, width=_lw(b)
    )
    for u in (0.14, 0.7):
        d.ellipse(_sub(b, u, 0.6, u + 0.18, 0.98), fill=TYRE)
        d.ellipse(_sub(b, u + 0.05, 0.7, u + 0.13, 0.88), fill=HUB_GRAY)


def _draw_person(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    lw = _lw(b)
    d.line([_pt(b, 0.25, 0.32), _pt(b, 0.05, 0.62)], fill=SKIN, width=lw * 3)
    d.line([_pt(b, 0.75, 0.32), _pt(b, 0.95, 0.62)], fill=SKIN, width=lw * 3)
    d.rectangle(_sub(b, 0.28, 0.66, 0.47, 1), fill=TROUSER_BLUE)
    d.rectangle(_sub(b, 0.53, 0.66, 0.72, 1), fill=TROUSER_BLUE)
    body = _sub(b, 0.22, 0.27, 0.78, 0.7)
    d.rounded_rectangle(body, radius=max(1, int((body[2] - body[0]) * 0.2)), fill=c)
    d.ellipse(_sub(b, 0.32, 0.0, 0.68, 0.25), fill=SKIN, outline=_shade(SKIN, -0.3))


def _draw_mountain(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    d.polygon(_poly(b, (0.35, 1), (0.72, 0.3), (1, 1)), fill=_shade(c, -0.2))
    d.polygon(_poly(b, (0, 1), (0.38, 0.02), (0.78, 1)), fill=c)
    d.polygon(
        _poly(b, (0.38, 0.02), (0.27, 0.3), (0.34, 0.26), (0.4, 0.32), (0.48, 0.27)),
        fill=SNOW_WHITE,
    )


def _draw_boat(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    d.line([_pt(b, 0.5, 0.02), _pt(b, 0.5, 0.72)], fill=TRUNK, width=_lw(b) * 2)
    d.polygon(
        _poly(b, (0.53, 0.06), (0.53, 0.64), (0.92, 0.64)),
        fill=SAIL_WHITE,
        outline=SAIL_EDGE,
    )
    d.polygon(
        _poly(b, (0, 0.68), (1, 0.68), (0.82, 1), (0.18, 1)),
        fill=c,
        outline=_shade(c, OUTLINE_SHADE),
    )


def _draw_apple(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    d.line([_pt(b, 0.5, 0.25), _pt(b, 0.55, 0.02)], fill=TRUNK, width=_lw(b) * 2)
    d.ellipse(_sub(b, 0.05, 0.18, 0.95, 1), fill=c, outline=_shade(c, OUTLINE_SHADE), width=_lw(b))
    d.ellipse(_sub(b, 0.56, 0.02, 0.82, 0.14), fill=LEAF_GREEN)


def _draw_ball(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    d.ellipse(b, fill=c, outline=_shade(c, OUTLINE_SHADE), width=_lw(b))
    d.arc(_sub(b, -0.4, 0.05, 0.55, 0.95), -50, 50, fill=BALL_STRIPE, width=_lw(b) * 2)
    d.arc(_sub(b, 0.45, 0.05, 1.4, 0.95), 130, 230, fill=BALL_STRIPE, width=_lw(b) * 2)


def _draw_balloon(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    d.line(
        [_pt(b, 0.5, 0.78), _pt(b, 0.45, 0.9), _pt(b, 0.52, 1)],
        fill=STRING_GRAY,
        width=max(1, _lw(b) // 2),
    )
    d.polygon(_poly(b, (0.46, 0.8), (0.54, 0.8), (0.5, 0.72)), fill=_shade(c, -0.2))
    d.ellipse(_sub(b, 0.15, 0, 0.85, 0.76), fill=c, outline=_shade(c, OUTLINE_SHADE), width=_lw(b))
    d.ellipse(_sub(b, 0.3, 0.12, 0.42, 0.28), fill=_shade(c, 0.5))


def _draw_book(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    d.rectangle(_sub(b, 0.12, 0.1, 0.92, 0.95), fill=PAGE_CREAM)
    d.rectangle(
        _sub(b, 0.08, 0.05, 0.88, 0.9), fill=c, outline=_shade(c, OUTLINE_SHADE), width=_lw(b)
    )
    d.rectangle(_sub(b, 0.08, 0.05, 0.2, 0.9), fill=_shade(c, -0.3))


def _draw_bottle(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    body = _sub(b, 0.22, 0.35, 0.78, 1)
    d.rounded_rectangle(
        body,
        radius=max(1, int((body[2] - body[0]) * 0.2)),
        fill=c,
        outline=_shade(c, OUTLINE_SHADE),
        width=_lw(b),
    )
    d.rectangle(_sub(b, 0.4, 0.08, 0.6, 0.38), fill=c, outline=_shade(c, OUTLINE_SHADE))
    d.rectangle(_sub(b, 0.38, 0.0, 0.62, 0.1), fill=DARK_GRAY)


def _draw_vase(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    d.ellipse(_sub(b, 0.1, 0.3, 0.9, 1), fill=c, outline=_shade(c, OUTLINE_SHADE), width=_lw(b))
    d.rectangle(_sub(b, 0.32, 0.05, 0.68, 0.42), fill=c)
    d.ellipse(_sub(b, 0.28, 0.0, 0.72, 0.1), fill=_shade(c, -0.3))


def _draw_plant(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    for u0, v0, u1, v1 in ((0.1, 0.15, 0.5, 0.65), (0.5, 0.15, 0.9, 0.65), (0.3, 0.0, 0.7, 0.6)):
        d.ellipse(_sub(b, u0, v0, u1, v1), fill=c, outline=_shade(c, -0.3))
    d.polygon(_poly(b, (0.22, 0.58), (0.78, 0.58), (0.68, 1), (0.32, 1)), fill=TERRACOTTA)


def _draw_hat(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    d.ellipse(_sub(b, 0, 0.68, 1, 0.98), fill=c, outline=_shade(c, OUTLINE_SHADE))
    d.rounded_rectangle(
        _sub(b, 0.22, 0.1, 0.78, 0.84), radius=max(1, int((b[2] - b[0]) * 0.08)), fill=c
    )
    d.rectangle(_sub(b, 0.22, 0.62, 0.78, 0.74), fill=_shade(c, -0.45))


def _draw_lamp(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    d.rectangle(_sub(b, 0.47, 0.4, 0.53, 0.92), fill=LAMP_METAL)
    d.ellipse(_sub(b, 0.25, 0.88, 0.75, 1), fill=LAMP_METAL)
    d.polygon(
        _poly(b, (0.3, 0), (0.7, 0), (0.9, 0.42), (0.1, 0.42)),
        fill=c,
        outline=_shade(c, OUTLINE_SHADE),
    )


def _draw_window(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    d.rectangle(b, fill=WINDOW_BLUE, outline=c, width=_lw(b) * 3)
    d.line([_pt(b, 0.5, 0), _pt(b, 0.5, 1)], fill=c, width=_lw(b) * 2)
    d.line([_pt(b, 0, 0.5), _pt(b, 1, 0.5)], fill=c, width=_lw(b) * 2)


def _draw_laptop(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    d.rectangle(
        _sub(b, 0.12, 0, 0.88, 0.72), fill=c, outline=_shade(c, OUTLINE_SHADE), width=_lw(b)
    )
    d.rectangle(_sub(b, 0.17, 0.06, 0.83, 0.66), fill=SCREEN_BLUE)
    d.polygon(_poly(b, (0.08, 0.74), (0.92, 0.74), (1, 1), (0, 1)), fill=_shade(c, 0.2))


def _draw_umbrella(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    d.line([_pt(b, 0.5, 0.45), _pt(b, 0.5, 0.95)], fill=DARK_GRAY, width=_lw(b) * 2)
    d.arc(_sub(b, 0.38, 0.85, 0.5, 1.0), 0, 180, fill=DARK_GRAY, width=_lw(b) * 2)
    d.pieslice(_sub(b, 0, 0, 1, 0.9), 180, 360, fill=c, outline=_shade(c, OUTLINE_SHADE))


def _draw_butterfly(img: Image.Image, d: ImageDraw.ImageDraw, b: FBox, c: RGB) -> None:
    for box in (
        (0.05, 0.05, 0.5, 0.55),
        (0.5, 0.05, 0.95, 0.55),
        (0.12, 0.45, 0.5, 0.9),
        (0.5, 0.45, 0.88, 0.9),
    ):
        d.ellipse(_sub(b, *box), fill=c, outline=_shade(c, OUTLINE_SHADE), width=_lw(b))
    d.ellipse(_sub(b, 0.46, 0.15, 0.54, 0.85), fill=INSECT_BODY)


KINDS: Final[dict[str, _Kind]] = {
    "circle": _Kind(_draw_circle, geometric=True),
    "square": _Kind(_draw_rect, geometric=True),
    "rectangle": _Kind(_draw_rect, (1.0, 0.62), geometric=True),
    "triangle": _Kind(_draw_triangle, geometric=True),
    "star": _Kind(_draw_star, geometric=True),
    "heart": _Kind(_draw_heart, geometric=True),
    "diamond": _Kind(_draw_diamond, (0.8, 1.0), geometric=True),
    "hexagon": _Kind(_regular(6), geometric=True),
    "pentagon": _Kind(_regular(5), geometric=True),
    "octagon": _Kind(_regular(8), geometric=True),
    "oval": _Kind(_draw_circle, (1.0, 0.65), geometric=True),
    "sun": _Kind(_draw_sun, scale=0.8, colour=(250, 200, 40), band="sky"),
    "moon": _Kind(_draw_moon, scale=0.6, colour=(245, 240, 200), band="sky"),
    "cloud": _Kind(_draw_cloud, (1.0, 0.55), colour=(250, 250, 252), band="sky"),
    "bird": _Kind(_draw_bird, (1.0, 0.8), scale=0.45, colour=(70, 110, 190), band="sky"),
    "butterfly": _Kind(_draw_butterfly, (1.0, 0.8), scale=0.45, colour=(240, 140, 40), band="sky"),
    "balloon": _Kind(_draw_balloon, (0.7, 1.0), scale=0.7, colour=(230, 60, 60), band="sky"),
    "tree": _Kind(_draw_tree, (0.75, 1.0), scale=1.3, colour=(60, 140, 60), band="ground"),
    "house": _Kind(_draw_house, scale=1.2, colour=(230, 200, 150), band="ground"),
    "mug": _Kind(_draw_mug, (1.0, 0.9), scale=0.8, colour=(70, 120, 180)),
    "cup": _Kind(_draw_cup, (1.0, 0.75), scale=0.7, colour=(245, 245, 240)),
    "table": _Kind(_draw_table, (1.0, 0.55), scale=1.8, colour=(150, 100, 60), band="ground"),
    "chair": _Kind(_draw_chair, (0.7, 1.0), scale=1.1, colour=(150, 100, 60), band="ground"),
    "cat": _Kind(_draw_cat, (0.85, 1.0), colour=(230, 150, 70), band="ground"),
    "dog": _Kind(_draw_dog, (1.0, 0.85), colour=(170, 120, 70), band="ground"),
    "fish": _Kind(_draw_fish, (1.0, 0.6), scale=0.7, colour=(240, 150, 40)),
    "flower": _Kind(_draw_flower, (0.6, 1.0), colour=(230, 80, 130), band="ground"),
    "sprig": _Kind(_draw_sprig, (0.55, 1.0), colour=(88, 150, 100)),
    "leaf": _Kind(_draw_leaf, (0.65, 1.0), scale=0.7, colour=(70, 160, 70)),
    "car": _Kind(_draw_car, (1.0, 0.55), scale=1.3, colour=(200, 40, 40), band="ground"),
    "person": _Kind(_draw_person, (0.55, 1.0), scale=1.3, colour=(60, 110, 190), band="ground"),
    "mountain": _Kind(_draw_mountain, (1.0, 0.7), scale=2.0, colour=(120, 125, 140), band="ground"),
    "boat": _Kind(_draw_boat, (1.0, 0.9), colour=(170, 70, 50)),
    "apple": _Kind(_draw_apple, (0.9, 1.0), scale=0.55, colour=(215, 40, 40)),
    "ball": _Kind(_draw_ball, scale=0.6, colour=(240, 120, 40), band="ground"),
    "book": _Kind(_draw_book, (0.8, 1.0), scale=0.6, colour=(60, 90, 160)),
    "bottle": _Kind(_draw_bottle, (0.45, 1.0), scale=0.8, colour=(60, 140, 90)),
    "vase": _Kind(_draw_vase, (0.6, 1.0), scale=0.8, colour=(80, 120, 180)),
    "plant": _Kind(_draw_plant, (0.8, 1.0), colour=(60, 150, 70), band="ground"),
    "hat": _Kind(_draw_hat, (1.0, 0.6), scale=0.6, colour=(40, 40, 45)),
    "lamp": _Kind(_draw_lamp, (0.6, 1.0), colour=(240, 210, 120)),
    "window": _Kind(_draw_window, (0.8, 1.0), scale=1.1, colour=(250, 250, 250)),
    "laptop": _Kind(_draw_laptop, (1.0, 0.7), colour=(180, 180, 190)),
    "umbrella": _Kind(_draw_umbrella, (1.0, 1.0), colour=(60, 90, 200)),
}
UNKNOWN_KIND: Final = _Kind(_draw_rect, (1.0, 0.7), colour=None)
NOUN_ALIASES: Final[dict[str, str]] = {
    "dot": "circle",
    "disc": "circle",
    "disk": "circle",
    "sphere": "circle",
    "orb": "circle",
    "ring": "circle",
    "cube": "square",
    "block": "square",
    "rect": "rectangle",
    "bar": "rectangle",
    "pyramid": "triangle",
    "ellipse": "oval",
    "egg": "oval",
    "rhombus": "diamond",
    "kitten": "cat",
    "kitty": "cat",
    "puppy": "dog",
    "doggo": "dog",
    "hound": "dog",
    "automobile": "car",
    "vehicle": "car",
    "truck": "car",
    "taxi": "car",
    "sedan": "car",
    "man": "person",
    "woman": "person",
    "boy": "person",
    "girl": "person",
    "child": "person",
    "kid": "person",
    "human": "person",
    "figure": "person",
    "people": "person",
    "astronaut": "person",
    "hill": "mountain",
    "peak": "mountain",
    "volcano": "mountain",
    "branch": "sprig",
    "twig": "sprig",
    "herb": "sprig",
    "eucalyptus": "sprig",
    "rosemary": "sprig",
    "fern": "sprig",
    "olive branch": "sprig",
    "rose": "flower",
    "tulip": "flower",
    "daisy": "flower",
    "sunflower": "flower",
    "blossom": "flower",
    "bouquet": "flower",
    "lily": "flower",
    "teacup": "cup",
    "glass": "cup",
    "coffee": "mug",
    "desk": "table",
    "counter": "table",
    "bench": "chair",
    "stool": "chair",
    "ship": "boat",
    "sailboat": "boat",
    "yacht": "boat",
    "bush": "plant",
    "shrub": "plant",
    "houseplant": "plant",
    "cactus": "plant",
    "pine": "tree",
    "oak": "tree",
    "palm": "tree",
    "building": "house",
    "cottage": "house",
    "cabin": "house",
    "home": "house",
    "hut": "house",
    "notebook": "book",
    "novel": "book",
    "jar": "vase",
    "pot": "vase",
    "computer": "laptop",
    "cap": "hat",
    "football": "ball",
    "basketball": "ball",
    "tennis": "ball",
    "seagull": "bird",
    "parrot": "bird",
    "owl": "bird",
    "goldfish": "fish",
    "pear": "apple",
    "fruit": "apple",
    "tomato": "apple",
    "peach": "apple",
    "lantern": "lamp",
    "moonlight": "moon",
    "crescent": "moon",
    "kite": "diamond",
}


# What a remembered object may be: a drawable kind, a labelled box, text or a caption band.
OBJECT_KINDS: Final = frozenset({"box", "text", "caption", *KINDS})
