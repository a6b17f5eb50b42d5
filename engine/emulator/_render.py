"""Pure rendering core of the local Gemini image API emulator.

``render_scene`` turns a text prompt into a simple but recognisable picture and
``render_edit`` applies edit instructions to an existing image.  Both are
deterministic (the same arguments always give the same bytes): randomness comes
only from ``random.Random(seed)``, there is no clock and no global random state,
and PNGs are written by a small fixed encoder.  Everything is CPU-bound Pillow
work without I/O, so callers may run it in worker threads.

Our own images carry a small metadata record (PNG ``tEXt`` / JPEG comment, key
``META_KEY``): the grain offset, the objects drawn so far, and a replayable history
of events.  It lets an edit subtract the grain exactly before editing (so grain never
piles up over many turns), find "the sprig" or "it" by name, and erase an object by
replaying the history without it (so the table under a removed mug comes back
intact).  Images without it (real photos, re-encoded files) fall back to pixel
heuristics: edge-interpolated inpainting and background/foreground masks.
"""

from __future__ import annotations

import io
import json
import math
import random
import re
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, TypeGuard

from PIL import (
    Image,
    ImageChops,
    ImageDraw,
    ImageEnhance,
    ImageFilter,
    ImageFont,
    ImageOps,
    ImageStat,
    UnidentifiedImageError,
)

__all__ = ["RenderResult", "image_size", "render_edit", "render_scene"]

RGB = tuple[int, int, int]
FBox = tuple[float, float, float, float]
IBox = tuple[int, int, int, int]
Pos = tuple[float | None, float | None]
PointMap = Callable[[float, float], tuple[float, float]]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

# --------------------------------------------------------------------------- limits & encoding

MAX_SIDE: Final = 8192
# Checked from the header before decoding, so a hostile base cannot make us allocate gigabytes.
MAX_BASE_PIXELS: Final = 64_000_000
DECODE_FORMATS: Final = ("PNG", "JPEG", "WEBP", "GIF")
OUTPUT_FORMATS: Final = {
    "image/png": "image/png",
    "image/jpeg": "image/jpeg",
    "image/jpg": "image/jpeg",
    "image/webp": "image/webp",
}
JPEG_QUALITY: Final = 90
JPEG_COMMENT_MAX: Final = 60_000
WEBP_QUALITY: Final = 90
# Level 1 deflate after the "Up" filter is ~3x faster than Pillow's adaptive PNG encoder.  Grain
# leaves nothing for LZ matching to find, so RLE (the fastest) is used; flat art keeps full LZ77,
# which also catches the 3-byte period of a colour gradient's row deltas.
PNG_ZLIB_LEVEL: Final = 1
# (strategy, memLevel): measured fastest for each kind of image at the same output size.
PNG_ZLIB_GRAIN: Final = (zlib.Z_RLE, 8)
PNG_ZLIB_FLAT: Final = (zlib.Z_DEFAULT_STRATEGY, 6)
PNG_FILTER_UP: Final = 2
PNG_BAND_ROWS: Final = 64
PNG_IDAT_CHUNK: Final = 1 << 20
PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
META_KEY: Final = "nanoedit"
META_VERSION: Final = 1
MAX_MANIFEST_OBJECTS: Final = 32

# --------------------------------------------------------------------------- grain

# +-3 levels of monochrome noise makes a 1024x1024 PNG weigh ~1.3 MB like a real model output,
# and being monochrome it keeps grayscale images exactly gray.
GRAIN_AMPLITUDE: Final = 3
# One noise tile is generated once and tiled/offset per image: cheap, and with Z_RLE the tile
# period cannot be exploited by the compressor, so sizes stay realistic.
GRAIN_TILE: Final = 1024
GRAIN_MASTER_SEED: Final = 0x6E616E6F
GRAIN_OFFSET_MUL_X: Final = 2654435761
GRAIN_OFFSET_MUL_Y: Final = 40503
GRAIN_OFFSET_ADD_Y: Final = 12345

# --------------------------------------------------------------------------- colours

COLOURS: Final[dict[str, RGB]] = {
    "red": (220, 40, 40),
    "green": (50, 160, 70),
    "blue": (40, 90, 220),
    "yellow": (245, 210, 40),
    "orange": (245, 140, 30),
    "purple": (130, 60, 180),
    "violet": (140, 80, 200),
    "pink": (240, 130, 180),
    "brown": (130, 80, 45),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
    "cyan": (40, 200, 220),
    "magenta": (210, 40, 170),
    "teal": (30, 140, 140),
    "gold": (212, 175, 55),
    "silver": (190, 190, 200),
    "navy": (25, 35, 100),
    "maroon": (120, 25, 35),
    "olive": (120, 120, 40),
    "lime": (150, 220, 50),
    "beige": (225, 205, 170),
    "tan": (200, 165, 120),
    "cream": (250, 240, 210),
    "ivory": (250, 248, 230),
    "turquoise": (60, 200, 190),
    "indigo": (75, 40, 140),
    "crimson": (190, 20, 50),
    "scarlet": (230, 36, 20),
    "coral": (250, 120, 95),
    "lavender": (190, 170, 230),
    "mint": (160, 225, 190),
    "sage": (150, 175, 140),
    "peach": (250, 190, 150),
    "salmon": (250, 140, 115),
    "khaki": (195, 180, 130),
    "charcoal": (55, 55, 60),
    "aqua": (80, 220, 230),
    "emerald": (30, 150, 90),
    "wooden": (150, 100, 60),
    "wood": (150, 100, 60),
    "sky blue": (120, 190, 240),
    "baby blue": (160, 205, 245),
    "royal blue": (50, 80, 200),
    "hot pink": (250, 80, 160),
    "forest green": (35, 110, 50),
    "lime green": (130, 210, 60),
    "navy blue": (25, 35, 100),
}
LIGHTER_WORDS: Final = frozenset({"light", "pale", "pastel", "soft"})
DARKER_WORDS: Final = frozenset({"dark", "deep"})
LIGHTER_MIX: Final = 0.45
DARKER_MIX: Final = 0.4
OUTLINE_SHADE: Final = -0.35
# Used for shapes without a colour word; picked with the seeded RNG.
SHAPE_PALETTE: Final[tuple[RGB, ...]] = (
    (220, 60, 60),
    (60, 120, 220),
    (60, 170, 90),
    (240, 180, 40),
    (150, 80, 190),
    (240, 120, 60),
    (40, 170, 170),
)
# Unknown nouns get a stable colour picked by a hash of the word (same noun, same colour).
LABEL_BOX_PALETTE: Final[tuple[RGB, ...]] = (
    (120, 160, 210),
    (210, 150, 120),
    (150, 190, 130),
    (200, 160, 210),
    (230, 200, 120),
    (140, 200, 200),
)
TEXT_DARK: Final[RGB] = (25, 25, 30)
TEXT_LIGHT: Final[RGB] = (250, 250, 250)
TEXT_LUMA_SPLIT: Final = 140
CAPTION_SHADE: Final = 0.3
SKIN: Final[RGB] = (240, 200, 170)
TRUNK: Final[RGB] = (120, 80, 45)
WINDOW_BLUE: Final[RGB] = (170, 210, 240)
TYRE: Final[RGB] = (35, 35, 40)
LEAF_GREEN: Final[RGB] = (70, 150, 70)
TERRACOTTA: Final[RGB] = (190, 100, 60)
FLOWER_CENTRE: Final[RGB] = (250, 200, 40)
ROOF_RED: Final[RGB] = (150, 50, 40)
COFFEE_BROWN: Final[RGB] = (110, 70, 40)
EYE_YELLOW: Final[RGB] = (230, 210, 60)
PUPIL: Final[RGB] = (20, 20, 20)
NOSE_PINK: Final[RGB] = (230, 120, 140)
BEAK_ORANGE: Final[RGB] = (240, 160, 30)
HUB_GRAY: Final[RGB] = (170, 170, 175)
TROUSER_BLUE: Final[RGB] = (50, 60, 90)
SNOW_WHITE: Final[RGB] = (250, 250, 252)
SAIL_WHITE: Final[RGB] = (250, 250, 245)
SAIL_EDGE: Final[RGB] = (180, 180, 180)
BALL_STRIPE: Final[RGB] = (250, 250, 250)
STRING_GRAY: Final[RGB] = (90, 90, 90)
PAGE_CREAM: Final[RGB] = (245, 240, 225)
DARK_GRAY: Final[RGB] = (60, 60, 60)
LAMP_METAL: Final[RGB] = (80, 80, 80)
SCREEN_BLUE: Final[RGB] = (40, 60, 90)
INSECT_BODY: Final[RGB] = (40, 30, 30)

