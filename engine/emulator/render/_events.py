"""The replayable event history an image carries, and reading it back from an image."""

from __future__ import annotations

import io
import json
import math
import random
import struct
from collections.abc import Callable, Sequence
from typing import Any, Final

from PIL import (
    Image,
    ImageChops,
    ImageDraw,
    ImageOps,
    UnidentifiedImageError,
)

from engine.emulator.render._drawing import KINDS, OBJECT_KINDS
from engine.emulator.render._filters import _apply_filter, _gain_lut
from engine.emulator.render._layout import (
    _colour_word,
    _draw_object,
    _draw_text,
    _fit_text,
    _layout,
    _object_event,
    _render_stops,
    _where,
)
from engine.emulator.render._model import (
    _Canvas,
    _clip_box,
    _is_ints,
    _is_nums,
    _is_rgb,
    _new_id,
    _Obj,
    _remap_objects,
    _rgb,
    _Spec,
)
from engine.emulator.render._output import _noise
from engine.emulator.render._parse import _find_positions, _quote_index
from engine.emulator.render._pixels import _background_mask, _edge_colour, _object_mask
from engine.emulator.render._vocabulary import (
    CAPTION_BAND_FRACTION,
    CAPTION_MIN_PX,
    CAPTION_SHADE,
    DECODE_FORMATS,
    FILTER_DESCRIPTIONS,
    FONT_MIN_SIZE,
    GRAIN_AMPLITUDE,
    MAX_BASE_PIXELS,
    MAX_COORD,
    MAX_EVENTS,
    MAX_MANIFEST_OBJECTS,
    MAX_META_CHARS,
    MAX_OBJECTS,
    MAX_REPLAY_PIXELS,
    MAX_SIDE,
    MAX_STOPS,
    META_KEY,
    META_VERSION,
    QUOTE_POSITION_REACH,
    TEXT_DARK,
    TEXT_DEFAULT_POS,
    TEXT_FONT_FRACTION,
    TEXT_LIGHT,
    TEXT_MAX_CHARS,
    TEXT_WIDTH_FRACTION,
    TINT_STRENGTH,
    TRANSPOSE_VALUES,
    ZOOM_MAX,
    PointMap,
    Pos,
)


def _open_image(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=DECODE_FORMATS)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error) as exc:
        raise ValueError("not a decodable image") from exc
    except Image.DecompressionBombError as exc:
        raise ValueError("not a decodable image (too many pixels)") from exc


