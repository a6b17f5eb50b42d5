"""What a picture is made of while it is drawn: the canvas, objects, parsed specs, results;
geometry and colour helpers."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from PIL import (
    Image,
)

from engine.emulator.render._vocabulary import (
    COLOURS,
    DARKER_MIX,
    DARKER_WORDS,
    LIGHTER_MIX,
    LIGHTER_WORDS,
    MAX_SIDE,
    OUTPUT_FORMATS,
    RGB,
    BackgroundStops,
    FBox,
    IBox,
    PointMap,
    Pos,
)

# =========================================================================== public API


@dataclass(frozen=True, slots=True)
class RenderResult:
    """An encoded image plus a human-readable list of what was drawn or applied."""

    data: bytes
    mime_type: str
    width: int
    height: int
    applied: tuple[str, ...]
    # Worked out once, in the render thread, for every answer the image is sent in (see
    # engine.emulator._generate.RenderJob.run): the sha256 its signature is made from, and
    # its standard base64.
    sha256: bytes = b""
    b64: bytes = b""


# =========================================================================== model


@dataclass(slots=True)
class _Obj:
    """A drawn thing remembered in the image metadata, so later edits can find it by name."""

    id: int
    kind: str  # a KINDS key, or "box" (labelled box), "text", "caption"
    label: str
    colour: RGB
    box: IBox  # everything drawn for it (shape + label), in current image coordinates
    shape: FBox  # the box the drawer was given, in current image coordinates
    above: bool = False  # label drawn above the shape (objects standing on something)


@dataclass(slots=True)
class _Canvas:
    img: Image.Image
    objects: list[_Obj]
    rng: random.Random
    applied: list[str]
    # Replayable history (see _APPLIERS); None once a pixel-only heuristic made it inexact.
    events: list[dict[str, Any]] | None
    next_id: int


@dataclass(frozen=True, slots=True)
class _Background:
    name: str
    stops: BackgroundStops
    stars: bool = False


@dataclass(slots=True)
class _Spec:
    """An object parsed from text: what to draw, in which colour, how big, where."""

    kind: str | None
    label: str
    colour: RGB | None
    scale: float
    count: int
    start: int
    end: int
    pos: Pos = (None, None)
    on: int | None = None
    anchored: bool = False  # placed relative to an existing object: exact spot, no half-canvas rule


def _check_size(width: int, height: int) -> None:
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise ValueError(f"width and height must be within 1..{MAX_SIDE}, got {width}x{height}")


def _normalise_mime(output_mime: str) -> str:
    mime = OUTPUT_FORMATS.get(output_mime.strip().lower())
    if mime is None:
        raise ValueError(f"unsupported output_mime {output_mime!r}")
    return mime


def _new_id(canvas: _Canvas) -> int:
    canvas.next_id += 1
    return canvas.next_id - 1


def _is_ints(value: object, n: int) -> TypeGuard[list[int]]:
    return (
        isinstance(value, list)
        and len(value) == n
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )


def _is_nums(value: object, n: int) -> TypeGuard[list[float]]:
    return (
        isinstance(value, list)
        and len(value) == n
        and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in value
        )
    )


def _is_rgb(value: object) -> TypeGuard[list[int]]:
    return _is_ints(value, 3) and all(0 <= v <= 255 for v in value)


def _rgb(value: Sequence[int]) -> RGB:
    return (int(value[0]), int(value[1]), int(value[2]))


def _clip_box(box: FBox, size: tuple[int, int]) -> IBox | None:
    x0 = max(0, min(size[0], round(box[0])))
    y0 = max(0, min(size[1], round(box[1])))
    x1 = max(0, min(size[0], round(box[2])))
    y1 = max(0, min(size[1], round(box[3])))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return (x0, y0, x1, y1)


def _remap_objects(canvas: _Canvas, mapping: PointMap) -> None:
    """Carry remembered boxes through a geometric change so later edits still find them."""
    kept: list[_Obj] = []
    for obj in canvas.objects:
        box = _clip_box(_map_box(obj.box, mapping), canvas.img.size)
        if box is not None:
            kept.append(
                _Obj(
                    obj.id,
                    obj.kind,
                    obj.label,
                    obj.colour,
                    box,
                    _map_box(obj.shape, mapping),
                    obj.above,
                )
            )
    canvas.objects = kept


def _map_box(box: Sequence[float], mapping: PointMap) -> FBox:
    pts = [mapping(x, y) for x in (box[0], box[2]) for y in (box[1], box[3])]
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    return (min(xs), min(ys), max(xs), max(ys))


# =========================================================================== colour helpers


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (
        round(a[0] + (b[0] - a[0]) * t),
        round(a[1] + (b[1] - a[1]) * t),
        round(a[2] + (b[2] - a[2]) * t),
    )


def _shade(c: RGB, amount: float) -> RGB:
    """Lighten (amount > 0) or darken (amount < 0) a colour."""
    return _mix(c, (255, 255, 255), amount) if amount > 0 else _mix(c, (0, 0, 0), -amount)


def _colour_at(tokens: Sequence[str], j: int) -> tuple[RGB, list[int]] | None:
    """Colour named at token j (with 'light'/'dark' or two-word names), and the tokens used."""
    if j < 0 or j >= len(tokens):
        return None
    used = [j]
    colour: RGB | None = None
    if j > 0 and f"{tokens[j - 1]} {tokens[j]}" in COLOURS:
        colour = COLOURS[f"{tokens[j - 1]} {tokens[j]}"]
        used = [j - 1, j]
    elif tokens[j] in COLOURS:
        colour = COLOURS[tokens[j]]
    if colour is None:
        return None
    k = used[0] - 1
    if k >= 0 and tokens[k] in LIGHTER_WORDS:
        colour = _shade(colour, LIGHTER_MIX)
        used.insert(0, k)
    elif k >= 0 and tokens[k] in DARKER_WORDS:
        colour = _shade(colour, -DARKER_MIX)
        used.insert(0, k)
    return colour, used


def _colours_in(tokens: Sequence[str]) -> list[tuple[RGB, int]]:
    """Every colour named in the tokens, with the index of its last word, in order."""
    found: list[tuple[RGB, int]] = []
    for j in range(len(tokens)):
        if j + 1 < len(tokens) and f"{tokens[j]} {tokens[j + 1]}" in COLOURS:
            continue  # the two-word name is picked up at j + 1
        hit = _colour_at(tokens, j)
        if hit is not None:
            found.append((hit[0], j))
    return found