# --------------------------------------------------------------------------- backgrounds

BackgroundStops = tuple[tuple[float, RGB], ...]
BACKGROUND_SCENES: Final[dict[str, BackgroundStops]] = {
    "sunset": (
        (0.0, (40, 40, 110)),
        (0.45, (200, 90, 110)),
        (0.75, (250, 160, 70)),
        (1.0, (255, 210, 120)),
    ),
    "sunrise": ((0.0, (150, 180, 230)), (0.6, (250, 200, 180)), (1.0, (255, 230, 170))),
    "night": ((0.0, (8, 10, 35)), (1.0, (30, 40, 90))),
    "space": ((0.0, (5, 5, 15)), (1.0, (25, 10, 40))),
    "day": ((0.0, (90, 160, 235)), (1.0, (200, 230, 250))),
    "ocean": ((0.0, (30, 110, 170)), (1.0, (10, 40, 90))),
    "beach": (
        (0.0, (120, 190, 240)),
        (0.55, (200, 230, 250)),
        (0.55, (40, 130, 190)),
        (0.72, (60, 160, 200)),
        (0.72, (235, 215, 165)),
        (1.0, (220, 195, 140)),
    ),
    "forest": (
        (0.0, (130, 190, 235)),
        (0.62, (210, 235, 245)),
        (0.62, (90, 160, 80)),
        (1.0, (50, 110, 50)),
    ),
    "snow": (
        (0.0, (200, 220, 240)),
        (0.65, (245, 248, 252)),
        (0.65, (250, 250, 252)),
        (1.0, (230, 235, 245)),
    ),
    "desert": (
        (0.0, (150, 200, 240)),
        (0.6, (240, 225, 200)),
        (0.6, (230, 190, 120)),
        (1.0, (200, 150, 90)),
    ),
    "indoor": (
        (0.0, (235, 225, 210)),
        (0.7, (215, 200, 180)),
        (0.7, (170, 130, 95)),
        (1.0, (140, 100, 70)),
    ),
    "city": (
        (0.0, (170, 190, 215)),
        (0.7, (220, 225, 235)),
        (0.7, (90, 90, 95)),
        (1.0, (60, 60, 65)),
    ),
}
SCENE_WORDS: Final[dict[str, str]] = {
    "sunset": "sunset",
    "dusk": "sunset",
    "twilight": "sunset",
    "sunrise": "sunrise",
    "dawn": "sunrise",
    "morning": "sunrise",
    "night": "night",
    "midnight": "night",
    "nighttime": "night",
    "starry": "night",
    "space": "space",
    "galaxy": "space",
    "cosmos": "space",
    "outer": "space",
    "day": "day",
    "daytime": "day",
    "sky": "day",
    "sunny": "day",
    "ocean": "ocean",
    "sea": "ocean",
    "underwater": "ocean",
    "beach": "beach",
    "shore": "beach",
    "coast": "beach",
    "forest": "forest",
    "park": "forest",
    "garden": "forest",
    "meadow": "forest",
    "field": "forest",
    "grass": "forest",
    "jungle": "forest",
    "woods": "forest",
    "snow": "snow",
    "winter": "snow",
    "snowy": "snow",
    "desert": "desert",
    "kitchen": "indoor",
    "room": "indoor",
    "indoor": "indoor",
    "indoors": "indoor",
    "studio": "indoor",
    "office": "indoor",
    "cafe": "indoor",
    "interior": "indoor",
    "city": "city",
    "street": "city",
    "urban": "city",
    "town": "city",
}
BACKGROUND_HEADS: Final = frozenset(
    {"background", "backdrop", "sky", "gradient", "wallpaper", "wall"}
)
# Soft default gradients (top, bottom) for prompts that name no background.
DEFAULT_GRADIENTS: Final[tuple[tuple[RGB, RGB], ...]] = (
    ((235, 240, 250), (200, 215, 235)),
    ((250, 240, 230), (230, 210, 200)),
    ((235, 245, 235), (205, 225, 210)),
    ((245, 238, 250), (220, 210, 235)),
    ((250, 248, 235), (230, 225, 200)),
)
COLOUR_BG_TOP_LIGHTEN: Final = 0.12
BG_JITTER: Final = 3
GRADIENT_SAMPLES: Final = 256
STAR_COUNT: Final = 70
STAR_SKY_FRACTION: Final = 0.75
STAR_COLOUR: Final[RGB] = (250, 250, 235)

# --------------------------------------------------------------------------- layout

