"""Edit instructions: add, remove, move, recolour, replace, rotate, scale, zoom, text."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import (
    Image,
    ImageChops,
    ImageFilter,
)

from engine.emulator.render._drawing import KINDS, OBJECT_KINDS
from engine.emulator.render._events import _draw_quotes, _draw_specs, _emit, _replay
from engine.emulator.render._layout import (
    _background_event,
    _colour_word,
    _copies,
    _fit,
    _object_event,
    _object_size,
    _region,
    _where,
)
from engine.emulator.render._model import _Canvas, _clip_box, _colours_in, _Obj, _Spec
from engine.emulator.render._parse import (
    _assign_positions,
    _assign_relations,
    _colour_background,
    _extract_objects,
    _find_positions,
    _is_boundary,
    _is_content,
    _kind_of,
    _merge_pos,
    _parse_background,
    _quote_index,
    _singular,
)
from engine.emulator.render._pixels import (
    _background_mask,
    _colour_box,
    _expand,
    _foreground_mask,
    _inpaint_estimate,
    _object_mask,
    _ramp_lut,
    _recolour,
)
from engine.emulator.render._vocabulary import (
    ADD_VERBS,
    ANCHOR_ON_LEVEL,
    ANCHOR_REACH,
    ANCHOR_SCALE,
    ANCHOR_WORDS,
    CENTRE_SEARCH,
    COLOUR_MATCH,
    COLOURS,
    COUNTER_CLOCKWISE,
    DARKER_WORDS,
    FILTER_DESCRIPTIONS,
    FILTER_REGEX,
    GLOBAL_WORDS,
    LIGHTER_WORDS,
    MASK_DILATE,
    MOVE_POSITIONS,
    MOVE_VERBS,
    NOOP_PREFIXES,
    NUMBER_REGEX,
    OBJECT_BASE_FRACTION,
    POSITIONS,
    PRONOUNS,
    RECOLOUR_VERBS,
    REMOVE_MARGIN,
    REMOVE_REGEX,
    REMOVE_VERBS,
    REPLACE_REGEX,
    RGB,
    ROTATE_HINTS,
    ROTATE_NOTES,
    SCALE_DOWN,
    SCALE_DOWN_WORDS,
    SCALE_UP,
    SCALE_UP_WORDS,
    SLIGHT_MOVE,
    SLIGHT_WORDS,
    TEXT_VERBS,
    VERBS,
    ZOOM_DEFAULT,
    ZOOM_MAX,
    ZOOM_SLIGHT,
    ZOOM_WORDS,
    FBox,
    IBox,
    Pos,
)

# =========================================================================== editing


def _apply_clause(
    canvas: _Canvas, clause: str, tokens: list[str], quotes: Sequence[str], previous: str
) -> str | None:
    """Apply one clause; return the kind of action taken, or None if it was not understood."""
    words = set(tokens)
    first = tokens[0]
    has_quote = any(_quote_index(t) is not None for t in tokens)
    if clause.startswith(NOOP_PREFIXES):
        return "noop"
    if (first in ("replace", "swap") or REPLACE_REGEX.search(clause)) and _edit_replace(
        canvas, tokens
    ):
        return "replace"
    if first in REMOVE_VERBS or REMOVE_REGEX.match(clause):
        _edit_remove(canvas, tokens)
        return "remove"
    if first in MOVE_VERBS:
        _edit_move(canvas, tokens)
        return "move"
    if (
        words & (SCALE_UP_WORDS | SCALE_DOWN_WORDS)
        and not words & GLOBAL_WORDS
        and _edit_scale(canvas, tokens)
    ):
        return "scale"
    if words & {"rotate", "rotated", "upside"} or (
        first in ("turn", "spin") and words & ROTATE_HINTS
    ):
        _edit_rotate(canvas, tokens)
        return "rotate"
    if words & {"flip", "flipped", "mirror", "mirrored", "reflect"}:
        vertical = bool(words & {"vertical", "vertically", "upside"}) or {"top", "bottom"} <= words
        op = Image.Transpose.FLIP_TOP_BOTTOM if vertical else Image.Transpose.FLIP_LEFT_RIGHT
        _emit(canvas, {"e": "tp", "op": int(op)})
        return "flip"
    if (
        words & ZOOM_WORDS
        or "close up" in clause
        or (words & SCALE_UP_WORDS and first in ("make", "scale"))
    ):
        _edit_zoom(canvas, tokens)
        return "zoom"
    # "add a sun in the sky" adds a sun; only an add with nothing to add restyles the backdrop.
    if (
        words & {"background", "backdrop", "sky"}
        and (first not in ADD_VERBS or not _extract_objects(tokens, set()))
        and _edit_background(canvas, tokens)
    ):
        return "background"
    if (
        first in TEXT_VERBS
        or (has_quote and words & {"text", "words", "title", "caption"} and first not in ADD_VERBS)
    ) and _edit_text(canvas, tokens, quotes):
        return "text"
    if (first in ADD_VERBS or (previous == "add" and first not in VERBS)) and _edit_add(
        canvas, tokens, quotes
    ):
        return "add"
    if _edit_recolour(canvas, tokens):
        return "recolour"
    if _edit_filters(canvas, tokens):
        return "filter"
    if has_quote and _draw_quotes(canvas, tokens, quotes):
        return "text"
    if previous == "remove" and _mentioned(canvas, tokens):
        _edit_remove(canvas, tokens)
        return "remove"
    return None


def _edit_rotate(canvas: _Canvas, tokens: Sequence[str]) -> None:
    words = set(tokens)
    numbers = [float(t) for t in tokens if NUMBER_REGEX.fullmatch(t)]
    counter = bool(words & COUNTER_CLOCKWISE)
    if "upside" in words:
        angle = 180.0
    elif numbers:
        angle = -numbers[0] if counter else numbers[0]
    else:
        angle = -90.0 if counter else 90.0  # "rotate right/clockwise" or a bare "rotate"
    angle %= 360
    size = canvas.img.size
    if angle == 0:
        canvas.applied.append("rotated 0 degrees (no change)")
        return
    ops = {
        90.0: Image.Transpose.ROTATE_270,
        180.0: Image.Transpose.ROTATE_180,
        270.0: Image.Transpose.ROTATE_90,
    }
    if angle in ops:
        _emit(canvas, {"e": "tp", "op": int(ops[angle])}, note=False)
        if canvas.img.size != size:  # a quarter turn of a non-square image: cover-fit back
            _emit(canvas, {"e": "fit", "w": size[0], "h": size[1], "cr": None}, note=False)
        canvas.applied.append(ROTATE_NOTES[angle])
    else:
        _emit(canvas, {"e": "rot", "a": round(angle, 2)})


def _zoom_factor(tokens: Sequence[str]) -> float:
    for i, t in enumerate(tokens):
        if not NUMBER_REGEX.fullmatch(t):
            continue
        value = float(t)
        if i + 1 < len(tokens) and tokens[i + 1] == "percent":
            # "zoom to 200%" means 2x, "zoom in by 50%" means 1.5x
            value = value / 100 if value >= 100 else 1 + value / 100
        if value > 1:
            return min(ZOOM_MAX, value)
    if set(tokens) & SLIGHT_WORDS:
        return ZOOM_SLIGHT
    return ZOOM_DEFAULT


def _edit_zoom(canvas: _Canvas, tokens: Sequence[str]) -> None:
    w, h = canvas.img.size
    words = set(tokens)
    if "out" in words and "zoom" in words:
        _emit(canvas, {"e": "zo", "f": round(_zoom_factor(tokens), 3)})
        return
    pos: Pos = (None, None)
    for _, p in _find_positions(tokens):
        pos = _merge_pos(pos, p)
    if pos not in ((None, None), (0.5, 0.5)) and words & {"half", "crop", "cropped"}:
        crop = _region(pos, w, h)
        note = f"cropped to the {_where(crop, (w, h))} part"
    else:
        factor = _zoom_factor(tokens)
        cw, ch = w / factor, h / factor
        cx = min(max((pos[0] if pos[0] is not None else 0.5) * w, cw / 2), w - cw / 2)
        cy = min(max((pos[1] if pos[1] is not None else 0.5) * h, ch / 2), h - ch / 2)
        crop = (cx - cw / 2, cy - ch / 2, cx + cw / 2, cy + ch / 2)
        note = f"cropped/zoomed in {factor:g}x"
    _emit(canvas, {"e": "fit", "w": w, "h": h, "cr": [round(v, 2) for v in crop]}, note=False)
    canvas.applied.append(note)


# --------------------------------------------------------------------------- object edits


def _mentioned(canvas: _Canvas, tokens: Sequence[str]) -> list[int]:
    """Indices of remembered objects named in the clause, best match first (latest on ties)."""
    words = set(tokens)
    nouns = {
        _kind_of(t) or _singular(t)
        for t in tokens
        if (_is_content(t) and not _is_boundary(t)) or _kind_of(t)
    }
    if words & {"text", "words", "title", "writing", "lettering"}:
        nouns.add("text")
    if "caption" in words:
        nouns.add("caption")
    colours = {t for t in tokens if t in COLOURS}
    scored = []
    for i, obj in enumerate(canvas.objects):
        if obj.kind == "caption" and "caption" not in nouns:
            continue
        label_words = {_singular(w) for w in obj.label.lower().split()}
        score = 2 * int(obj.kind in nouns) + len(nouns & label_words)
        if score:
            scored.append((score + len(colours & label_words), i))
    scored.sort(reverse=True)
    return [i for _, i in scored]


def _pronoun_target(canvas: _Canvas, tokens: Sequence[str]) -> int | None:
    if not set(tokens) & PRONOUNS:
        return None
    return _last_object(canvas)


def _last_object(canvas: _Canvas) -> int | None:
    """Most recently drawn/touched object, preferring real objects over text."""
    for kinds in (OBJECT_KINDS - {"text", "caption"}, {"text"}):
        found = [i for i, o in enumerate(canvas.objects) if o.kind in kinds]
        if found:
            return found[-1]
    return None


def _match_by_look(canvas: _Canvas, tokens: Sequence[str], region: FBox | None) -> int | None:
    """Latest remembered object with the named colour and/or inside the named region."""
    colours = [c for c, _ in _colours_in(tokens)]
    if not colours and region is None:
        return None
    for i in range(len(canvas.objects) - 1, -1, -1):
        obj = canvas.objects[i]
        if obj.kind == "caption":
            continue
        if (
            colours
            and max(abs(a - b) for a, b in zip(obj.colour, colours[0], strict=True)) > COLOUR_MATCH
        ):
            continue
        cx, cy = (obj.box[0] + obj.box[2]) / 2, (obj.box[1] + obj.box[3]) / 2
        if region is not None and not (
            region[0] <= cx <= region[2] and region[1] <= cy <= region[3]
        ):
            continue
        return i
    return None


def _resolve_target(canvas: _Canvas, tokens: Sequence[str]) -> tuple[IBox, int | None, str]:
    """Where the clause's object is: remembered object, colour match, position, or centre."""
    w, h = canvas.img.size
    mentioned = _mentioned(canvas, tokens)
    index = mentioned[0] if mentioned else _pronoun_target(canvas, tokens)
    if index is not None:
        return canvas.objects[index].box, index, canvas.objects[index].label
    pos: Pos = (None, None)
    for _, p in _find_positions(tokens):
        pos = _merge_pos(pos, p)
    region = _region(pos, w, h) if pos != (None, None) else None
    index = _match_by_look(canvas, tokens, region)
    if index is None and region is None and not _colours_in(tokens):
        index = _last_object(canvas)  # "remove the cat" with no cat: the last thing drawn
    if index is not None:
        return canvas.objects[index].box, index, canvas.objects[index].label
    colours = _colours_in(tokens)
    if colours:
        box = _colour_box(canvas.img, colours[0][0], region)
        if box is not None:
            return (
                _expand(box, REMOVE_MARGIN, (w, h)),
                None,
                f"{_colour_word(colours[0][0])} object",
            )
    search = region or (
        w * CENTRE_SEARCH,
        h * CENTRE_SEARCH,
        w * (1 - CENTRE_SEARCH),
        h * (1 - CENTRE_SEARCH),
    )
    clip = _clip_box(search, (w, h)) or (0, 0, w, h)
    found = (
        ImageChops.invert(_background_mask(canvas.img.crop(clip)))
        .point(_ramp_lut(127, 128, True))
        .getbbox()
    )
    if found is not None:
        box = (found[0] + clip[0], found[1] + clip[1], found[2] + clip[0], found[3] + clip[1])
        return _expand(box, REMOVE_MARGIN, (w, h)), None, "object"
    size = OBJECT_BASE_FRACTION * min(w, h)
    cx, cy = (clip[0] + clip[2]) / 2, (clip[1] + clip[3]) / 2
    return (
        _clip_box((cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2), (w, h)) or clip,
        None,
        "object",
    )