def _decode_base(data: bytes, rng: random.Random) -> _Canvas:
    try:
        im = _open_image(data)
    except ValueError as exc:
        raise ValueError("base image is not a decodable PNG, JPEG, WebP or GIF image") from exc
    with im:
        w, h = im.size
        if w * h > MAX_BASE_PIXELS:
            raise ValueError(f"base image too large: {w}x{h}")
        try:
            im.load()
        except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
            raise ValueError("base image is truncated or corrupt") from exc
        meta = _read_meta(im)
        fmt = im.format
        img = _to_rgb(im)
    if meta.get("s") != [w, h]:
        meta = {}
    grain = meta.get("g")
    if fmt == "PNG" and _is_ints(grain, 3) and 0 <= grain[2] <= GRAIN_AMPLITUDE:
        # Exact inverse of _add_grain: the image was clamped before adding noise, so no clipping.
        img = ImageChops.subtract(img, _noise(img.size, grain[0], grain[1]), 1.0, grain[2])
    objects = _objects_from_meta(meta.get("o"), (w, h))
    events = _events_from_meta(meta.get("ev"))
    next_id = meta.get("ni")
    if not isinstance(next_id, int) or isinstance(next_id, bool):
        next_id = 1
    next_id = max([next_id, *(o.id + 1 for o in objects)])
    return _Canvas(img, objects, rng, [], events, next_id)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (*TEXT_LIGHT, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return im.convert("L").convert("RGB")
    return im.convert("RGB")


def _read_meta(im: Image.Image) -> dict[str, Any]:
    raw = im.info.get(META_KEY) if im.format == "PNG" else im.info.get("comment")
    if isinstance(raw, bytes):
        raw = raw.decode("latin-1")
    if not isinstance(raw, str) or len(raw) > MAX_META_CHARS:
        return {}
    if im.format != "PNG":
        if not raw.startswith(META_KEY + ":"):
            return {}
        raw = raw[len(META_KEY) + 1 :]
    try:
        meta = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(meta, dict) or meta.get("v") != META_VERSION:
        return {}
    return meta


def _objects_from_meta(entries: object, size: tuple[int, int]) -> list[_Obj]:
    objects: list[_Obj] = []
    if not isinstance(entries, list):
        return objects
    for entry in entries[-MAX_MANIFEST_OBJECTS:]:
        if not (isinstance(entry, list) and len(entry) == 7):
            continue
        oid, kind, label, colour, box, shape, above = entry
        if not (
            isinstance(oid, int)
            and kind in OBJECT_KINDS
            and isinstance(label, str)
            and len(label) <= TEXT_MAX_CHARS
            and _is_rgb(colour)
            and _is_ints(box, 4)
            and _is_nums(shape, 4)
        ):
            continue
        clipped = _clip_box((box[0], box[1], box[2], box[3]), size)
        if clipped is not None:
            objects.append(
                _Obj(
                    oid,
                    kind,
                    label,
                    _rgb(colour),
                    clipped,
                    (shape[0], shape[1], shape[2], shape[3]),
                    bool(above),
                )
            )
    return objects


def _draw_specs(canvas: _Canvas, specs: Sequence[_Spec]) -> None:
    width, height = canvas.img.size
    for spec, box in _layout(specs, width, height, canvas.rng):
        _emit(canvas, _object_event(canvas, spec, box))


def _draw_quotes(canvas: _Canvas, tokens: Sequence[str], quotes: Sequence[str]) -> bool:
    """Write each quoted string, near a position word next to it or at the top."""
    at: dict[int, Pos] = {}
    for k, pos in _find_positions(tokens):
        at.setdefault(k, pos)
    width, height = canvas.img.size
    shown = 0
    for i, token in enumerate(tokens):
        if shown >= MAX_OBJECTS:
            break
        index = _quote_index(token)
        if index is None or index >= len(quotes) or not quotes[index]:
            continue
        reach = range(i - QUOTE_POSITION_REACH, i + QUOTE_POSITION_REACH + 1)
        near = [at[k] for k in reach if k in at]
        fx, fy = TEXT_DEFAULT_POS
        if near:
            fx = near[0][0] if near[0][0] is not None else fx
            fy = near[0][1] if near[0][1] is not None else fy
        elif shown:
            fy = 1 - fy  # a second quote goes to the opposite edge instead of on top of the first
        event = {
            "e": "txt",
            "id": _new_id(canvas),
            "t": quotes[index],
            "x": round(fx * width, 1),
            "y": round(fy * height, 1),
        }
        _emit(canvas, event)
        shown += 1
    return shown > 0


# =========================================================================== events & replay
#
# Every change is an "event": a small JSON dict applied by one of _APPLIERS.  Live rendering
# and replay run the very same appliers, so replaying an image's log (minus one object) yields
# exactly what lies behind that object.  That is how remove/move/recolour leave the table
# under a mug intact instead of smearing it.


def _emit(canvas: _Canvas, event: dict[str, Any], *, note: bool = True) -> str:
    """Apply an event to the canvas, log it for replay, and record what it did."""
    if canvas.events is not None:
        canvas.events.append(event)
        if len(canvas.events) > MAX_EVENTS:
            canvas.events = None  # too long to carry around; later edits use pixel heuristics
    text = _APPLIERS[event["e"]](canvas, event)
    if note and text:
        canvas.applied.append(text)
    return text


def _replay(events: Sequence[dict[str, Any]]) -> Image.Image | None:
    canvas = _Canvas(Image.new("RGB", (1, 1)), [], random.Random(0), [], None, 0)
    try:
        for event in events:
            _APPLIERS[event["e"]](canvas, event)
    except (ValueError, KeyError, TypeError, OSError, ZeroDivisionError):
        return None
    return canvas.img


def _ap_bg(canvas: _Canvas, ev: dict[str, Any]) -> str:
    canvas.img = _render_stops(ev["st"], ev["sd"], ev["w"], ev["h"])
    canvas.objects = []
    return f"background: {ev['n']}"


def _ap_bgx(canvas: _Canvas, ev: dict[str, Any]) -> str:
    w, h = canvas.img.size
    new = _render_stops(ev["st"], ev["sd"], w, h)
    canvas.img = Image.composite(new, canvas.img, _background_mask(canvas.img))
    return f"changed background to {ev['n']}"


def _ap_obj(canvas: _Canvas, ev: dict[str, Any]) -> str:
    kind, label, colour, above = ev["k"], ev["l"], _rgb(ev["c"]), bool(ev["la"])
    b = ev["b"]
    shape = (b[0], b[1], b[2], b[3])
    full = _draw_object(canvas.img, kind, shape, colour, label, above)
    box = _clip_box(full, canvas.img.size)
    if box is not None:
        canvas.objects.append(_Obj(ev["id"], kind, label, colour, box, shape, above))
    if kind == "box":
        what = f"a labelled box '{label}'"
    else:
        what = f"a {ev['cn']} {label}" if ev["cn"] else f"a {label}"
    return f"drew {what} at {_where(shape, canvas.img.size)}"


def _ap_txt(canvas: _Canvas, ev: dict[str, Any]) -> str:
    w, h = canvas.img.size
    size = max(FONT_MIN_SIZE, min(w, h) * TEXT_FONT_FRACTION)
    box = _draw_text(canvas.img, ev["t"], ev["x"], ev["y"], size, w * TEXT_WIDTH_FRACTION)
    clipped = _clip_box(box, (w, h))
    if clipped is not None:
        canvas.objects.append(_Obj(ev["id"], "text", ev["t"], TEXT_DARK, clipped, box))
    return f"wrote text '{ev['t']}' at {_where(box, (w, h))}"


def _ap_cap(canvas: _Canvas, ev: dict[str, Any]) -> str:
    """Visible, deterministic fallback: a dark band at the bottom quoting the instruction."""
    img = canvas.img
    width, height = img.size
    band_h = min(height, max(CAPTION_MIN_PX, int(height * CAPTION_BAND_FRACTION)))
    box = (0, height - band_h, width, height)
    img.paste(img.crop(box).point(_gain_lut(CAPTION_SHADE, 0.0)), box[:2])
    font, shown = _fit_text(ev["t"], width * 0.94, band_h * 0.45)
    ImageDraw.Draw(img).text(
        (width / 2, height - band_h / 2), shown, font=font, fill=TEXT_LIGHT, anchor="mm"
    )
    canvas.objects.append(_Obj(ev["id"], "caption", ev["t"], TEXT_LIGHT, box, box))
    return f"drew caption band with unrecognised instruction: '{ev['t']}'"


def _ap_flt(canvas: _Canvas, ev: dict[str, Any]) -> str:
    name, scope = ev["n"], ev["sc"]
    note = FILTER_DESCRIPTIONS[name]
    if scope == "all":
        canvas.img = _apply_filter(name, canvas.img)
        return note
    if scope == "bg":
        mask = _background_mask(canvas.img)
        note += " (background only)"
    else:
        obj = next((o for o in canvas.objects if o.id == scope), None)
        if obj is None:
            return ""  # the object was removed later; its filter no longer applies
        mask = Image.new("L", canvas.img.size)
        mask.paste(_object_mask(obj, obj.box), obj.box[:2])
        note += f" ({obj.label} only)"
    canvas.img = Image.composite(_apply_filter(name, canvas.img), canvas.img, mask)
    return note


def _ap_tint(canvas: _Canvas, ev: dict[str, Any]) -> str:
    colour = _rgb(ev["c"])
    tint = ImageOps.colorize(canvas.img.convert("L"), (0, 0, 0), (255, 255, 255), colour)
    canvas.img = Image.blend(canvas.img, tint, TINT_STRENGTH)
    return f"tinted the image {_colour_word(colour)}"


def _ap_tp(canvas: _Canvas, ev: dict[str, Any]) -> str:
    op = Image.Transpose(ev["op"])
    w, h = canvas.img.size
    maps: dict[Image.Transpose, PointMap] = {
        Image.Transpose.FLIP_LEFT_RIGHT: lambda x, y: (w - x, y),
        Image.Transpose.FLIP_TOP_BOTTOM: lambda x, y: (x, h - y),
        Image.Transpose.ROTATE_180: lambda x, y: (w - x, h - y),
        Image.Transpose.ROTATE_90: lambda x, y: (y, w - x),
        Image.Transpose.ROTATE_270: lambda x, y: (h - y, x),
    }
    canvas.img = canvas.img.transpose(op)
    _remap_objects(canvas, maps[op])
    return TRANSPOSE_NOTES[op]


def _ap_fit(canvas: _Canvas, ev: dict[str, Any]) -> str:
    """Scale (and centre-crop) the canvas, or the given crop of it, to exactly w x h."""
    size = (ev["w"], ev["h"])
    w, h = canvas.img.size
    x0, y0, x1, y1 = ev["cr"] if ev["cr"] is not None else (0.0, 0.0, float(w), float(h))
    cw, ch = max(x1 - x0, 1e-3), max(y1 - y0, 1e-3)
    scale = max(size[0] / cw, size[1] / ch)
    sw, sh = size[0] / scale, size[1] / scale
    sx, sy = x0 + (cw - sw) / 2, y0 + (ch - sh) / 2
    canvas.img = canvas.img.resize(size, Image.Resampling.BILINEAR, box=(sx, sy, sx + sw, sy + sh))
    _remap_objects(canvas, lambda x, y: ((x - sx) * scale, (y - sy) * scale))
    return f"scaled to {size[0]}x{size[1]}"


def _ap_rot(canvas: _Canvas, ev: dict[str, Any]) -> str:
    angle = float(ev["a"])
    w, h = canvas.img.size
    canvas.img = canvas.img.rotate(
        -angle, Image.Resampling.BICUBIC, fillcolor=_edge_colour(canvas.img)
    )
    rad = math.radians(angle)
    cos, sin = math.cos(rad), math.sin(rad)
    _remap_objects(
        canvas,
        lambda x, y: (
            w / 2 + (x - w / 2) * cos - (y - h / 2) * sin,
            h / 2 + (x - w / 2) * sin + (y - h / 2) * cos,
        ),
    )
    return f"rotated {angle:g} degrees clockwise"


def _ap_zo(canvas: _Canvas, ev: dict[str, Any]) -> str:
    factor = float(ev["f"])
    w, h = canvas.img.size
    small = canvas.img.resize(
        (max(1, round(w / factor)), max(1, round(h / factor))), Image.Resampling.BILINEAR
    )
    out = Image.new("RGB", (w, h), _edge_colour(canvas.img))
    ox, oy = (w - small.size[0]) // 2, (h - small.size[1]) // 2
    out.paste(small, (ox, oy))
    canvas.img = out
    _remap_objects(canvas, lambda x, y: (ox + x * small.size[0] / w, oy + y * small.size[1] / h))
    return f"zoomed out {factor:g}x"


_APPLIERS: Final[dict[str, Callable[[_Canvas, dict[str, Any]], str]]] = {
    "bg": _ap_bg,
    "bgx": _ap_bgx,
    "obj": _ap_obj,
    "txt": _ap_txt,
    "cap": _ap_cap,
    "flt": _ap_flt,
    "tint": _ap_tint,
    "tp": _ap_tp,
    "fit": _ap_fit,
    "rot": _ap_rot,
    "zo": _ap_zo,
}
TRANSPOSE_NOTES: Final[dict[Image.Transpose, str]] = {
    Image.Transpose.FLIP_LEFT_RIGHT: "flipped horizontally",
    Image.Transpose.FLIP_TOP_BOTTOM: "flipped vertically",
    Image.Transpose.ROTATE_90: "rotated 90 degrees counter-clockwise",
    Image.Transpose.ROTATE_180: "rotated 180 degrees",
    Image.Transpose.ROTATE_270: "rotated 90 degrees clockwise",
}
# Field types per event; metadata comes back from clients, so it is checked before replay.
EVENT_SCHEMA: Final[dict[str, dict[str, str]]] = {
    "bg": {"n": "str", "st": "stops", "sd": "int", "w": "side", "h": "side"},
    "bgx": {"n": "str", "st": "stops", "sd": "int"},
    "obj": {"id": "int", "k": "kind", "l": "str", "c": "rgb", "b": "box", "la": "int", "cn": "str"},
    "txt": {"id": "int", "t": "str", "x": "num", "y": "num"},
    "cap": {"id": "int", "t": "str"},
    "flt": {"n": "filter", "sc": "scope"},
    "tint": {"c": "rgb"},
    "tp": {"op": "transpose"},
    "fit": {"w": "side", "h": "side", "cr": "crop"},
    "rot": {"a": "num"},
    "zo": {"f": "zoom"},
}


def _number(v: object) -> float | None:
    if (
        isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
        and abs(v) <= MAX_COORD
    ):
        return float(v)
    return None


def _valid_field(kind: str, v: object) -> bool:
    if kind == "str":
        return isinstance(v, str) and len(v) <= TEXT_MAX_CHARS
    if kind == "scope" and v in ("all", "bg"):
        return True
    if kind in ("int", "scope", "side", "transpose"):
        if not isinstance(v, int) or isinstance(v, bool):
            return False
        if kind == "side":
            return 1 <= v <= MAX_SIDE
        return kind != "transpose" or v in TRANSPOSE_VALUES
    if kind in ("num", "zoom"):
        n = _number(v)
        return n is not None and (kind == "num" or 1 <= n <= ZOOM_MAX)
    if kind == "rgb":
        return _is_rgb(v)
    if kind == "box" or (kind == "crop" and v is not None):
        return _is_nums(v, 4) and all(abs(c) <= MAX_COORD for c in v)
    if kind == "stops":
        return (
            isinstance(v, list)
            and 1 <= len(v) <= MAX_STOPS
            and all(
                _is_nums(s, 4) and 0 <= s[0] <= 1 and all(0 <= c <= 255 for c in s[1:]) for s in v
            )
        )
    if kind == "kind":
        return v == "box" or v in KINDS
    if kind == "filter":
        return v in FILTER_DESCRIPTIONS
    return kind == "crop"  # a None crop


def _events_from_meta(raw: object) -> list[dict[str, Any]] | None:
    if not isinstance(raw, list) or not raw or len(raw) > MAX_EVENTS:
        return None
    pixels = 0
    for ev in raw:
        if not isinstance(ev, dict) or ev.get("e") not in EVENT_SCHEMA:
            return None
        schema = EVENT_SCHEMA[ev["e"]]
        if set(ev) != {"e", *schema} or not all(_valid_field(t, ev[k]) for k, t in schema.items()):
            return None
        if ev["e"] in ("bg", "fit"):
            pixels = max(pixels, ev["w"] * ev["h"])
    if raw[0]["e"] != "bg" or pixels > MAX_REPLAY_PIXELS:
        return None
    return raw