OBJECT_BASE_FRACTION: Final = 0.3
POSITION_JITTER: Final = 0.02
SIZE_WORDS: Final[dict[str, float]] = {
    "tiny": 0.45,
    "small": 0.65,
    "little": 0.65,
    "mini": 0.5,
    "medium": 1.0,
    "big": 1.4,
    "large": 1.4,
    "huge": 1.8,
    "giant": 1.8,
    "enormous": 1.8,
    "tall": 1.2,
}
COUNT_WORDS: Final[dict[str, int]] = {
    "a": 1,
    "an": 1,
    "one": 1,
    "single": 1,
    "another": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "several": 3,
    "some": 3,
    "few": 3,
    "many": 5,
    "pair": 2,
    "couple": 2,
}
VAGUE_COUNT_WORDS: Final = frozenset({"some", "several", "few", "many", "couple"})
MAX_COPIES: Final = 8
MAX_OBJECTS: Final = 48  # objects drawn from one prompt; the rest of a long prompt is ignored
MAX_CLAUSES: Final = 64  # instructions applied from one edit; the rest are ignored
PLURAL_DEFAULT_COUNT: Final = 3
GROUND_Y: Final = 0.62
SKY_Y: Final = 0.2
MID_Y: Final = 0.55
HALF: Final = 0.5
# Where "on <surface>" puts things, as a fraction of the surface's box height from its top.
SURFACE_LEVEL: Final[dict[str, float]] = {"table": 0.27, "chair": 0.55, "book": 0.1}
SURFACE_DEFAULT: Final = 0.15
ON_SCALE: Final = 0.55
POSITIONS: Final[dict[str, Pos]] = {
    "upper left": (0.25, 0.25),
    "top left": (0.25, 0.25),
    "left top": (0.25, 0.25),
    "upper right": (0.75, 0.25),
    "top right": (0.75, 0.25),
    "right top": (0.75, 0.25),
    "lower left": (0.25, 0.75),
    "bottom left": (0.25, 0.75),
    "left bottom": (0.25, 0.75),
    "lower right": (0.75, 0.75),
    "bottom right": (0.75, 0.75),
    "right bottom": (0.75, 0.75),
    "far left": (0.14, None),
    "far right": (0.86, None),
    "left": (0.25, None),
    "right": (0.75, None),
    "top": (None, 0.22),
    "upper": (None, 0.25),
    "bottom": (None, 0.78),
    "lower": (None, 0.75),
    "center": (0.5, 0.5),
    "centre": (0.5, 0.5),
    "middle": (0.5, 0.5),
}
MOVE_POSITIONS: Final[dict[str, Pos]] = {"up": (None, 0.25), "down": (None, 0.75)}
SLIGHT_WORDS: Final = frozenset({"slightly", "bit", "little", "tad"})
SLIGHT_MOVE: Final = 0.4
LABEL_FONT_FRACTION: Final = 0.13
LABEL_FONT_MAX_FRACTION: Final = 0.045
TEXT_FONT_FRACTION: Final = 0.08
TEXT_WIDTH_FRACTION: Final = 0.9
TEXT_DEFAULT_POS: Final[tuple[float, float]] = (0.5, 0.1)
TEXT_MAX_CHARS: Final = 120
FONT_MIN_SIZE: Final = 8
CAPTION_BAND_FRACTION: Final = 0.1
CAPTION_MIN_PX: Final = 14
CAPTION_MAX_CHARS: Final = 90

# --------------------------------------------------------------------------- edit tuning

BG_MATCH_LOW: Final = 18  # max-channel difference fully counted as background
BG_MATCH_HIGH: Final = 40  # ... and fully counted as foreground
FG_THRESHOLD: Final = 26
COLOUR_MATCH: Final = 70
INPAINT_STRIP: Final = 3
REMOVE_MARGIN: Final = 4
TINT_STRENGTH: Final = 0.45
BRIGHTER_GAIN: Final = 1.18
BRIGHTER_LIFT: Final = 14
DARKER_GAIN: Final = 0.72
CONTRAST_UP: Final = 1.35
CONTRAST_DOWN: Final = 0.7
SATURATE: Final = 1.5
DESATURATE: Final = 0.5
BLUR_FRACTION: Final = 0.006
BLUR_MIN_RADIUS: Final = 1.5
BLUR_HALF_MIN_SIDE: Final = 64
SHARPEN: Final = ImageFilter.UnsharpMask(radius=2, percent=160, threshold=2)
PIXEL_BLOCKS: Final = 48
POSTERIZE_BITS: Final = 3
VIGNETTE_DEPTH: Final = 0.55
WARM_MATRIX: Final = (1.08, 0.0, 0.0, 12.0, 0.0, 1.02, 0.0, 4.0, 0.0, 0.0, 0.86, 0.0)
COOL_MATRIX: Final = (0.88, 0.0, 0.0, 0.0, 0.0, 0.98, 0.0, 4.0, 0.0, 0.0, 1.1, 14.0)
SEPIA_MATRIX: Final = (0.393, 0.769, 0.189, 0.0, 0.349, 0.686, 0.168, 0.0, 0.272, 0.534, 0.131, 0.0)
ZOOM_DEFAULT: Final = 1.5
ZOOM_MAX: Final = 8.0
SCALE_UP: Final = 1.4
SCALE_DOWN: Final = 0.7

# --------------------------------------------------------------------------- vocabulary