def _remove_object(canvas: _Canvas, index: int) -> None:
    _remove_objects(canvas, [canvas.objects[index].id])


def _remove_objects(canvas: _Canvas, ids: Sequence[int]) -> None:
    """Erase remembered objects: exactly (replay without them) when possible, else inpaint."""
    gone = [o for o in canvas.objects if o.id in ids]
    canvas.objects = [o for o in canvas.objects if o.id not in ids]
    regions = [_expand(o.box, REMOVE_MARGIN, canvas.img.size) for o in gone]
    if canvas.events is not None:
        events = [e for e in canvas.events if e.get("id") not in ids]
        truth = _replay(events)
        if truth is not None and truth.size == canvas.img.size:
            canvas.events = events
            for region in regions:
                canvas.img.paste(truth.crop(region), region[:2])
            return
    canvas.events = None
    for obj, region in zip(gone, regions, strict=True):
        mask = _object_mask(obj, region)
        canvas.img.paste(_inpaint_estimate(canvas.img, region), region[:2], mask)


def _redraw(canvas: _Canvas, obj: _Obj, shape: FBox, colour: RGB, label: str | None = None) -> None:
    """Draw a remembered object again (moved, scaled or recoloured) on top, keeping its id."""
    if obj.kind == "text":
        event = {
            "e": "txt",
            "id": obj.id,
            "t": obj.label,
            "x": round((shape[0] + shape[2]) / 2, 1),
            "y": round((shape[1] + shape[3]) / 2, 1),
        }
    elif obj.kind == "caption":
        event = {"e": "cap", "id": obj.id, "t": obj.label}
    else:
        event = {
            "e": "obj",
            "id": obj.id,
            "k": obj.kind,
            "l": label or obj.label,
            "c": list(colour),
            "b": [round(v, 1) for v in shape],
            "la": int(obj.above),
            "cn": "",
        }
    _emit(canvas, event, note=False)