ARTICLES: Final = frozenset(
    {
        "a",
        "an",
        "the",
        "some",
        "another",
        "any",
        "this",
        "that",
        "these",
        "those",
        "its",
        "their",
        "his",
        "her",
        "my",
        "your",
        "our",
        "each",
        "every",
        "all",
        "few",
        "several",
        "many",
    }
)
PREPOSITIONS: Final = frozenset(
    {
        "on",
        "in",
        "at",
        "to",
        "of",
        "with",
        "by",
        "near",
        "next",
        "beside",
        "under",
        "over",
        "above",
        "below",
        "behind",
        "from",
        "into",
        "onto",
        "for",
        "and",
        "or",
        "but",
        "inside",
        "around",
        "between",
        "atop",
        "upon",
        "against",
        "across",
        "along",
        "towards",
        "toward",
        "through",
        "while",
        "where",
        "which",
        "who",
        "wearing",
        "holding",
        "sitting",
        "standing",
        "lying",
        "is",
        "are",
        "was",
        "be",
        "has",
        "have",
        "then",
        "so",
        "as",
        "like",
        "also",
        "plus",
        "it",
        "them",
        "they",
        "there",
        "here",
        "very",
        "more",
        "less",
        "than",
        "too",
        "just",
        "only",
        "now",
        "please",
        "should",
        "would",
        "could",
        "can",
        "will",
        "let",
        "same",
        "without",
        "not",
    }
)
VERBS: Final = frozenset(
    {
        "add",
        "put",
        "place",
        "insert",
        "draw",
        "include",
        "write",
        "paint",
        "show",
        "create",
        "generate",
        "make",
        "render",
        "give",
        "remove",
        "delete",
        "erase",
        "move",
        "shift",
        "replace",
        "change",
        "turn",
        "rotate",
        "flip",
        "mirror",
        "crop",
        "zoom",
        "keep",
        "leave",
        "set",
        "apply",
        "convert",
        "get",
        "take",
        "swap",
        "want",
        "need",
        "see",
        "depict",
        "illustrate",
        "design",
        "produce",
        "edit",
        "use",
        "colour",
        "color",
        "recolor",
        "recolour",
        "tint",
        "slide",
        "drag",
        "resize",
        "scale",
        "enlarge",
        "shrink",
        "type",
        "label",
        "preserve",
        "retain",
        "maintain",
        "blur",
        "sharpen",
        "brighten",
        "darken",
        "invert",
        "increase",
        "decrease",
        "reduce",
        "boost",
        "dye",
        "photograph",
        "photo",
    }
)
ADD_VERBS: Final = frozenset(
    {
        "add",
        "put",
        "place",
        "insert",
        "draw",
        "include",
        "paint",
        "show",
        "give",
        "sketch",
        "introduce",
        "create",
        "stick",
    }
)
TEXT_VERBS: Final = frozenset(
    {
        "write",
        "text",
        "caption",
        "label",
        "title",
        "type",
        "sign",
        "says",
        "say",
        "reading",
        "reads",
    }
)
SCENE_VERBS: Final = frozenset(
    {
        "draw",
        "show",
        "create",
        "generate",
        "make",
        "render",
        "paint",
        "depict",
        "illustrate",
        "design",
        "produce",
    }
)
POSITION_WORDS: Final = frozenset(
    {
        "left",
        "right",
        "top",
        "bottom",
        "center",
        "centre",
        "middle",
        "upper",
        "lower",
        "far",
        "corner",
        "side",
        "half",
        "up",
        "down",
        "hand",
        "edge",
    }
)
# Nouns that describe the picture itself, never an object to draw.
META_WORDS: Final = frozenset(
    {
        "image",
        "picture",
        "photo",
        "photograph",
        "pic",
        "scene",
        "background",
        "backdrop",
        "foreground",
        "text",
        "word",
        "words",
        "caption",
        "title",
        "style",
        "lighting",
        "light",
        "colour",
        "color",
        "colours",
        "colors",
        "version",
        "rest",
        "everything",
        "anything",
        "something",
        "nothing",
        "way",
        "look",
        "feel",
        "mood",
        "tone",
        "bit",
        "lot",
        "area",
        "part",
        "frame",
        "shot",
        "view",
        "render",
        "illustration",
        "painting",
        "drawing",
        "portrait",
        "landscape",
        "closeup",
        "detail",
        "details",
        "quality",
        "else",
        "one",
        "composition",
        "photography",
        "art",
        "artwork",
        "gradient",
        "wallpaper",
        "wall",
        "sky",
        "effect",
        "filter",
        "tint",
        "hue",
        "shade",
        "amount",
        "degrees",
        "degree",
        "times",
        "percent",
        "px",
        "pixels",
        "size",
        "canvas",
        "realistic",
        "photorealistic",
        "please",
        "object",
        "objects",
        "thing",
        "things",
        "element",
        "elements",
        "item",
        "items",
        "it",
        "same",
        "original",
        "other",
        "others",
        "all",
        "both",
        "sign",
        "label",
        "sticker",
    }
)
PRONOUNS: Final = frozenset({"it", "its", "them", "this", "that", "they", "itself"})
GLOBAL_WORDS: Final = frozenset(
    {"image", "picture", "photo", "everything", "whole", "entire", "scene", "all", "overall"}
)
NOOP_PREFIXES: Final = (
    "keep",
    "preserve",
    "maintain",
    "leave",
    "retain",
    "don't",
    "dont",
    "do not",
    "without",
    "but keep",
    "everything else",
    "nothing else",
    "no other",
    "make sure",
    "ensure",
    "same",
    "otherwise",
    "the rest",
)
POLITE_PREFIXES: Final = re.compile(
    r"^(?:(?:please|now|also|then|and|but|ok|okay|next|finally|can you|could you|would you|"
    r"i want you to|i'd like you to|i would like you to|let's|lets)\b[\s,]*)+"
)
NOUN_IRREGULAR: Final[dict[str, str]] = {
    "leaves": "leaf",
    "people": "person",
    "men": "man",
    "women": "woman",
    "children": "child",
    "mice": "mouse",
    "geese": "goose",
    "feet": "foot",
    "teeth": "tooth",
    "knives": "knife",
    "wolves": "wolf",
    "shelves": "shelf",
    "glasses": "glasses",
    "sunglasses": "sunglasses",
    "cactus": "cactus",
    "grass": "grass",
    "glass": "glass",
    "bus": "bus",
    "dress": "dress",
}

FILTER_PATTERNS: Final[tuple[tuple[str, str], ...]] = (
    ("grayscale", r"gr[ae]y ?scale|monochrome|desaturate completely|colou?rless|no colou?rs?|noir"),
    ("sepia", r"sepia|vintage|old[- ]fashioned|antique|old photo(?:graph)?|retro"),
    ("invert", r"invert(?:ed)?|negative|inverse"),
    ("blur", r"blur(?:red|ry)?|soften|out of focus|defocus(?:ed)?|bokeh|dreamy|hazy|misty"),
    ("sharpen", r"sharpen|sharper|crisper|crisp|more detail(?:ed)?|clearer|in focus"),
    (
        "brighter",
        r"bright(?:er|en)|lighter|lighten|more light|daytime|well[- ]lit|exposure up|"
        r"overexpos\w*|luminous",
    ),
    ("darker", r"dark(?:er|en)|dimmer|dim|moodier|moody|less light|underexpos\w*|shadowy|gloomy"),
    ("night", r"night(?:time)?|nocturnal|moonlit"),
    (
        "warmer",
        r"warm(?:er|th)?|golden|sunset|sunrise|morning light|golden hour|cozier|cosy|cozy|"
        r"glow(?:ing)?|orange tint|sunlit|sunny",
    ),
    ("cooler", r"cool(?:er)?|cold(?:er)?|icy|evening|blue hour|bluish|chilly|winter(?:y)?|frosty"),
    (
        "contrast_up",
        r"more contrast|higher contrast|increase (?:the )?contrast|boost (?:the )?"
        r"contrast|dramatic|punchier|punchy|contrasty",
    ),
    (
        "contrast_down",
        r"less contrast|lower contrast|reduce (?:the )?contrast|decrease (?:the )?"
        r"contrast|flatter|washed[- ]out",
    ),
    (
        "saturate",
        r"more saturat\w*|saturate|saturated|vibrant|vivid|more colou?rful|colou?rful|"
        r"punch up (?:the )?colou?rs",
    ),
    ("desaturate", r"desaturat\w*|less saturat\w*|muted|pastel|faded|dull"),
    ("pixelate", r"pixel(?:ate|ated|ized|ised|ise|ize)?(?: art)?|8[- ]bit|mosaic"),
    ("posterize", r"posteri[sz]e\w*|cartoon\w*|comic(?: book)?|pop art"),
    ("vignette", r"vignett\w*"),
    ("sketch", r"sketch(?:ed|y)?|pencil|line drawing|line art|outline"),
    ("emboss", r"emboss\w*|engrav\w*|relief"),
)
FILTER_REGEX: Final = re.compile(
    "|".join(f"(?P<{name}>\\b(?:{pattern})\\b)" for name, pattern in FILTER_PATTERNS)
)
FILTER_DESCRIPTIONS: Final[dict[str, str]] = {
    "grayscale": "applied grayscale",
    "sepia": "applied sepia",
    "invert": "inverted colours",
    "blur": "applied blur",
    "sharpen": "sharpened",
    "brighter": "made brighter",
    "darker": "made darker",
    "night": "made darker and cooler (night)",
    "warmer": "made warmer",
    "cooler": "made cooler",
    "contrast_up": "increased contrast",
    "contrast_down": "reduced contrast",
    "saturate": "increased saturation",
    "desaturate": "reduced saturation",
    "pixelate": "pixelated",
    "posterize": "posterized",
    "vignette": "added vignette",
    "sketch": "turned into a pencil sketch",
    "emboss": "embossed",
}

# --------------------------------------------------------------------------- metadata & replay

MAX_EVENTS: Final = 64
MAX_META_CHARS: Final = 200_000
MAX_STOPS: Final = 8
MAX_COORD: Final = 1e6
# Replaying a history renders at its largest size; bounded because the history comes from clients.
MAX_REPLAY_PIXELS: Final = 20_000_000
TRANSPOSE_VALUES: Final = frozenset(int(t) for t in Image.Transpose)
MASK_DILATE: Final = 5
QUOTE_POSITION_REACH: Final = 5
CENTRE_SEARCH: Final = 0.2
ZOOM_SLIGHT: Final = 1.2
ANCHOR_SCALE: Final = 0.6
ANCHOR_REACH: Final = 3
# "a hat on the cat": the new object is centred this far down the anchor (0 = its top edge).
ANCHOR_ON_LEVEL: Final = 0.02
REMOVE_VERBS: Final = frozenset({"remove", "delete", "erase", "eliminate", "clear"})
REMOVE_REGEX: Final = re.compile(r"(?:get rid of|take (?:out|away)|cut out)\b")
REPLACE_REGEX: Final = re.compile(
    r"\b(?:change|turn) (?:the |it )?\w+(?: \w+)? (?:into|to) (?:a|an)\b"
)
MOVE_VERBS: Final = frozenset({"move", "shift", "slide", "drag", "reposition", "relocate", "push"})
SCALE_UP_WORDS: Final = frozenset({"bigger", "larger", "enlarge", "taller"})
SCALE_DOWN_WORDS: Final = frozenset({"smaller", "tinier", "shrink", "shorter"})
ROTATE_HINTS: Final = frozenset(
    {
        "clockwise",
        "counterclockwise",
        "anticlockwise",
        "sideways",
        "degrees",
        "left",
        "right",
        "90",
        "180",
        "270",
    }
)
COUNTER_CLOCKWISE: Final = frozenset({"counterclockwise", "anticlockwise", "ccw", "left"})
ZOOM_WORDS: Final = frozenset({"zoom", "crop", "cropped", "closer", "closeup"})
ROTATE_NOTES: Final[dict[float, str]] = {
    90.0: "rotated 90 degrees clockwise",
    180.0: "rotated 180 degrees",
    270.0: "rotated 90 degrees counter-clockwise",
}
ANCHOR_WORDS: Final = frozenset(
    {"on", "atop", "onto", "to", "beside", "next", "near", "above", "below", "under"}
)
RECOLOUR_VERBS: Final = frozenset(
    {
        "make",
        "turn",
        "change",
        "colour",
        "color",
        "recolor",
        "recolour",
        "paint",
        "dye",
        "tint",
        "set",
    }
)

QUOTE_REGEX: Final = re.compile(
    r"\"([^\"]+)\"|\u201c([^\u201d]+)\u201d|\u2018([^\u2019]+)\u2019|(?<![\w])'([^']+)'(?![\w])"
)
QUOTE_TOKEN: Final = "zzquote"
WORD_REGEX: Final = re.compile(rf"{QUOTE_TOKEN}\d+|\d+(?:\.\d+)?|[a-z]+(?:'[a-z]+)?")
SENTENCE_SPLIT: Final = re.compile(r"(?<!\d)[.!?;]+(?!\d)|\n+")
SOFT_SPLIT: Final = re.compile(r"\s*(?:,|\band then\b|\bthen\b|\band\b|\bbut\b|\balso\b)\s*")
NUMBER_REGEX: Final = re.compile(r"(\d+(?:\.\d+)?)")


# =========================================================================== public API


@dataclass(frozen=True, slots=True)
class RenderResult:
    """An encoded image plus a human-readable list of what was drawn or applied."""

    data: bytes
    mime_type: str
    width: int
    height: int
    applied: tuple[str, ...]


def render_scene(
    prompt: str,
    width: int,
    height: int,
    *,
    seed: int,
    grain: bool = True,
    output_mime: str = "image/png",
) -> RenderResult:
    """Draw a deterministic scene that follows ``prompt`` at exactly width x height."""
    _check_size(width, height)
    mime = _normalise_mime(output_mime)
    rng = random.Random(seed)
    text, quotes = _extract_quotes(prompt)
    tokens = _tokens(text)
    consumed: set[int] = set()
    bg = _parse_background(tokens, consumed)
    if bg is None:
        top, bottom = rng.choice(DEFAULT_GRADIENTS)
        bg = _Background("soft gradient", ((0.0, top), (1.0, bottom)))
    canvas = _Canvas(Image.new("RGB", (1, 1)), [], rng, [], [], 1)  # the bg event sizes it
    _emit(canvas, _background_event("bg", bg, rng, (width, height)))
    specs = _extract_objects(tokens, consumed)
    if not specs and not quotes:
        specs = _fallback_noun(tokens, consumed)
    _assign_positions(tokens, specs)
    _assign_relations(tokens, specs)
    _draw_specs(canvas, specs)
    _draw_quotes(canvas, tokens, quotes)
    if not specs and not quotes and bg.name == "soft gradient" and prompt.strip():
        _emit(canvas, {"e": "cap", "id": _new_id(canvas), "t": _caption_text(prompt)})
    return _finish(canvas, grain=grain, seed=seed, mime=mime)


def render_edit(
    base: bytes,
    instruction: str,
    width: int,
    height: int,
    *,
    seed: int,
    grain: bool = True,
    output_mime: str = "image/png",
) -> RenderResult:
    """Apply ``instruction`` to the ``base`` image and return it at exactly width x height."""
    _check_size(width, height)
    mime = _normalise_mime(output_mime)
    canvas = _decode_base(base, random.Random(seed))
    if canvas.img.size != (width, height):
        w, h = canvas.img.size
        _emit(canvas, {"e": "fit", "w": width, "h": height, "cr": None}, note=False)
        canvas.applied.append(f"resized base {w}x{h} to {width}x{height} (cover-fit)")
    text, quotes = _extract_quotes(instruction)
    unknown: list[str] = []
    previous = ""
    clauses = _split_clauses(text)
    if len(clauses) > MAX_CLAUSES:
        # Each clause is matched against the objects drawn so far: an unbounded list of them
        # would make an edit quadratic in the instruction's length.
        canvas.applied.append(f"ignored {len(clauses) - MAX_CLAUSES} further instructions")
        clauses = clauses[:MAX_CLAUSES]
    for clause in clauses:
        tokens = _tokens(clause)
        if not tokens:
            continue
        action = _apply_clause(canvas, clause, tokens, quotes, previous)
        if action is None:
            unknown.append(_restore_quotes(clause, quotes))
        else:
            previous = action
    if unknown or not canvas.applied:
        caption = "; ".join(unknown) if unknown else _restore_quotes(text, quotes)
        _emit(canvas, {"e": "cap", "id": _new_id(canvas), "t": _caption_text(caption or "(empty)")})
    return _finish(canvas, grain=grain, seed=seed, mime=mime)