def _heuristic_erase(canvas: _Canvas, box: IBox) -> None:
    canvas.events = None
    estimate = _inpaint_estimate(canvas.img, box)
    mask = _foreground_mask(canvas.img.crop(box), estimate).filter(
        ImageFilter.MaxFilter(MASK_DILATE)
    )
    canvas.img.paste(estimate, box[:2], mask)
    canvas.objects = [o for o in canvas.objects if not _inside(o.box, box)]


def _inside(inner: IBox, outer: IBox) -> bool:
    return (
        inner[0] >= outer[0]
        and inner[1] >= outer[1]
        and inner[2] <= outer[2]
        and inner[3] <= outer[3]
    )


def _edit_remove(canvas: _Canvas, tokens: Sequence[str]) -> None:
    words = set(tokens)
    mentioned = _mentioned(canvas, tokens)
    if words & {"background", "backdrop"} and not mentioned:
        bg = _colour_background([COLOURS["white"]], "plain white (background removed)")
        _emit(canvas, _background_event("bgx", bg, canvas.rng))
        return
    plural = any(_kind_of(t) is not None and _singular(t) != t for t in tokens)
    if mentioned and (plural or words & {"all", "every", "both"}):
        kind = canvas.objects[mentioned[0]].kind
        ids = [canvas.objects[i].id for i in mentioned if canvas.objects[i].kind == kind]
    elif "everything" in words or ("all" in words and not any(_kind_of(t) for t in tokens)):
        ids = [o.id for o in canvas.objects if o.kind != "caption"]
        if not ids:
            _heuristic_erase(canvas, (0, 0, *canvas.img.size))
            canvas.applied.append("removed everything in front of the background")
            return
    else:
        box, index, label = _resolve_target(canvas, tokens)
        if index is None:
            _heuristic_erase(canvas, box)
            canvas.applied.append(f"removed {label} at {_where(box, canvas.img.size)}")
            return
        ids = [canvas.objects[index].id]
    notes = [
        f"removed {o.label} at {_where(o.box, canvas.img.size)}"
        for o in canvas.objects
        if o.id in ids
    ]
    _remove_objects(canvas, ids)
    canvas.applied.extend(notes)