def image_size(data: bytes) -> tuple[int, int]:
    """Return (width, height) of an encoded image from its header, without a full decode."""
    with _open_image(data) as im:
        return im.size


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


# =========================================================================== output


def _finish(canvas: _Canvas, *, grain: bool, seed: int, mime: str) -> RenderResult:
    img = canvas.img
    width, height = img.size
    meta: dict[str, Any] = {
        "v": META_VERSION,
        "s": [width, height],
        "ni": canvas.next_id,
        "o": [
            [
                o.id,
                o.kind,
                o.label,
                list(o.colour),
                list(o.box),
                [round(v, 2) for v in o.shape],
                int(o.above),
            ]
            for o in canvas.objects[-MAX_MANIFEST_OBJECTS:]
        ],
    }
    if canvas.events is not None and len(canvas.events) <= MAX_EVENTS:
        meta["ev"] = canvas.events
    if grain:
        dx = (seed * GRAIN_OFFSET_MUL_X) % GRAIN_TILE
        dy = (seed * GRAIN_OFFSET_MUL_Y + GRAIN_OFFSET_ADD_Y) % GRAIN_TILE
        img = _add_grain(img, dx, dy)
        if mime == "image/png":
            meta["g"] = [dx, dy, GRAIN_AMPLITUDE]
    meta_text = json.dumps(meta, sort_keys=True, separators=(",", ":"))
    if mime == "image/png":
        data = _encode_png(img, meta_text, PNG_ZLIB_GRAIN if grain else PNG_ZLIB_FLAT)
    else:
        buf = io.BytesIO()
        if mime == "image/jpeg":
            # A JPEG comment segment holds < 64 KB: drop the history, then the objects, if needed.
            for key in ("ev", "o"):
                if len(meta_text) > JPEG_COMMENT_MAX:
                    meta.pop(key, None)
                    meta_text = json.dumps(meta, sort_keys=True, separators=(",", ":"))
            img.save(buf, "JPEG", quality=JPEG_QUALITY, comment=f"{META_KEY}:{meta_text}")
        else:
            img.save(buf, "WEBP", quality=WEBP_QUALITY, method=0)
        data = buf.getvalue()
    return RenderResult(data, mime, width, height, tuple(canvas.applied))


@lru_cache(maxsize=1)
def _master_noise() -> Image.Image:
    """One grain tile with values 0..2*amplitude, built once (~15 ms) and shared."""
    raw = random.Random(GRAIN_MASTER_SEED).randbytes(GRAIN_TILE * GRAIN_TILE)
    span = 2 * GRAIN_AMPLITUDE + 1
    tile = Image.frombytes("L", (GRAIN_TILE, GRAIN_TILE), raw).point([v % span for v in range(256)])
    return Image.merge("RGB", (tile, tile, tile))


def _noise(size: tuple[int, int], dx: int, dy: int) -> Image.Image:
    tile = ImageChops.offset(_master_noise(), dx % GRAIN_TILE, dy % GRAIN_TILE)
    if size == tile.size:
        return tile
    out = Image.new("RGB", size)
    for y in range(0, size[1], GRAIN_TILE):
        for x in range(0, size[0], GRAIN_TILE):
            out.paste(tile, (x, y))
    return out


@lru_cache(maxsize=1)
def _clamp_lut() -> list[int]:
    return [min(max(v, GRAIN_AMPLITUDE), 255 - GRAIN_AMPLITUDE) for v in range(256)] * 3


def _add_grain(img: Image.Image, dx: int, dy: int) -> Image.Image:
    # Clamping first keeps img + noise inside 0..255, so _decode_base can subtract it exactly.
    clamped = img.point(_clamp_lut())
    return ImageChops.add(clamped, _noise(img.size, dx, dy), 1.0, -GRAIN_AMPLITUDE)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body))
        + kind
        + body
        + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))
    )


def _encode_png(img: Image.Image, meta_text: str, zlib_profile: tuple[int, int]) -> bytes:
    """Encode RGB as PNG: the Up filter is done by Pillow C ops, deflate by zlib.

    Works in bands of PNG_BAND_ROWS rows: small temporaries are recycled by the allocator,
    whereas full-size ones cost fresh (page-faulting) memory on every call.
    """
    width, height = img.size
    stride = width * 3
    filter_byte = bytes([PNG_FILTER_UP])
    strategy, mem_level = zlib_profile
    comp = zlib.compressobj(PNG_ZLIB_LEVEL, zlib.DEFLATED, 15, mem_level, strategy)
    chunks: list[bytes] = []
    for y0 in range(0, height, PNG_BAND_ROWS):
        y1 = min(height, y0 + PNG_BAND_ROWS)
        # The crop one row higher reads zeros above the image, as PNG's first row needs.
        above = img.crop((0, y0 - 1, width, y1 - 1))
        raw = memoryview(ImageChops.subtract_modulo(img.crop((0, y0, width, y1)), above).tobytes())
        # Each PNG scanline is one filter-type byte followed by the filtered row.
        rows = (
            part
            for y in range(y1 - y0)
            for part in (filter_byte, raw[y * stride : (y + 1) * stride])
        )
        chunks.append(comp.compress(b"".join(rows)))
    chunks.append(comp.flush())
    idat = b"".join(chunks)
    parts = [
        PNG_SIGNATURE,
        _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)),
        _png_chunk(b"tEXt", META_KEY.encode("latin-1") + b"\0" + meta_text.encode("latin-1")),
    ]
    view = memoryview(idat)
    parts.extend(
        _png_chunk(b"IDAT", bytes(view[i : i + PNG_IDAT_CHUNK]))
        for i in range(0, len(idat), PNG_IDAT_CHUNK)
    )
    parts.append(_png_chunk(b"IEND", b""))
    return b"".join(parts)


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


# =========================================================================== text parsing


def _extract_quotes(text: str) -> tuple[str, list[str]]:
    """Replace quoted strings by placeholder words so splitting and tokenising skip them."""
    quotes: list[str] = []

    def repl(match: re.Match[str]) -> str:
        quoted = next(g for g in match.groups() if g is not None)
        quotes.append(quoted.strip()[:TEXT_MAX_CHARS])
        return f" {QUOTE_TOKEN}{len(quotes) - 1} "

    return QUOTE_REGEX.sub(repl, text), quotes