def _edit_move(canvas: _Canvas, tokens: Sequence[str]) -> None:
    w, h = canvas.img.size
    object_tokens = [t for t in tokens if t not in POSITIONS and t not in MOVE_POSITIONS]
    box, index, label = _resolve_target(canvas, object_tokens)
    target: Pos = (None, None)
    for t in tokens:
        if t in MOVE_POSITIONS:
            target = _merge_pos(target, MOVE_POSITIONS[t])
    for _, p in _find_positions(tokens):
        target = _merge_pos(target, p)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    if target == (None, None):
        target = (0.75 if cx < w / 2 else 0.25, None)
    nx = target[0] * w if target[0] is not None else cx
    ny = target[1] * h if target[1] is not None else cy
    if set(tokens) & SLIGHT_WORDS:
        nx, ny = cx + (nx - cx) * SLIGHT_MOVE, cy + (ny - cy) * SLIGHT_MOVE
    bw, bh = box[2] - box[0], box[3] - box[1]
    nx = min(max(nx, bw / 2), w - bw / 2)
    ny = min(max(ny, bh / 2), h - bh / 2)
    dx, dy = nx - cx, ny - cy
    if index is not None:
        obj = canvas.objects[index]
        _remove_object(canvas, index)
        s = obj.shape
        _redraw(canvas, obj, (s[0] + dx, s[1] + dy, s[2] + dx, s[3] + dy), obj.colour)
    else:
        canvas.events = None
        patch = canvas.img.crop(box)
        estimate = _inpaint_estimate(canvas.img, box)
        mask = _foreground_mask(patch, estimate)
        canvas.img.paste(estimate, box[:2])
        canvas.img.paste(patch, (round(box[0] + dx), round(box[1] + dy)), mask)
    canvas.applied.append(f"moved {label} to the {_where((nx, ny, nx, ny), (w, h))}")