def _restore_quotes(text: str, quotes: Sequence[str]) -> str:
    def repl(match: re.Match[str]) -> str:
        index = int(match.group(1))
        return f"'{quotes[index]}'" if index < len(quotes) else match.group(0)

    return re.sub(rf"\s*{QUOTE_TOKEN}(\d+)\s*", lambda m: f" {repl(m)} ", text).strip()


def _quote_index(token: str) -> int | None:
    if token.startswith(QUOTE_TOKEN) and token[len(QUOTE_TOKEN) :].isdigit():
        return int(token[len(QUOTE_TOKEN) :])
    return None


def _normalise(text: str) -> str:
    text = text.lower().replace("\u2019", "'")
    text = re.sub(
        r"\bblack[\s-]*(?:and|&|n)[\s-]*white\b|\bb ?& ?w\b|\bb/w\b", " monochrome ", text
    )
    text = re.sub(r"\bgray[\s-]scale\b|\bgrey[\s-]scale\b", " grayscale ", text)
    text = re.sub(r"\bon top of\b", " atop ", text)
    text = text.replace("%", " percent ")
    return text.replace("-", " ")


def _tokens(text: str) -> list[str]:
    return WORD_REGEX.findall(_normalise(text))


def _split_clauses(text: str) -> list[str]:
    """Split an instruction into clauses; commas/'and' split only before a new verb or filter."""
    clauses: list[str] = []
    for sentence in SENTENCE_SPLIT.split(_normalise(text)):
        parts = SOFT_SPLIT.split(sentence)
        current = ""
        for part in parts:
            part = part.strip()
            if not part:
                continue
            words = WORD_REGEX.findall(POLITE_PREFIXES.sub("", part))
            starts_new = bool(words) and (
                words[0] in VERBS
                or FILTER_REGEX.match(" ".join(words)) is not None
                or part.startswith(NOOP_PREFIXES)
            )
            if current and not starts_new:
                current = f"{current} and {part}" if _has_objects(words) else f"{current} {part}"
            else:
                if current:
                    clauses.append(current)
                current = part
        if current:
            clauses.append(current)
    return [POLITE_PREFIXES.sub("", c).strip() for c in clauses if c.strip()]


def _has_objects(words: Sequence[str]) -> bool:
    return any(_kind_of(w) is not None for w in words) or any(w in ARTICLES for w in words)


def _singular(word: str) -> str:
    if word in NOUN_IRREGULAR:
        return NOUN_IRREGULAR[word]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "xes", "sses", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _kind_of(word: str) -> str | None:
    """Canonical drawable kind for a noun (aliases and plurals folded), else None."""
    if word in COLOURS or word in META_WORDS:
        return None
    for candidate in (word, _singular(word)):
        if candidate in NOUN_ALIASES:
            return NOUN_ALIASES[candidate]
        if candidate in KINDS:
            return candidate
    return None


def _is_boundary(token: str) -> bool:
    return (
        token in ARTICLES
        or token in PREPOSITIONS
        or token in VERBS
        or token in POSITION_WORDS
        or token in COUNT_WORDS
        or token in PRONOUNS
        or token.isdigit()
        or token in TEXT_VERBS
        or _quote_index(token) is not None
    )


def _parse_background(tokens: Sequence[str], consumed: set[int]) -> _Background | None:
    """Find 'blue background', 'background of red and gold', 'sunset', 'at night' etc."""
    for i, token in enumerate(tokens):
        if token not in BACKGROUND_HEADS:
            continue
        colours: list[RGB] = []
        used: set[int] = {i}
        j = i - 1
        while j >= 0 and (
            tokens[j] in COLOURS
            or tokens[j] in ("and", "to", "soft", "plain", "solid")
            or tokens[j] in LIGHTER_WORDS
            or tokens[j] in DARKER_WORDS
        ):
            j -= 1
        before = [(c, k) for c, k in _colours_in(tokens[j + 1 : i])]
        colours.extend(c for c, _ in before)
        used.update(range(j + 1, i))
        if not colours:
            k = i + 1
            while k < len(tokens) and tokens[k] in (
                "is",
                "of",
                "in",
                "colour",
                "color",
                "should",
                "be",
                "a",
                "to",
            ):
                k += 1
            m = k
            while m < len(tokens) and (
                tokens[m] in COLOURS
                or tokens[m] in ("and", "to")
                or tokens[m] in LIGHTER_WORDS
                or tokens[m] in DARKER_WORDS
            ):
                m += 1
            after = _colours_in(tokens[k:m])
            colours.extend(c for c, _ in after)
            if after:
                used.update(range(i + 1, m))
        if colours:
            consumed.update(used)
            names = " and ".join(tokens[k] for k in sorted(used) if tokens[k] in COLOURS)
            heads = ("background", "backdrop", "wall", "wallpaper")
            return _colour_background(colours, names if token in heads else f"{names} {token}")
    for i, token in enumerate(tokens):
        if token in SCENE_WORDS:
            if token == "outer" and (i + 1 >= len(tokens) or tokens[i + 1] != "space"):
                continue
            consumed.add(i)
            if i + 1 < len(tokens) and tokens[i + 1] in BACKGROUND_HEADS | {
                "scene",
                "setting",
                "light",
            }:
                consumed.add(i + 1)
            name = SCENE_WORDS[token]
            return _Background(name, BACKGROUND_SCENES[name], stars=name in ("night", "space"))
    return None


def _colour_background(colours: Sequence[RGB], name: str) -> _Background:
    if len(colours) == 1:
        c = colours[0]
        return _Background(name, ((0.0, _shade(c, COLOUR_BG_TOP_LIGHTEN)), (1.0, c)))
    step = 1.0 / (len(colours) - 1)
    return _Background(name, tuple((i * step, c) for i, c in enumerate(colours)))


def _extract_objects(
    tokens: Sequence[str], consumed: set[int], *, openers: frozenset[str] = frozenset()
) -> list[_Spec]:
    """Known nouns with their modifiers, then unknown nouns after an article/number/verb."""
    used = set(consumed)
    specs: list[_Spec] = []
    n = len(tokens)
    for i, token in enumerate(tokens):
        kind = _kind_of(token)
        if i in used or kind is None:
            continue
        if i + 1 < n and i + 1 not in used and _kind_of(tokens[i + 1]) is not None:
            continue  # compound noun ("tree house", "eucalyptus sprig"): the last word is the head
        if (
            i >= 2
            and tokens[i - 1] == "of"
            and _is_content(tokens[i - 2])
            and not _is_boundary(tokens[i - 2])
        ):
            continue  # "bowl of fruit": part of the noun before "of"
        start = i
        while start - 1 >= 0 and start - 1 not in used and not _is_boundary(tokens[start - 1]):
            start -= 1
        spec = _make_spec(tokens, kind, start, i, used)
        specs.append(spec)
        used.update(range(spec.start, spec.end))
    opener_words = ARTICLES | frozenset(COUNT_WORDS) | openers
    for i, token in enumerate(tokens):
        if i in used or (token not in opener_words and not token.isdigit()):
            continue
        j = i + 1
        while j < n and j not in used and not _is_boundary(tokens[j]):
            j += 1
        content = [k for k in range(i + 1, j) if _is_content(tokens[k])]
        # "the quick brown fox jumps over": a trailing -s word before a preposition is a verb.
        while (
            len(content) > 1
            and tokens[content[-1]].endswith("s")
            and j < n
            and tokens[j] in PREPOSITIONS
        ):
            j = content.pop()
        if not content:
            continue
        head = content[-1]
        if FILTER_REGEX.fullmatch(tokens[head]) or tokens[head] in SCENE_WORDS:
            continue
        spec = _make_spec(tokens, None, i + 1, head, used, count_at=i)
        specs.append(spec)
        used.update(range(i, spec.end))
    specs.sort(key=lambda s: s.start)
    # A picture holds a few dozen objects, not thousands: the cap keeps placement (which ranks
    # objects per position phrase) linear in the prompt's length.
    return specs[:MAX_OBJECTS]