def _edit_scale(canvas: _Canvas, tokens: Sequence[str]) -> bool:
    mentioned = _mentioned(canvas, tokens)
    index = mentioned[0] if mentioned else _pronoun_target(canvas, tokens)
    if index is None:
        return False
    w, h = canvas.img.size
    obj = canvas.objects[index]
    factor = SCALE_UP if set(tokens) & SCALE_UP_WORDS else SCALE_DOWN
    s = obj.shape
    cx, cy = (s[0] + s[2]) / 2, (s[1] + s[3]) / 2
    shape = _fit(
        cx, cy, (s[2] - s[0]) * factor, (s[3] - s[1]) * factor, (0.0, 0.0, float(w), float(h))
    )
    _remove_object(canvas, index)
    _redraw(canvas, obj, shape, obj.colour)
    canvas.applied.append(f"made {obj.label} {'bigger' if factor > 1 else 'smaller'}")
    return True


def _edit_replace(canvas: _Canvas, tokens: Sequence[str]) -> bool:
    split = next((i for i, t in enumerate(tokens) if t in ("with", "for", "into", "by")), None)
    if split is None:
        split = next((i for i, t in enumerate(tokens) if t == "to" and i > 1), None)
    if split is None:
        return False
    specs = _extract_objects(tokens[split + 1 :], set())
    if not specs:
        return False
    box, index, label = _resolve_target(canvas, tokens[:split])
    if index is not None:
        _remove_object(canvas, index)
    else:
        _heuristic_erase(canvas, box)
    w, h = canvas.img.size
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    region = _region((cx / w, cy / h), w, h)
    for spec in specs:
        bw, bh = _object_size(spec, w, h)
        for target in _copies(spec, cx, cy, bw, bh, region):
            _emit(canvas, _object_event(canvas, spec, target), note=False)
    canvas.applied.append(f"replaced {label} with {', '.join(s.label for s in specs)}")
    return True