def _is_content(token: str) -> bool:
    return not (
        token in META_WORDS
        or token in COLOURS
        or token in SIZE_WORDS
        or token in LIGHTER_WORDS
        or token in DARKER_WORDS
        or len(token) < 2
        or token.isdigit()
    )


def _make_spec(
    tokens: Sequence[str],
    kind: str | None,
    start: int,
    head: int,
    used: set[int],
    count_at: int | None = None,
) -> _Spec:
    mods = list(range(start, head))
    colour: RGB | None = None
    scale = 1.0
    label_words: list[str] = []
    skip: set[int] = set()
    for k in mods:
        hit = _colour_at(tokens, k)
        if hit is not None and all(u >= start for u in hit[1]):
            colour = hit[0]
            skip.update(hit[1])
    for k in mods:
        if k in skip:
            continue
        if tokens[k] in SIZE_WORDS:
            scale *= SIZE_WORDS[tokens[k]]
        elif kind is None or tokens[k] not in LIGHTER_WORDS | DARKER_WORDS:
            label_words.append(tokens[k])
    if colour is not None and tokens[head] not in ("white", "black"):
        label_words = [w for w in label_words if w not in COLOURS]
    count = 1
    counter = count_at if count_at is not None else start - 1
    has_count = False
    if 0 <= counter < len(tokens) and counter not in used:
        word = tokens[counter]
        if word.isdigit():
            count, has_count = int(word), True
        elif word in COUNT_WORDS:
            count, has_count = COUNT_WORDS[word], True
    noun = tokens[head]
    singular = _singular(noun)
    if singular == noun and counter >= 0 and tokens[counter] in VAGUE_COUNT_WORDS:
        count = 1  # "some sparkle": a mass noun, one thing
    elif singular != noun and not has_count:
        count = PLURAL_DEFAULT_COUNT
    end = head + 1
    tail: list[str] = []
    if (
        end + 1 < len(tokens)
        and tokens[end] == "of"
        and end + 1 not in used
        and _is_content(tokens[end + 1])
        and not _is_boundary(tokens[end + 1])
    ):  # "cup of coffee", "sprig of eucalyptus": one object, not two
        tail = ["of", tokens[end + 1]]
        end += 2
    if colour is not None and kind is not None and kind in KINDS and KINDS[kind].geometric:
        label_words.insert(0, _colour_name(tokens, mods))
    label = " ".join(w for w in [*label_words, singular, *tail] if w)
    return _Spec(kind, label, colour, scale, max(1, min(MAX_COPIES, count)), start, end)


def _colour_name(tokens: Sequence[str], mods: Sequence[int]) -> str:
    names = [
        tokens[k] for k in mods if tokens[k] in COLOURS or tokens[k] in LIGHTER_WORDS | DARKER_WORDS
    ]
    return " ".join(names)


def _fallback_noun(tokens: Sequence[str], consumed: set[int]) -> list[_Spec]:
    """For article-less prompts like 'spaceship': the last content word becomes a labelled box."""
    for i in range(len(tokens) - 1, -1, -1):
        token = tokens[i]
        if i in consumed or _is_boundary(token) or not _is_content(token):
            continue
        if FILTER_REGEX.fullmatch(token) or token in SCENE_WORDS or token in SCENE_VERBS:
            continue
        return [_Spec(None, _singular(token), None, 1.0, 1, i, i + 1)]
    return []


def _find_positions(tokens: Sequence[str]) -> list[tuple[int, Pos]]:
    found: list[tuple[int, Pos]] = []
    i = 0
    while i < len(tokens):
        pair = f"{tokens[i]} {tokens[i + 1]}" if i + 1 < len(tokens) else ""
        if pair in POSITIONS:
            found.append((i + 1, POSITIONS[pair]))
            i += 2
            continue
        if tokens[i] in POSITIONS:
            found.append((i, POSITIONS[tokens[i]]))
        i += 1
    return found


def _merge_pos(a: Pos, b: Pos) -> Pos:
    return (b[0] if b[0] is not None else a[0], b[1] if b[1] is not None else a[1])


def _token_distance(spec: _Spec, index: int) -> tuple[int, int]:
    """How far token index is from a spec's words; ties prefer the spec before the index."""
    if index >= spec.end:
        return (index - spec.end + 1, 0)
    if index < spec.start:
        return (spec.start - index, 1)
    return (0, 0)


def _assign_positions(tokens: Sequence[str], specs: list[_Spec]) -> None:
    """Give each position phrase to the nearest object (ties go to the one before it)."""
    if not specs:
        return
    for index, pos in _find_positions(tokens):
        ranked = sorted((_token_distance(s, index), k) for k, s in enumerate(specs))
        candidates = [specs[k] for _, k in ranked]
        target = next((s for s in candidates if s.pos == (None, None)), candidates[0])
        target.pos = _merge_pos(target.pos, pos)


def _assign_relations(tokens: Sequence[str], specs: list[_Spec]) -> None:
    """'X on (top of) Y' puts X on Y; 'X wearing Y' puts Y on X."""
    for ia in range(len(specs) - 1):
        ib = ia + 1
        a, b = specs[ia], specs[ib]
        between = set(tokens[a.end : b.start])
        if between & {"on", "onto", "atop", "upon"} and a.pos == (None, None):
            a.on = ib
        elif "wearing" in between and b.pos == (None, None):
            b.on = ia


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


def _draw_specs(canvas: _Canvas, specs: Sequence[_Spec]) -> None:
    width, height = canvas.img.size
    for spec, box in _layout(specs, width, height, canvas.rng):
        _emit(canvas, _object_event(canvas, spec, box))


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


def _edge_colour(img: Image.Image) -> RGB:
    w, h = img.size
    left = img.crop((0, 0, 1, h)).resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
    right = img.crop((w - 1, 0, w, h)).resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
    if not (isinstance(left, tuple) and isinstance(right, tuple)):
        return TEXT_LIGHT
    return _mix(_rgb([int(v) for v in left]), _rgb([int(v) for v in right]), 0.5)


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