def _edit_add(canvas: _Canvas, tokens: Sequence[str], quotes: Sequence[str]) -> bool:
    specs = _extract_objects(tokens, set(), openers=ADD_VERBS)
    has_quote = any(_quote_index(t) is not None for t in tokens)
    if specs and FILTER_REGEX.search(" ".join(tokens)) and all(s.kind is None for s in specs):
        return False  # "add a warm glow": a look, not a thing
    if not specs:
        return has_quote and _draw_quotes(canvas, tokens, quotes)
    # "add sunglasses to the cat": the cat is where to put them, not a second cat.
    specs = [s for s in specs if not _is_anchor(canvas, tokens, s)] or specs
    _assign_positions(tokens, specs)
    _assign_relations(tokens, specs)
    _anchor_to_existing(canvas, tokens, specs)
    _draw_specs(canvas, specs)
    if has_quote:
        _draw_quotes(canvas, tokens, quotes)
    return True


def _is_anchor(canvas: _Canvas, tokens: Sequence[str], spec: _Spec) -> bool:
    before = set(tokens[max(0, spec.start - ANCHOR_REACH) : spec.start])
    return bool(before & ANCHOR_WORDS) and bool(_mentioned(canvas, tokens[spec.start : spec.end]))


def _anchor_to_existing(canvas: _Canvas, tokens: Sequence[str], specs: list[_Spec]) -> None:
    """'add a hat on the cat' / 'next to the dog': place the new object relative to an old one."""
    w, h = canvas.img.size
    for spec in specs:
        if spec.pos != (None, None):
            continue
        rest = tokens[spec.end :]
        relation = next((t for t in rest if t in ANCHOR_WORDS), None)
        if relation is None:
            continue
        mentioned = [i for i in _mentioned(canvas, rest) if canvas.objects[i].kind != "caption"]
        if not mentioned:
            continue
        x0, y0, x1, y1 = canvas.objects[mentioned[0]].box
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        if relation in ("on", "atop", "onto"):
            cy = y0 + (y1 - y0) * ANCHOR_ON_LEVEL
        elif relation == "above":
            cy = y0 - (y1 - y0) * 0.3
        elif relation in ("below", "under"):
            cy = y1 + (y1 - y0) * 0.3
        else:
            cx = x1 + (x1 - x0) * 0.4 if cx < w / 2 else x0 - (x1 - x0) * 0.4
        spec.pos = (min(max(cx / w, 0.0), 1.0), min(max(cy / h, 0.0), 1.0))
        spec.scale *= ANCHOR_SCALE
        spec.anchored = True


def _edit_text(canvas: _Canvas, tokens: Sequence[str], quotes: Sequence[str]) -> bool:
    index = next((q for q in map(_quote_index, tokens) if q is not None and q < len(quotes)), None)
    if index is None:
        return False
    old = [i for i, o in enumerate(canvas.objects) if o.kind == "text"]
    if old and set(tokens) & {"change", "replace", "update", "edit", "fix", "instead"}:
        obj = canvas.objects[old[-1]]
        _remove_object(canvas, old[-1])
        s = obj.shape
        event = {
            "e": "txt",
            "id": obj.id,
            "t": quotes[index],
            "x": round((s[0] + s[2]) / 2, 1),
            "y": round((s[1] + s[3]) / 2, 1),
        }
        _emit(canvas, event, note=False)
        canvas.applied.append(f"changed text '{obj.label}' to '{quotes[index]}'")
        return True
    return _draw_quotes(canvas, tokens, quotes)


def _edit_background(canvas: _Canvas, tokens: Sequence[str]) -> bool:
    bg = _parse_background(tokens, set())
    if bg is not None:
        _emit(canvas, _background_event("bgx", bg, canvas.rng))
        return True
    names = [m.lastgroup for m in FILTER_REGEX.finditer(" ".join(tokens)) if m.lastgroup]
    for name in dict.fromkeys(names):
        _emit(canvas, {"e": "flt", "n": name, "sc": "bg"})
    return bool(names)


def _edit_recolour(canvas: _Canvas, tokens: Sequence[str]) -> bool:
    colours = _colours_in(tokens)
    words = set(tokens)
    if not colours or not words & RECOLOUR_VERBS:
        return False
    colour = colours[-1][0]
    name = _colour_word(colour)
    target_tokens = [t for k, t in enumerate(tokens) if k != colours[-1][1]]
    mentioned = _mentioned(canvas, target_tokens)
    if words & GLOBAL_WORDS and not mentioned:
        _emit(canvas, {"e": "tint", "c": list(colour)})
        return True
    index = mentioned[0] if mentioned else _pronoun_target(canvas, tokens)
    if index is not None and canvas.objects[index].kind not in ("text", "caption"):
        obj = canvas.objects[index]
        label = obj.label
        if obj.kind in KINDS and KINDS[obj.kind].geometric:
            rest = [
                w
                for w in obj.label.split()
                if w not in COLOURS and w not in LIGHTER_WORDS | DARKER_WORDS
            ]
            label = " ".join([name, *rest])
        _remove_object(canvas, index)
        _redraw(canvas, obj, obj.shape, colour, label)
        canvas.applied.append(f"recoloured {obj.label} to {name}")
        return True
    if index is not None or len(colours) > 1:
        box, _, label = _resolve_target(canvas, target_tokens)
        canvas.events = None
        patch = canvas.img.crop(box)
        mask = _foreground_mask(patch, _inpaint_estimate(canvas.img, box))
        canvas.img.paste(_recolour(patch, colour, mask), box[:2])
        canvas.applied.append(f"recoloured {label} to {name}")
        return True
    _emit(canvas, {"e": "tint", "c": list(colour)})
    return True


def _edit_filters(canvas: _Canvas, tokens: Sequence[str]) -> bool:
    names = [m.lastgroup for m in FILTER_REGEX.finditer(" ".join(tokens)) if m.lastgroup]
    if not names:
        return False
    mentioned = [i for i in _mentioned(canvas, tokens) if canvas.objects[i].kind != "caption"]
    scope: str | int = "all"
    if mentioned and not set(tokens) & GLOBAL_WORDS:
        scope = canvas.objects[mentioned[0]].id
    for name in dict.fromkeys(names):
        if canvas.applied and canvas.applied[-1] == FILTER_DESCRIPTIONS[name]:
            continue  # "warmer, golden hour light" asks for one warming, not two
        _emit(canvas, {"e": "flt", "n": name, "sc": scope})
    return True
